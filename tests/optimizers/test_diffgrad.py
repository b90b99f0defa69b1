"""Oracles for the diffGrad recipe (sheet values and a float64 numpy diffGrad_v2)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.diffgrad import diffgrad
from trajectories import run_updates


def _reference_diffgrad(params, grads_seq, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, mask=None):
  """diffGrad_v2.py in float64: coupled L2, eps on sqrt(v) before bias correction.

  Returns the parameter after every step; `mask` (dict of bools) limits the L2 term.
  """
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  prev = {k: np.zeros_like(x) for k, x in p.items()}
  history = []
  for t, grads in enumerate(grads_seq, start=1):
    for k in p:
      g = np.asarray(grads[k], np.float64)
      if mask is None or mask[k]:
        g = g + wd * p[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      xi = 1.0 / (1.0 + np.exp(-np.abs(prev[k] - g)))
      prev[k] = g
      step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
      p[k] = p[k] - step * xi * m[k] / (np.sqrt(v[k]) + eps)
    history.append({k: x.copy() for k, x in p.items()})
  return history


def _random_grads(shapes, steps, scale, seed=0):
  rng = np.random.default_rng(seed)
  return [
      {k: jnp.asarray(rng.normal(size=s) * scale, jnp.float32) for k, s in shapes.items()}
      for _ in range(steps)
  ]


def test_sheet_scalar_oracle():
  tx = gradkit.create("diffgrad", learning_rate=0.1)
  p0 = jnp.asarray(1.0, jnp.float32)
  state = tx.init(p0)
  update = jax.jit(tx.update)
  for g, expected in zip((0.5, -1.0, -1.0), (-0.0622458938, 0.0299316815, 0.0318448193)):
    u, state = update(jnp.asarray(g, jnp.float32), state, p0)
    # float32 bias correction (as in optax) costs ~7e-6 relative at t = 1.
    np.testing.assert_allclose(float(u), expected, rtol=3e-5)


def test_sheet_vector_oracle():
  tx = diffgrad(learning_rate=1.0)
  p0 = jnp.zeros(2, jnp.float32)
  u, _ = jax.jit(tx.update)(jnp.asarray([2.0, -0.1], jnp.float32), tx.init(p0), p0)
  np.testing.assert_allclose(u, [-0.8807969387, 0.5249775274], rtol=3e-5)


def test_eps_is_added_before_bias_correction():
  # Gradients ~1e-6 make the two placements differ by tens of percent:
  # eps / sqrt(1 - b2^t) ~ 3e-7 here, against eps = 1e-8 after correction.
  shapes = {"w": (4,)}
  params = {"w": jnp.zeros(4, jnp.float32)}
  grads = _random_grads(shapes, 6, scale=1e-6)
  got = run_updates(diffgrad(learning_rate=1e-2), params, grads)
  want = _reference_diffgrad(params, grads, lr=1e-2)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g["w"], w["w"], rtol=1e-4, atol=1e-9)
  post_correction = _reference_diffgrad(params, grads[:1], lr=1e-2, eps=1e-8 * np.sqrt(1e-3))
  assert np.max(np.abs(post_correction[0]["w"] - want[0]["w"])) > 1e-3


def test_coupled_weight_decay_with_mask_over_steps():
  shapes = {"w": (3, 2), "b": (2,)}
  rng = np.random.default_rng(1)
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
  grads = _random_grads(shapes, 5, scale=0.5, seed=2)
  # The same gradient twice: with coupled L2 the friction still sees p move.
  grads[3] = grads[2]
  mask = {"w": True, "b": False}
  got = run_updates(diffgrad(learning_rate=0.05, weight_decay=0.3, mask=mask), params, grads)
  want = _reference_diffgrad(params, grads, lr=0.05, wd=0.3, mask=mask)
  for g, w in zip(got, want):
    for k in shapes:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-6)
  decoupled_ignored = _reference_diffgrad(params, grads, lr=0.05)
  assert np.max(np.abs(decoupled_ignored[-1]["w"] - want[-1]["w"])) > 1e-3


def test_schedule_learning_rate_scales_each_step():
  shapes = {"w": (5,)}
  params = {"w": jnp.ones(5, jnp.float32)}
  grads = _random_grads(shapes, 4, scale=1.0, seed=3)
  schedule = optax.linear_schedule(0.1, 0.02, transition_steps=3)
  tx_s, tx_c = diffgrad(learning_rate=schedule), diffgrad(learning_rate=0.1)
  s_s, s_c = tx_s.init(params), tx_c.init(params)
  for t, g in enumerate(grads):
    u_s, s_s = jax.jit(tx_s.update)(g, s_s, params)
    u_c, s_c = jax.jit(tx_c.update)(g, s_c, params)
    np.testing.assert_allclose(u_s["w"], u_c["w"] * float(schedule(t)) / 0.1, rtol=1e-5)


def test_inject_hyperparams_matches_plain():
  shapes = {"w": (3, 2), "b": (2,)}
  params = {k: jnp.ones(s, jnp.float32) for k, s in shapes.items()}
  grads = _random_grads(shapes, 3, scale=1.0, seed=4)
  plain = run_updates(diffgrad(learning_rate=0.05, weight_decay=0.01), params, grads)
  injected = run_updates(
      optax.inject_hyperparams(diffgrad)(learning_rate=0.05, weight_decay=0.01, b1=0.9),
      params, grads,
  )
  chex.assert_trees_all_close(plain[-1], injected[-1], rtol=1e-6)


def test_default_learning_rate_is_the_papers():
  tx = gradkit.create("diffgrad")
  p0 = jnp.zeros(1, jnp.float32)
  u, _ = jax.jit(tx.update)(jnp.asarray([2.0], jnp.float32), tx.init(p0), p0)
  np.testing.assert_allclose(u, [-1e-3 * 0.880797078], rtol=3e-5)


@pytest.mark.parametrize(
    "hparams",
    [
        {"learning_rate": -1e-3},
        {"b1": 1.0},
        {"b2": -0.1},
        {"eps": -1e-8},
        {"weight_decay": -0.1},
    ],
)
def test_invalid_hyperparameters_raise(hparams):
  with pytest.raises(ValueError):
    diffgrad(**hparams)
