"""The `sara` recipe: official defaults, AdamW inside the mask only, (k,) state."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.sara import sara
from trajectories import f32, run_updates_and_state


def test_default_learning_rate_is_the_official_rule():
  params = {"w": jnp.asarray([[1e-3, 0.5], [0.3, -1e-3]], jnp.float32)}
  grads = {"w": jnp.asarray([[1.0, 1.0], [1.0, -2.0]], jnp.float32)}
  history, _ = run_updates_and_state(sara(weight_decay=0.0, max_fraction=1.0), params, [grads])
  lr = 1e-3 * np.exp(-350 * 2e-3)
  np.testing.assert_allclose(history[0]["w"], [[1e-3 - lr, 0.5], [0.3, -1e-3 + lr]], rtol=1e-4)


def test_adamw_on_the_masked_entries_and_frozen_elsewhere():
  rng = np.random.default_rng(0)
  params = {"w": rng.uniform(-0.1, 0.1, size=(80, 70)), "b": rng.uniform(-0.01, 0.01, size=5)}
  grads = [{"w": rng.normal(size=(80, 70)), "b": rng.normal(size=5)} for _ in range(3)]
  lr, wd, lam = 1e-3, 1e-2, 5e-4
  history, state = run_updates_and_state(
      sara(learning_rate=lr, threshold=2e-3, weight_decay=wd, lambda_rank=lam), f32(params),
      [f32(g) for g in grads])
  for name in ("w", "b"):
    p = params[name]
    k = int(np.ceil(0.05 * p.size))  # the default capacity: the k smallest |w| at most
    smallest = np.zeros(p.size, bool)
    smallest[np.argsort(np.abs(np.float32(p)).ravel())[:k]] = True
    mask = (np.abs(np.float32(p)) < 2e-3) & smallest.reshape(p.shape)
    m, v, w = np.zeros_like(p), np.zeros_like(p), np.float32(p).astype(np.float64)
    for t, g in enumerate(grads):
      g = g[name].copy()
      if name == "w":
        u, _, vt = np.linalg.svd(np.where(mask, w, 0.0), full_matrices=False)
        g = g + lam * u @ vt
      m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
      step = (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(v / (1 - 0.999 ** (t + 1))) + 1e-8)
      w = np.where(mask, w - lr * (step + wd * w), w)
      np.testing.assert_allclose(history[t][name], w, atol=1e-6)
      np.testing.assert_array_equal(np.asarray(history[t][name])[~mask], np.float32(p)[~mask])
  inner = state[1].inner
  sizes = {x.shape for x in jax.tree.leaves(inner) if np.ndim(x) == 1}
  assert sizes == {(280,), (1,)}  # ceil(0.05 * 5600) and ceil(0.05 * 5)


def test_registered_with_the_official_default_rate_and_invalid_hyperparameters_rejected():
  assert gradkit.create("sara") is not None
  assert inspect.signature(sara).parameters["learning_rate"].default == pytest.approx(
      1e-3 * np.exp(-350 * 2e-3))
  for kwargs in ({"threshold": 0.0}, {"b1": 1.0}, {"lambda_rank": -1.0},
                 {"max_fraction": 2.0}, {"learning_rate": -1.0}):
    with pytest.raises(ValueError):
      sara(**kwargs)


def test_sara_works_under_inject_hyperparams():
  params = {"w": jnp.asarray([[1e-3, 0.5], [0.3, -1e-3]], jnp.float32)}
  grads = [{"w": jnp.asarray([[1.0, 1.0], [1.0, -2.0]], jnp.float32)}] * 3
  plain, _ = run_updates_and_state(sara(learning_rate=0.01), params, grads)
  injected, _ = run_updates_and_state(
      optax.inject_hyperparams(sara)(learning_rate=0.01), params, grads)
  np.testing.assert_allclose(plain[-1]["w"], injected[-1]["w"], rtol=1e-5, atol=1e-6)


def test_reselection_restarts_adamw_so_admitted_weights_take_a_bias_corrected_first_step():
  # k = 4 of 8 trainable; the gradients push the trainable (smallest) weights
  # outwards, so re-selection after 3 steps admits weights frozen until then.
  # Oracle: the official optimizer re-creates torch AdamW on the new selection
  # (zero moments, step count 1 again); float64, written from AdamW's rule.
  w0 = np.array([0.01, -0.02, 0.03, -0.04, 0.2, -0.25, 0.5, -0.6])
  rng = np.random.default_rng(5)
  grads = [-np.sign(w0) * rng.uniform(0.5, 1.5, size=8) for _ in range(7)]
  lr, wd, eps, refine_at, k = 0.1, 1e-2, 1e-8, 3, 4
  history, _ = run_updates_and_state(
      sara(learning_rate=lr, threshold=10.0, max_fraction=0.5, progressive_iter=refine_at,
           weight_decay=wd, lambda_rank=0.0),
      f32({"w": w0}), [f32({"w": g}) for g in grads])
  w = np.float32(w0).astype(np.float64)
  mask = np.zeros(8, bool)
  mask[np.argsort(np.abs(w))[:k]] = True
  masks = [mask]
  m = v = np.zeros(8)
  n = 0
  for t, g in enumerate(grads):
    if t == refine_at:
      mask = np.zeros(8, bool)
      mask[np.argsort(np.abs(w))[:k]] = True
      masks.append(mask)
      m, v, n = np.zeros(8), np.zeros(8), 0
    n += 1
    m = np.where(mask, 0.9 * m + 0.1 * g, 0.0)
    v = np.where(mask, 0.999 * v + 0.001 * g * g, 0.0)
    step = (m / (1 - 0.9 ** n)) / (np.sqrt(v / (1 - 0.999 ** n)) + eps)
    w_next = np.where(mask, w - lr * (step + wd * w), w)
    np.testing.assert_allclose(history[t]["w"], w_next, rtol=1e-5, atol=1e-6)
    w = w_next
  admitted = masks[1] & ~masks[0]
  assert admitted.any() and (masks[0] & masks[1]).any() and (masks[0] & ~masks[1]).any()
  # An admitted weight's first step is AdamW's step 1: lr (g / (|g| + eps) + wd w).
  before = np.asarray(history[refine_at - 1]["w"], np.float64)[admitted]
  after = np.asarray(history[refine_at]["w"], np.float64)[admitted]
  g = grads[refine_at][admitted]
  np.testing.assert_allclose(before - after, lr * (g / (np.abs(g) + eps) + wd * before),
                             rtol=1e-5)
