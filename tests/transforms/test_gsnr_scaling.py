"""Oracles for scale_by_gsnr_at_init (SGD-SaI)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.gsnr_scaling import scale_by_gsnr_at_init

G1 = np.array([[1.0, 2.0], [3.0, 4.0]])
BIAS = np.array([0.5, -0.5, 1.0])


def _official_gsnr(g, eps=1e-8):
  """The released formula in float64: ||g|| / (nan_to_num(std(g, ddof=1)) + eps)."""
  g = np.asarray(g, np.float64).ravel()
  sigma = np.nan_to_num(np.std(g, ddof=1)) if g.size > 1 else 0.0
  return np.linalg.norm(g) / (sigma + eps)


def _tree(**leaves):
  return {k: jnp.asarray(v, jnp.float32) for k, v in leaves.items()}


def test_sheet_scores_and_first_update():
  tx = scale_by_gsnr_at_init()
  grads = _tree(w=G1, b=BIAS)
  updates, state = jax.jit(tx.update)(grads, tx.init(grads))
  assert _official_gsnr(G1) == pytest.approx(4.2426407, rel=1e-7)
  assert _official_gsnr(BIAS) == pytest.approx(1.6035674, rel=1e-7)
  np.testing.assert_allclose(state.gsnr["w"], 4.2426407, rtol=1e-6)
  np.testing.assert_allclose(state.gsnr["b"], 1.6035674, rtol=1e-6)
  assert state.gsnr["w"].dtype == jnp.float32 and state.gsnr["w"].shape == ()
  np.testing.assert_allclose(updates["w"], G1 * 4.2426407, rtol=1e-6)
  np.testing.assert_allclose(updates["b"], BIAS * 1.6035674, rtol=1e-6)


@pytest.mark.parametrize(
    "grad", [np.array([0.3]), np.array(0.7), np.full((3, 2), 2.0), np.zeros((4,))],
    ids=["single", "scalar", "constant", "zero"],
)
def test_zero_or_undefined_std_gives_unit_score(grad):
  # The official formula would give |g| / eps here (3e7 for [0.3]) or freeze
  # an all-zero block at 0; gradkit documents gsnr = 1 instead.
  if grad.size == 1:
    assert _official_gsnr(grad) == pytest.approx(abs(float(grad.ravel()[0])) / 1e-8)
  tx = scale_by_gsnr_at_init()
  grads = _tree(x=grad)
  updates, state = jax.jit(tx.update)(grads, tx.init(grads))
  assert float(state.gsnr["x"]) == 1.0
  np.testing.assert_array_equal(updates["x"], grads["x"])


def test_random_blocks_match_numpy_and_scale_like_sqrt_size():
  rng = np.random.default_rng(0)
  grads = {"a": rng.normal(size=(32, 32)), "b": rng.normal(size=(7,)) + 3.0}
  tx = scale_by_gsnr_at_init(eps=1e-3)
  _, state = jax.jit(tx.update)(_tree(**grads), tx.init(_tree(**grads)))
  for k, g in grads.items():
    np.testing.assert_allclose(state.gsnr[k], _official_gsnr(g, eps=1e-3), rtol=1e-5)
  assert 30.0 < float(state.gsnr["a"]) < 34.0  # ~ sqrt(1024) for zero-mean entries.


def test_scores_stay_fixed_after_the_first_step():
  tx = scale_by_gsnr_at_init()
  update = jax.jit(tx.update)
  state = tx.init(_tree(w=G1, b=BIAS))
  _, state = update(_tree(w=G1, b=BIAS), state)
  rng = np.random.default_rng(1)
  for _ in range(3):
    g = {"w": rng.normal(size=(2, 2)) * 10, "b": rng.normal(size=(3,))}
    updates, state = update(_tree(**g), state)
    np.testing.assert_allclose(state.gsnr["w"], 4.2426407, rtol=1e-6)
    np.testing.assert_allclose(state.gsnr["b"], 1.6035674, rtol=1e-6)
    np.testing.assert_allclose(updates["w"], g["w"] * 4.2426407, rtol=1e-5)
    np.testing.assert_allclose(updates["b"], g["b"] * 1.6035674, rtol=1e-5)
  assert int(state.count) == 4


def test_normalize_by_max_is_the_papers_variant():
  tx = scale_by_gsnr_at_init(normalize_by_max=True)
  grads = _tree(w=G1, b=BIAS)
  updates, state = jax.jit(tx.update)(grads, tx.init(grads))
  np.testing.assert_allclose(state.gsnr["w"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(state.gsnr["b"], 0.3779645, rtol=1e-6)
  np.testing.assert_allclose(updates["b"], BIAS * 0.3779645, rtol=1e-6)


def test_first_finite_gradient_sets_the_scores_under_apply_if_finite():
  tx = optax.apply_if_finite(scale_by_gsnr_at_init(), max_consecutive_errors=3)
  update = jax.jit(tx.update)
  state = tx.init(_tree(w=G1))
  _, state = update(_tree(w=np.full((2, 2), np.nan)), state)
  assert int(state.inner_state.count) == 0
  _, state = update(_tree(w=G1), state)
  np.testing.assert_allclose(state.inner_state.gsnr["w"], 4.2426407, rtol=1e-6)


def test_dtype_is_kept_and_no_retrace():
  tx = scale_by_gsnr_at_init()
  grads = {"w": jnp.asarray(G1, jnp.bfloat16)}
  traces = []

  @jax.jit
  def update(g, state):
    traces.append(1)
    return tx.update(g, state)

  state = tx.init(grads)
  for _ in range(3):
    updates, state = update(grads, state)
  assert len(traces) == 1
  assert updates["w"].dtype == jnp.bfloat16
  assert state.gsnr["w"].dtype == jnp.float32


def test_invalid_hyperparameters_raise():
  with pytest.raises(ValueError):
    scale_by_gsnr_at_init(eps=-1.0)
