"""scale_by_sign_momentum: hand-computed steps, a long float64 run, |u| in {0, 1}."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.sign_momentum import scale_by_sign_momentum

RNG = np.random.default_rng(0)
# Gradient scales vary by step so the momentum, not the newest gradient,
# decides some signs.
GRADS = [RNG.normal(size=(4, 5)) * s for s in (1.0, 0.05, 3.0, 0.02, 0.5, 0.01)]


def _updates(tx, grads):
  state = tx.init(jnp.zeros_like(jnp.asarray(grads[0], jnp.float32)))
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    u, state = update(jnp.asarray(g, jnp.float32), state)
    out.append(np.asarray(u))
  return out, state


def _reference(grads, b1, b2, interpolate_with_new_momentum=False):
  """Lion's Algorithm 2 in float64; the flag gives the wrong step order."""
  m = np.zeros_like(grads[0])
  out, smallest = [], np.inf
  for g in grads:
    m_new = b2 * m + (1 - b2) * g
    c = b1 * (m_new if interpolate_with_new_momentum else m) + (1 - b1) * g
    smallest = min(smallest, np.abs(c).min())
    out.append(np.sign(c))
    m = m_new
  return out, smallest


@pytest.mark.parametrize("b1,b2", [(0.9, 0.99), (0.95, 0.5), (0.0, 0.9)])
def test_matches_hand_computed_steps(b1, b2):
  expected, smallest = _reference(GRADS, b1, b2)
  assert smallest > 1e-4  # no sign is decided by float32 rounding
  got, state = _updates(scale_by_sign_momentum(b1, b2), GRADS)
  for g, e in zip(got, expected):
    np.testing.assert_array_equal(g, e)
  m = np.zeros_like(GRADS[0])
  for g in GRADS:
    m = b2 * m + (1 - b2) * g
  np.testing.assert_allclose(state.mu, m, rtol=1e-5, atol=1e-7)


def test_uses_the_momentum_from_before_the_refresh():
  right, _ = _reference(GRADS, 0.95, 0.5)
  wrong, _ = _reference(GRADS, 0.95, 0.5, interpolate_with_new_momentum=True)
  assert any((r != w).any() for r, w in zip(right, wrong))  # the data tells them apart
  got, _ = _updates(scale_by_sign_momentum(0.95, 0.5), GRADS)
  assert all((g == r).all() for g, r in zip(got, right))


def test_every_coordinate_is_minus_one_zero_or_one():
  grads = [g.copy() for g in GRADS]
  grads[0][0, :2] = 0.0  # zero gradient on a zero momentum gives 0
  got, _ = _updates(scale_by_sign_momentum(), grads)
  assert got[0][0, 0] == 0.0
  for u in got:
    assert set(np.unique(np.abs(u))) <= {0.0, 1.0}


def test_long_run_follows_algorithm_2_and_keeps_optax_lion_state():
  """18 steps (the gradients three times over): every sign and the final
  momentum against the float64 rule; the state is optax.ScaleByLionState."""
  grads = GRADS * 3
  expected, smallest = _reference(grads, 0.8, 0.95)
  assert smallest > 1e-4
  ours, state = _updates(scale_by_sign_momentum(0.8, 0.95), grads)
  for got, want in zip(ours, expected):
    np.testing.assert_array_equal(got, want)
  m = np.zeros_like(grads[0])
  for g in grads:
    m = 0.95 * m + 0.05 * g
  np.testing.assert_allclose(state.mu, m, rtol=1e-5, atol=1e-7)
  assert isinstance(state, optax.ScaleByLionState) and int(state.count) == len(grads)


def test_mu_dtype_sets_the_momentum_dtype():
  tx = scale_by_sign_momentum(mu_dtype=jnp.bfloat16)
  _, state = _updates(tx, GRADS[:2])
  assert state.mu.dtype == jnp.bfloat16


@pytest.mark.parametrize("kwargs", [{"b1": 1.0}, {"b1": -0.1}, {"b2": 1.0}, {"b2": 1.5}])
def test_out_of_range_betas_are_rejected(kwargs):
  with pytest.raises(ValueError, match=next(iter(kwargs))):
    scale_by_sign_momentum(**kwargs)
