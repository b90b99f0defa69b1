"""Oracles for row/column normalization and SR-Sinkhorn (sheets: swan-sinkgd.md, scale.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradkit.transforms.normalization import (
    normalize_axis,
    normalize_sinkhorn,
    rms_normalize,
    sinkhorn_normalize,
)

# SWAN sheet, oracle 1 (PyTorch layout: each row standardised over its columns).
GRADNORM_G = [[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, -1.0, 1.0]]
GRADNORM_OUT = [[-0.4472136, 0.4472136, 1.3416408, -1.3416408],
                [1.6035675, -0.5345225, -1.069045, 0.0]]
# SinkGD sheet, oracle 1.
SINKHORN_G = [[1.0, 2.0, 3.0], [4.0, 0.0, -1.0]]
SINKHORN_L1 = [[0.3756046, 1.4142136, 1.3536378], [1.3634226, 0.0, -0.4094688]]
SINKHORN_L5 = [[0.1524023, 1.4142136, 1.1211802], [1.4059778, 0.0, -0.8619484]]


def _apply(tx, g):
  """One jitted update of `tx` on the tree (or array) `g`."""
  updates, _ = jax.jit(tx.update)(g, tx.init(g))
  return updates


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _numpy_rms_normalize(x, axis, center=False):
  x = np.asarray(x, np.float64)
  if center:
    x = x - x.mean(axis=axis, keepdims=True)
  return x / np.sqrt(np.mean(x * x, axis=axis, keepdims=True))


def test_gradnorm_sheet_oracle_rows_and_flax_layout():
  rows = rms_normalize(_f32(GRADNORM_G), axis=1, center=True)
  np.testing.assert_allclose(rows, GRADNORM_OUT, atol=2e-6)
  # The same layer as a Flax kernel (in, out) = G^T, reduced over axis 0.
  flax = _apply(normalize_axis(axis=0, center=True), _f32(GRADNORM_G).T)
  np.testing.assert_allclose(flax, np.asarray(GRADNORM_OUT).T, atol=2e-6)
  np.testing.assert_allclose(np.mean(flax, axis=0), 0.0, atol=1e-6)
  np.testing.assert_allclose(np.std(flax, axis=0), 1.0, atol=1e-6)


def test_scale_sheet_column_oracle():
  # SCALE sheet, oracle 1: torch (out=2, in=3); as a Flax kernel it is G^T.
  g = _f32([[1.0, 2.0, 2.0], [0.0, -3.0, 4.0]]).T
  u = _apply(normalize_axis(axis=0), g)
  np.testing.assert_allclose(
      u, [[0.5773503, 0.0], [1.1547005, -1.0392305], [1.1547005, 1.3856406]], atol=2e-6)
  np.testing.assert_allclose(np.sqrt(np.mean(np.square(u), axis=0)), 1.0, atol=1e-6)


def test_scale_sheet_embedding_oracle():
  # SCALE sheet, oracle 2: an nn.Embed table (vocab 3, d 2), over the vocabulary.
  u = _apply(normalize_axis(axis=0), _f32([[1.0, 0.0], [2.0, 1.0], [2.0, -1.0]]))
  np.testing.assert_allclose(
      u, [[0.5773503, 0.0], [1.1547005, 1.2247449], [1.1547005, -1.2247449]], atol=2e-6)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("center", [False, True])
def test_normalized_slices_have_the_stated_norms(axis, center):
  g = (np.random.default_rng(0).normal(size=(7, 5)) + 0.3) * np.geomspace(1e-3, 1e3, 5)
  u = np.asarray(_apply(normalize_axis(axis=axis, center=center), _f32(g)), np.float64)
  np.testing.assert_allclose(u, _numpy_rms_normalize(g, axis, center), rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(u, axis=axis), np.sqrt(g.shape[axis]), rtol=1e-5)
  if center:
    np.testing.assert_allclose(np.mean(u, axis=axis), 0.0, atol=1e-5)


def test_conv_kernel_is_normalized_over_all_leading_axes():
  k = np.random.default_rng(1).normal(size=(3, 3, 2, 4))
  u = _apply(normalize_axis(axis=0), _f32(k))
  want = _numpy_rms_normalize(k.reshape(-1, 4), axis=0).reshape(k.shape)
  np.testing.assert_allclose(u, want, rtol=2e-5, atol=2e-6)


def test_zero_and_constant_slices_are_guarded():
  g = _f32([[0.0, 2.0, 1.0], [0.0, 2.0, -1.0]])
  u = _apply(normalize_axis(axis=0, center=True), g)
  np.testing.assert_array_equal(u[:, :2], 0.0)  # zero column; constant column
  np.testing.assert_allclose(u[:, 2], [1.0, -1.0], atol=1e-6)
  s = _apply(normalize_sinkhorn(5), _f32(np.zeros((3, 4))))
  np.testing.assert_array_equal(s, 0.0)


def test_sinkhorn_sheet_oracle_1():
  g = _f32(SINKHORN_G)
  x1 = sinkhorn_normalize(g, 1, axis=1)
  np.testing.assert_allclose(x1, SINKHORN_L1, atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(x1, axis=1), [1.9933425, 1.423582], atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(x1, axis=0), 1.4142136, atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(x1), 2.4494897, atol=2e-6)
  x5 = sinkhorn_normalize(g, 5, axis=1)
  np.testing.assert_allclose(x5, SINKHORN_L5, atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(x5, axis=1), [1.811152, 1.6491599], atol=2e-6)
  x20 = sinkhorn_normalize(g, 20, axis=1)
  np.testing.assert_allclose(np.linalg.norm(x20, axis=1), [1.7322042, 1.7318974], atol=3e-6)
  # Flax layout: the same layer as G^T, normalized along axis 0 first.
  flax = _apply(normalize_sinkhorn(5, axis=0), g.T)
  np.testing.assert_allclose(flax, np.asarray(SINKHORN_L5).T, atol=2e-6)


def test_sinkhorn_rank_one_is_sign_after_one_iteration():
  g = np.outer([1.0, -2.0, 0.5], [3.0, 1.0, -4.0, 2.0])
  x = _apply(normalize_sinkhorn(1, axis=1), _f32(g))
  np.testing.assert_allclose(x, np.sign(g), atol=1e-6)


def test_sinkhorn_invariances():
  rng = np.random.default_rng(2)
  g = rng.normal(size=(3, 5))
  d1 = np.diag(rng.uniform(0.1, 10.0, size=3))
  d2 = np.diag(rng.uniform(0.1, 10.0, size=5))
  for steps in (1, 5):
    np.testing.assert_allclose(sinkhorn_normalize(_f32(7.0 * d1 @ g), steps, axis=1),
                               sinkhorn_normalize(_f32(g), steps, axis=1), atol=2e-6)
  # Column scalings are removed only in the limit.
  at_1 = [sinkhorn_normalize(_f32(x), 1, axis=1) for x in (g, g @ d2)]
  assert np.max(np.abs(at_1[0] - at_1[1])) > 1e-2
  at_50 = [sinkhorn_normalize(_f32(x), 50, axis=1) for x in (g, g @ d2)]
  np.testing.assert_allclose(at_50[0], at_50[1], atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1])
def test_sinkhorn_satisfies_both_normalizations_after_many_iterations(axis):
  g = np.random.default_rng(3).normal(size=(6, 4))
  x = np.asarray(_apply(normalize_sinkhorn(60, axis=axis), _f32(g)), np.float64)
  np.testing.assert_allclose(np.linalg.norm(x, axis=0), np.sqrt(6), rtol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), np.sqrt(4), rtol=1e-4)


def test_bfloat16_leaves_keep_their_dtype():
  g = np.random.default_rng(4).normal(size=(8, 6))
  for tx, want in ((normalize_axis(0, center=True), _numpy_rms_normalize(g, 0, True)),
                   (normalize_sinkhorn(1, axis=1), None)):
    u = _apply(tx, jnp.asarray(g, jnp.bfloat16))
    assert u.dtype == jnp.bfloat16
    if want is None:
      want = np.asarray(_apply(tx, _f32(np.asarray(jnp.asarray(g, jnp.bfloat16), np.float32))))
    np.testing.assert_allclose(np.asarray(u, np.float32), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("tx", [normalize_axis(), normalize_sinkhorn()])
def test_wrong_rank_raises_clear_error(tx):
  tree = {"w": jnp.ones((3, 2)), "b": jnp.ones(3)}
  with pytest.raises(ValueError, match=r"ndim >= 2.*\['b'\].*\(3,\)"):
    tx.update(tree, tx.init(tree))
  with pytest.raises(ValueError, match="ndim >= 2"):
    tx.update(jnp.asarray(1.0), tx.init(None))


@pytest.mark.parametrize("build", [
    lambda: normalize_axis(axis=2),
    lambda: normalize_axis(axis=-1),
    lambda: normalize_axis(eps=-1.0),
    lambda: normalize_sinkhorn(0),
    lambda: normalize_sinkhorn(2.5),
    lambda: normalize_sinkhorn(3, axis=True),
    lambda: normalize_sinkhorn(eps=float("nan")),
])
def test_invalid_hyperparameters_raise(build):
  with pytest.raises(ValueError):
    build()
