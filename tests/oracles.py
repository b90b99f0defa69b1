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
