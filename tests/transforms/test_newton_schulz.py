"""Oracles for transforms/newton_schulz.py: Muon's quintic map and SWAN's whitening.

Oracles: the numbers of the COSMOS/Muon and SWAN sheets (checked there in
float64), the scalar map f(s) = a s + b s^3 + c s^5 iterated in numpy float64,
numpy's SVD polar factor, and optax's Newton–Schulz (`optax.contrib.scale_by_muon`
without momentum, whose step is `orthogonalize_via_newton_schulz`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.newton_schulz import (
    newton_schulz_orthogonalize,
    newton_schulz_whiten,
    orthogonalize_newton_schulz,
    whiten_newton_schulz,
)

A, B, C = 3.4445, -4.7750, 2.0315
RNG = np.random.default_rng(3)


def _f5(s):
  """The quintic scalar map applied five times (numpy float64)."""
  for _ in range(5):
    s = A * s + B * s**3 + C * s**5
  return s


def _ns5(x):
  return np.asarray(jax.jit(newton_schulz_orthogonalize)(jnp.asarray(x, jnp.float32)))


def _polar(x):
  u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  return u @ vt


# --- quintic orthogonalization (Muon) -----------------------------------------


def test_ns5_of_the_sheet_square_matrix():
  out = _ns5([[1.0, 2.0], [3.0, 4.0]])
  np.testing.assert_allclose(out, [[-0.680661, 0.82554], [0.741295, 0.25944]], atol=2e-5)
  np.testing.assert_allclose(np.linalg.svd(out, compute_uv=False), [1.128395, 0.698833],
                             atol=2e-5)


def test_ns5_of_the_sheet_tall_matrix():
  out = _ns5([[1, 0, 2], [0, 1, 1], [1, 1, 0], [2, 0, 1]])
  expected = [[0.113992, -0.174894, 0.855584], [-0.267498, 0.731277, 0.474094],
              [0.474094, 0.731277, -0.267498], [0.855584, -0.174894, 0.113992]]
  np.testing.assert_allclose(out, expected, atol=2e-5)


def test_scalar_map_reproduces_the_sheet_table():
  table = {0.001: 0.470544, 0.01: 0.698917, 0.1: 0.712120, 0.3: 1.079592,
           0.5: 0.765439, 0.7: 1.120323, 1.0: 0.696436}
  for s, value in table.items():
    assert _f5(s) == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("s", [(3.0, 4.0), (0.2, 1.0, 5.0)])
def test_ns5_of_a_diagonal_matrix_maps_each_singular_value(s):
  s = np.asarray(s)
  expected = np.diag(_f5(s / np.linalg.norm(s)))
  np.testing.assert_allclose(_ns5(np.diag(s)), expected, atol=2e-5)


@pytest.mark.parametrize("shape", [(8, 32), (32, 8), (16, 48), (12, 20), (24, 16)])
def test_ns5_singular_values_lie_in_the_documented_band(shape):
  # f^5 maps [0.01, 1] into [0.6818, 1.1344]; random full-rank matrices of
  # these (non-square) shapes keep every singular value above 0.01 of the
  # Frobenius norm, which the first assertion checks.
  x = np.random.default_rng(shape[0] * shape[1]).normal(size=shape)
  sv = np.linalg.svd(x, compute_uv=False)
  assert sv.min() > 0.01 * np.linalg.norm(x)
  out = np.linalg.svd(_ns5(x), compute_uv=False)
  assert out.min() >= 0.68 and out.max() <= 1.14
  # Near-orthogonal, not orthogonal: the quintic does not converge to 1.
  assert np.abs(out - 1).max() > 0.05


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (6, 6)])
def test_ns5_matches_optax(shape):
  x = RNG.normal(size=shape).astype(np.float32)
  # Without momentum (beta 0, no Nesterov) optax's Muon step is its Newton–Schulz map.
  muon = optax.contrib.scale_by_muon(ns_coeffs=(A, B, C), ns_steps=5, beta=0.0, nesterov=False)
  theirs, _ = muon.update(jnp.asarray(x), muon.init(jnp.asarray(x)))
  np.testing.assert_allclose(_ns5(x), theirs, atol=1e-5)


def test_ns5_shares_the_singular_vectors_of_its_input():
  x = RNG.normal(size=(4, 7))
  u, s, vt = np.linalg.svd(x, full_matrices=False)
  np.testing.assert_allclose(_ns5(x), u @ np.diag(_f5(s / np.linalg.norm(s))) @ vt, atol=3e-5)


def test_orthogonalize_transform_views_a_conv_kernel_as_fan_in_by_out():
  kernel = RNG.normal(size=(3, 3, 2, 4))
  tx = orthogonalize_newton_schulz()
  out, _ = jax.jit(tx.update)({"k": jnp.asarray(kernel, jnp.float32)}, tx.init(None))
  np.testing.assert_allclose(out["k"].reshape(18, 4), _ns5(kernel.reshape(18, 4)), atol=1e-6)


# --- scale invariance: huge, tiny and zero inputs -----------------------------

SCALED = {
    "orthogonalize": jax.jit(newton_schulz_orthogonalize),
    "whiten": jax.jit(newton_schulz_whiten),
}


@pytest.mark.parametrize("fn", sorted(SCALED))
@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (5, 5)])
@pytest.mark.parametrize("c", [1e30, 1e-30, 1e19, 1e-20])
def test_ns_of_a_scaled_matrix_is_the_ns_of_the_matrix(fn, shape, c):
  # In float32 ||c X||_F overflows above ~1e19 per entry (X / inf = 0: Muon
  # froze after one x1e30 gradient; SWAN's Gram matrix gave NaN) and
  # underflows below ~1e-19 (X / eps instead of a unit-norm X).
  x = jnp.asarray(np.random.default_rng(shape[0]).normal(size=shape), jnp.float32)
  want = SCALED[fn](x)
  np.testing.assert_allclose(SCALED[fn](x * jnp.float32(c)), want, atol=2e-6)


@pytest.mark.parametrize("fn", sorted(SCALED))
def test_ns_of_zero_is_zero(fn):
  out = SCALED[fn](jnp.zeros((4, 3), jnp.float32))
  np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("tx", [orthogonalize_newton_schulz(), whiten_newton_schulz()])
def test_transforms_give_a_x1e30_gradient_the_step_of_the_gradient(tx):
  g = {"k": jnp.asarray(RNG.normal(size=(3, 2, 4)), jnp.float32)}  # viewed as (6, 4)
  want, _ = jax.jit(tx.update)(g, tx.init(None))
  got, _ = jax.jit(tx.update)(jax.tree.map(lambda x: x * 1e30, g), tx.init(None))
  np.testing.assert_allclose(got["k"], want["k"], atol=2e-6)


# --- coupled whitening (SWAN's GradWhitening) ---------------------------------

GRADNORM = np.array([[-0.4472136, 0.4472136, 1.3416408, -1.3416408],
                     [1.6035675, -0.5345225, -1.069045, 0.0]])
WHITENED = np.array([[0.0501083, 0.159768, 0.5842423, -0.7941186],
                     [0.8613557, -0.2285869, -0.3693762, -0.2633927]])


def _whiten(x, steps):
  fn = jax.jit(newton_schulz_whiten, static_argnums=1)
  return np.asarray(fn(jnp.asarray(x, jnp.float32), steps))


def test_whitening_reaches_the_sheet_polar_factor():
  np.testing.assert_allclose(_polar(GRADNORM), WHITENED, atol=1e-6)
  np.testing.assert_allclose(_whiten(GRADNORM, 10), WHITENED, atol=1e-6)


def test_whitening_error_after_five_steps_is_the_sheets():
  # float64: 8.8e-7 after 5 steps; one step fewer is 5.6e-4, one more ~1e-7.
  error = np.abs(_whiten(GRADNORM, 5) - WHITENED).max()
  assert 3e-7 < error < 3e-6


@pytest.mark.parametrize("shape", [(4, 16), (6, 9)])
def test_whitened_wide_matrix_has_orthonormal_rows(shape):
  w = _whiten(RNG.normal(size=shape), 10)
  np.testing.assert_allclose(w @ w.T, np.eye(shape[0]), atol=1e-5)


def test_tall_matrix_is_whitened_from_the_right():
  x = RNG.normal(size=(9, 4))
  w = _whiten(x, 10)
  np.testing.assert_allclose(w, _whiten(x.T, 10).T, atol=1e-6)
  np.testing.assert_allclose(w.T @ w, np.eye(4), atol=1e-5)
  np.testing.assert_allclose(w, _polar(x), atol=1e-5)


# --- transforms: rank check, dtypes, arguments ---------------------------------


@pytest.mark.parametrize("tx", [orthogonalize_newton_schulz(), whiten_newton_schulz()])
def test_vector_leaf_is_rejected_with_a_clear_error(tx):
  updates = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
  with pytest.raises(ValueError, match=r"acts on matrices.*\['b'\].*\(4,\)"):
    tx.update(updates, tx.init(updates))


@pytest.mark.parametrize("tx", [orthogonalize_newton_schulz(), whiten_newton_schulz()])
def test_bf16_updates_come_back_in_bf16(tx):
  x = RNG.normal(size=(4, 6))
  out, _ = jax.jit(tx.update)(jnp.asarray(x, jnp.bfloat16), optax.EmptyState())
  ref, _ = jax.jit(tx.update)(jnp.asarray(x, jnp.float32), optax.EmptyState())
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=2e-2)


@pytest.mark.parametrize("make", [
    lambda: orthogonalize_newton_schulz(ns_steps=0),
    lambda: orthogonalize_newton_schulz(ns_steps=2.5),
    lambda: orthogonalize_newton_schulz(coefficients=(1.0, 2.0)),
    lambda: orthogonalize_newton_schulz(eps=-1.0),
    lambda: whiten_newton_schulz(ns_steps=0),
    lambda: whiten_newton_schulz(eps=-1e-8),
])
def test_invalid_arguments_raise(make):
  with pytest.raises(ValueError):
    make()
