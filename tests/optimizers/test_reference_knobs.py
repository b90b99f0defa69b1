"""Knobs users of the reference code expect, each against a float64 numpy rule.

- `adam_learning_rate` of `swan` and `sinkgd`: the AdamW leaves step at their
  own rate (a constant or a schedule), the matrix leaves at `learning_rate`.
- `decoupled_weight_decay` of `diffgrad`: the official diffGrad_v2.py couples
  L2 into the gradient (the default); True takes the AdamW form.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import gradkit
from trajectories import f32, run_updates


def _tree(rng):
  return {"embed": {"embedding": rng.normal(size=(10, 4))},
          "block": {"kernel": rng.normal(size=(8, 4)), "bias": rng.normal(size=(4,))},
          "lm_head": {"kernel": rng.normal(size=(4, 10))}}


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x, np.float64)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


KERNEL = "['block']['kernel']"


def _swan_direction(g):
  """GradNorm over axis 0 (population std), then exact whitening U V^T."""
  g = (g - g.mean(axis=0, keepdims=True)) / g.std(axis=0, keepdims=True)
  u, _, vt = np.linalg.svd(g, full_matrices=False)
  return u @ vt


def _sinkhorn_direction(g, iterations=5):
  """SR-Sinkhorn on the torch view g^T: rows to RMS 1, then columns, 5 rounds."""
  x = g.T
  m, n = x.shape
  for _ in range(iterations):
    x = np.sqrt(n) * x / np.linalg.norm(x, axis=1, keepdims=True)
    x = np.sqrt(m) * x / np.linalg.norm(x, axis=0, keepdims=True)
  return x.T


def _numpy_run(params, grads, matrix_direction, lr, adam_lr, wd, b1=0.9, b2=0.999, eps=1e-8):
  """The kernel steps at lr along `matrix_direction`, every other leaf is AdamW at
  adam_lr(t); decay decoupled on both, p <- p - rate (d + wd p)."""
  p = dict(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  history = []
  for t, g in enumerate(grads, start=1):
    for k in p:
      if k == KERNEL:
        p[k] = p[k] - lr * (matrix_direction(g[k]) + wd * p[k])
        continue
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      adam = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
      p[k] = p[k] - adam_lr(t - 1) * (adam + wd * p[k])
    history.append(dict(p))
  return history


@pytest.mark.parametrize("name, direction, adam_learning_rate, adam_lr", [
    ("swan", _swan_direction, 0.002, lambda t: 0.002),
    ("sinkgd", _sinkhorn_direction, lambda count: 0.004 / (1 + count),
     lambda t: 0.004 / (1 + t)),
])
def test_adam_learning_rate_steps_the_fallback_leaves_only(
    name, direction, adam_learning_rate, adam_lr):
  rng = np.random.default_rng(0)
  params, grads = _tree(rng), [_tree(rng) for _ in range(2)]
  lr, wd = 0.03, 0.1
  tx = gradkit.create(name, learning_rate=lr, weight_decay=wd,
                      adam_learning_rate=adam_learning_rate)
  got = [_flat(t) for t in run_updates(tx, f32(params), [f32(g) for g in grads])]
  want = _numpy_run(_flat(params), [_flat(g) for g in grads], direction, lr, adam_lr, wd)
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], atol=2e-5, err_msg=k)


@pytest.mark.parametrize("name", ["swan", "sinkgd"])
def test_invalid_adam_learning_rate_is_rejected(name):
  with pytest.raises(ValueError, match="adam_learning_rate"):
    gradkit.create(name, adam_learning_rate=-1e-3)


def _numpy_diffgrad(params, grads, lr, wd, decoupled, b1=0.9, b2=0.999, eps=1e-8):
  """diffGrad_v2.py in float64; `decoupled` moves wd * p out of the gradient."""
  p = dict(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  prev = {k: np.zeros_like(x) for k, x in p.items()}
  history = []
  for t, grad in enumerate(grads, start=1):
    for k in p:
      g = grad[k] if decoupled else grad[k] + wd * p[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      xi = 1.0 / (1.0 + np.exp(-np.abs(prev[k] - g)))
      prev[k] = g
      step = np.sqrt(1 - b2**t) / (1 - b1**t) * xi * m[k] / (np.sqrt(v[k]) + eps)
      p[k] = p[k] - lr * (step + (wd * p[k] if decoupled else 0.0))
    history.append(dict(p))
  return history


@pytest.mark.parametrize("decoupled", [False, True])
def test_diffgrad_weight_decay_placement(decoupled):
  rng = np.random.default_rng(1)
  params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
  grads = [{k: rng.normal(size=v.shape) * 0.1 for k, v in params.items()} for _ in range(2)]
  lr, wd = 0.05, 0.5
  tx = gradkit.create("diffgrad", learning_rate=lr, weight_decay=wd,
                      decoupled_weight_decay=decoupled)
  got = run_updates(tx, f32(params), [f32(g) for g in grads])
  want = _numpy_diffgrad(params, grads, lr, wd, decoupled)
  other = _numpy_diffgrad(params, grads, lr, wd, not decoupled)
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # The two placements are told apart at this tolerance.
  assert np.max(np.abs(other[-1]["w"] - want[-1]["w"])) > 1e-3


@pytest.mark.parametrize("value", [1, "yes", None])
def test_decoupled_weight_decay_must_be_a_bool(value):
  with pytest.raises(ValueError, match="decoupled_weight_decay"):
    gradkit.create("diffgrad", decoupled_weight_decay=value)
