"""Oracles for scale_by_friction (diffGrad's friction coefficient)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.friction import scale_by_friction


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _run(tx, grads_seq, params):
  """Jitted updates of `tx` over a gradient sequence (the gradient never depends on params)."""
  update = jax.jit(tx.update)
  state = tx.init(params)
  outs = []
  for g in grads_seq:
    u, state = update(g, state, params)
    outs.append(u)
  return outs, state


def test_sheet_scalar_sequence():
  # Sheet oracle 1 (lr = 0.1): xi and the diffGrad update for g = 0.5, -1, -1.
  grads = [jnp.asarray(g, jnp.float32) for g in (0.5, -1.0, -1.0)]
  p = jnp.zeros((), jnp.float32)
  damped, _ = _run(scale_by_friction(optax.scale_by_adam()), grads, p)
  adam, _ = _run(optax.scale_by_adam(), grads, p)
  sheet_xi = [0.6224593312, 0.8175744762, 0.5]
  sheet_update = [-0.0622458938, 0.0299316815, 0.0318448193]
  for u, a, xi, expected in zip(damped, adam, sheet_xi, sheet_update):
    np.testing.assert_allclose(float(u) / float(a), xi, rtol=1e-6)
    # optax's eps placement differs from the sheet's by < 1e-6 relative at |g| ~ 1.
    np.testing.assert_allclose(-0.1 * float(u), expected, rtol=3e-5)
  # Identical consecutive gradients: exactly half of the inner step.
  assert float(damped[2]) == pytest.approx(0.5 * float(adam[2]), rel=1e-7)


def test_sheet_vector_case():
  g1 = jnp.asarray([2.0, -0.1], jnp.float32)
  (u,), _ = _run(scale_by_friction(optax.scale_by_adam()), [g1], jnp.zeros(2))
  (a,), _ = _run(optax.scale_by_adam(), [g1], jnp.zeros(2))
  np.testing.assert_allclose(np.asarray(u) / np.asarray(a), [0.880797078, 0.5249791875],
                             rtol=1e-6)
  # lr = 1: the sheet's update is -u.
  np.testing.assert_allclose(-np.asarray(u), [-0.8807969387, 0.5249775274], rtol=3e-5)


def test_ratio_to_inner_is_sigmoid_of_gradient_change_on_a_tree():
  rng = np.random.default_rng(0)
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros((4,))}
  grads_seq = [
      {k: jnp.asarray(rng.normal(size=v.shape) * 2.0, jnp.float32) for k, v in params.items()}
      for _ in range(8)
  ]
  # Repeat one gradient so some steps see exactly zero change.
  grads_seq.insert(4, grads_seq[3])
  damped, state = _run(scale_by_friction(optax.scale_by_adam()), grads_seq, params)
  adam, adam_state = _run(optax.scale_by_adam(), grads_seq, params)
  prev = {k: np.zeros(v.shape) for k, v in params.items()}
  for u, a, g in zip(damped, adam, grads_seq):
    for k in params:
      g_k = np.asarray(g[k], np.float64)
      xi = _sigmoid(np.abs(prev[k] - g_k))
      ratio = np.asarray(u[k], np.float64) / np.asarray(a[k], np.float64)
      np.testing.assert_allclose(ratio, xi, rtol=1e-6)
      assert np.all((ratio >= 0.5 - 1e-7) & (ratio < 1.0))
      prev[k] = g_k
  # xi never enters the inner state: the moments are plain Adam's.
  chex.assert_trees_all_close(state.inner_state, adam_state, rtol=1e-6)
  chex.assert_trees_all_equal(state.prev_grad, grads_seq[-1])


def test_identity_inner_gives_closed_form():
  g_seq = [np.array([1.0, -2.0]), np.array([1.5, -2.0]), np.array([-0.5, 3.0])]
  outs, _ = _run(
      scale_by_friction(optax.identity()),
      [jnp.asarray(g, jnp.float32) for g in g_seq],
      jnp.zeros(2),
  )
  prev = np.zeros(2)
  for u, g in zip(outs, g_seq):
    np.testing.assert_allclose(u, _sigmoid(np.abs(prev - g)) * g, rtol=1e-6)
    prev = g


def test_extra_args_reach_inner_and_state_dtype_is_stable():
  seen = []

  def init_fn(params):
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, scale):
    seen.append(scale)
    return jax.tree.map(lambda g: scale * g, updates), state

  inner = optax.GradientTransformationExtraArgs(init_fn, update_fn)
  tx = scale_by_friction(inner)
  params = jnp.zeros(2, jnp.bfloat16)
  state = tx.init(params)
  g = jnp.asarray([1.0, -1.0], jnp.bfloat16)
  u, new_state = tx.update(g, state, params, scale=3.0)
  assert seen == [3.0]
  np.testing.assert_allclose(np.asarray(u, np.float32), 3.0 * _sigmoid(1.0) * np.array([1, -1]),
                             rtol=1e-2)
  chex.assert_trees_all_equal_dtypes(new_state, state)
