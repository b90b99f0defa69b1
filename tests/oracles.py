"""Independent numpy oracles shared by several test files."""

from __future__ import annotations

import numpy as np


def torch_adamp_projection(p, g, d, delta=0.1, wd_ratio=0.1, eps=1e-8):
  """clovaai/AdamP `_projection` in float64 on a PyTorch-layout array (out axis first).

  Returns (d, ratio, rows of the view that fired or None).
  """
  p, g, d = (np.asarray(x, np.float64) for x in (p, g, d))
  for rows in (p.shape[0], 1):
    x, y, z = g.reshape(rows, -1), p.reshape(rows, -1), d.reshape(rows, -1)
    x_norm, y_norm = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    cosine = np.abs(np.sum(x * y, axis=1)) / (np.maximum(x_norm, eps) * np.maximum(y_norm, eps))
    if cosine.max() < delta / np.sqrt(x.shape[1]):
      p_hat = y / (y_norm[:, None] + eps)
      z = z - p_hat * np.sum(p_hat * z, axis=1, keepdims=True)
      return z.reshape(p.shape), wd_ratio, rows
  return d, 1.0, None


# COSMOS sheet (cosmos-muon.md): torch-layout (out, in) gradients of a 4 x 6
# layer and the parameter changes of its first two steps at lr = 1, class
# defaults, rank 2 (a Flax kernel is the transpose).
COSMOS_G1 = np.array([[1, 2, 0, -1, 3, 1], [0, 1, 1, 2, -1, 0],
               [2, -1, 1, 0, 1, 1], [1, 0, -2, 1, 0, 2]], float)
COSMOS_G2 = np.array([[0, 1, 1, 0, 1, -1], [1, 1, 0, 1, 0, 1],
               [2, 0, -1, 1, 1, 0], [0, -1, 1, 1, 2, 1]], float)
COSMOS_STEP1 = np.array([
    [-0.0034706, -0.1112043, -0.0528786, 0.1092279, -0.1680516, 0.0232178],
    [0.0080997, 0.004735, -0.0017447, -0.1897742, 0.1680516, -0.0232178],
    [-0.1731648, 0.0479082, 0.0197924, -0.051584, -0.0693785, -0.1548128],
    [-0.1037283, -0.0215283, 0.1170035, -0.0376967, -0.0693785, -0.1548128]])
COSMOS_STEP2 = np.array([
    [0.0304345, -0.1086317, -0.0685865, 0.0720964, -0.1659558, 0.0935067],
    [-0.1268108, -0.0374373, 0.0320107, -0.134066, 0.0351688, -0.1269288],
    [-0.2079679, 0.0397689, 0.0655817, -0.1206015, -0.07878, -0.0956156],
    [-0.0923891, 0.0263032, 0.0191955, -0.0622568, -0.1495526, -0.1113235]])
