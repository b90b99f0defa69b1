"""Property-based tests (hypothesis) of gradkit's primitives over random shapes
and values: shapes preserved, documented invariants held, and no NaN from
finite input. Oracles are numpy (float64) or the invariant itself.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradkit.transforms import (
    clip_coordinates_top_fraction,
    dequantize_blockwise,
    dynamic_map,
    make_projector,
    newton_schulz_orthogonalize,
    newton_schulz_whiten,
    project,
    project_back,
    quantize_blockwise,
    rms_normalize,
    scale_by_sign_momentum,
    sinkhorn_normalize,
)
from gradkit.transforms.low_rank import projected_shape, projector_shape, resolve_side
from gradkit.transforms.matrix_view import as_matrix, matrix_shape

PROPERTY = settings(max_examples=20, deadline=None, derandomize=True)
FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False, width=32)


# Zero or |v| >= 1e-30: (1 - b1) v for smaller v is below float32's normal range,
# which XLA's CPU backend flushes to zero.
TINY = float(np.float32(1e-30))
SIGNED = st.one_of(st.just(0.0), st.floats(TINY, 1e3, width=32), st.floats(-1e3, -TINY, width=32))


def _matrices(max_side=8, elements=FINITE):
  shapes = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
  return shapes.flatmap(lambda s: hnp.arrays(np.float32, s, elements=elements))


def _finite(x) -> bool:
  return bool(np.all(np.isfinite(np.asarray(x))))


@PROPERTY
@given(_matrices(), st.sampled_from([0, 1]), st.booleans())
def test_rms_normalize_gives_unit_rms_slices(x, axis, center):
  out = np.asarray(jax.jit(rms_normalize, static_argnums=(1, 2))(jnp.asarray(x), axis, center))
  assert out.shape == x.shape and _finite(out)
  ref = x.astype(np.float64)
  if center:
    ref = ref - ref.mean(axis=axis, keepdims=True)
  scale = np.sqrt(np.mean(ref**2, axis=axis))
  rms = np.sqrt(np.mean(out.astype(np.float64) ** 2, axis=axis))
  # Slices well above eps end with RMS 1; (near-)constant ones keep RMS <= 1.
  np.testing.assert_allclose(rms[scale > 1e-3], 1.0, rtol=1e-4)
  assert np.all(rms <= 1.0 + 1e-4)
  if center:
    np.testing.assert_allclose(out.mean(axis=axis), 0.0, atol=1e-4)


@PROPERTY
@given(_matrices(elements=st.floats(0.125, 8.0, width=32)), st.sampled_from([0, 1]))
def test_sinkhorn_last_normalization_is_exact(x, axis):
  signs = np.where(np.arange(x.size).reshape(x.shape) % 3 == 0, -1.0, 1.0).astype(np.float32)
  out = np.asarray(jax.jit(sinkhorn_normalize, static_argnums=(1, 2))(
      jnp.asarray(x * signs), 3, axis), np.float64)
  assert out.shape == x.shape
  np.testing.assert_allclose(np.sqrt(np.mean(out**2, axis=1 - axis)), 1.0, rtol=1e-4)


def _f5(s):
  for _ in range(5):
    s = 3.4445 * s - 4.7750 * s**3 + 2.0315 * s**5
  return s


@PROPERTY
@given(_matrices())
def test_newton_schulz_maps_singular_values_into_the_band(x):
  out = np.asarray(jax.jit(newton_schulz_orthogonalize)(jnp.asarray(x)), np.float64)
  assert out.shape == x.shape and _finite(out)
  s_in = np.linalg.svd(x.astype(np.float64), compute_uv=False)
  s_out = np.linalg.svd(out, compute_uv=False)
  norm = np.linalg.norm(x.astype(np.float64))
  if norm == 0:
    np.testing.assert_array_equal(out, 0.0)
    return
  # The quintic acts on each singular value of X / ||X||_F (sorted order kept).
  np.testing.assert_allclose(s_out, np.sort(_f5(s_in / norm))[::-1], atol=2e-3)
  # Documented band: roughly [0.7, 1.13] once sigma / ||X||_F is not tiny.
  assert np.all(s_out <= 1.2)
  assert np.all(s_out[s_in / norm >= 1e-2] >= 0.68)


@PROPERTY
@given(st.integers(1, 6), st.integers(0, 4), st.floats(1.0, 2.0), st.integers(0, 2**16))
def test_newton_schulz_whitening_orthogonalizes_well_conditioned_input(m, extra, cond, seed):
  rng = np.random.default_rng(seed)
  n = m + extra
  u = np.linalg.qr(rng.normal(size=(m, m)))[0]
  v = np.linalg.qr(rng.normal(size=(n, m)))[0]
  x = (u * np.linspace(1.0, cond, m)) @ v.T
  for g in (x, x.T):
    out = np.asarray(jax.jit(newton_schulz_whiten)(jnp.asarray(g, jnp.float32)), np.float64)
    assert out.shape == g.shape
    np.testing.assert_allclose(np.linalg.svd(out, compute_uv=False), 1.0, atol=1e-3)


@PROPERTY
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 10),
       st.sampled_from(["std", "reverse_std", "left", "right", "full"]),
       st.sampled_from(["svd", "orthogonal", "gaussian"]), st.integers(0, 2**16))
def test_low_rank_projection_shapes_and_orthonormal_projectors(m, n, rank, side, kind, seed):
  g = np.random.default_rng(seed).normal(size=(m, n)).astype(np.float32)
  p = np.asarray(jax.jit(make_projector, static_argnums=(2, 3, 4))(
      jnp.asarray(g), jax.random.key(seed), rank, side, kind), np.float64)
  assert p.shape == projector_shape((m, n), rank, side) and _finite(p)
  where = resolve_side((m, n), side)
  low = np.asarray(project(jnp.asarray(g), jnp.asarray(p, jnp.float32), where), np.float64)
  assert low.shape == projected_shape((m, n), rank, side)
  back = project_back(jnp.asarray(low, jnp.float32), jnp.asarray(p, jnp.float32), where, (m, n))
  assert back.shape == (m, n)
  if kind == "gaussian":
    return
  r = min(rank, m, n)
  frames = {"right": [p.T], "left": [p], "full": [p[:m], p[m:]]}[where]
  for f in frames:
    np.testing.assert_allclose(f.T @ f, np.eye(r), atol=1e-5)
  # project(back(x)) = x for an orthonormal projector.
  again = np.asarray(project(back, jnp.asarray(p, jnp.float32), where), np.float64)
  np.testing.assert_allclose(again, low, atol=1e-4 * (1 + np.abs(low).max()))


CODE = {signed: dynamic_map(signed) for signed in (True, False)}


@PROPERTY
@given(st.lists(st.integers(0, 40), min_size=1, max_size=3), st.sampled_from([4, 16, 64]),
       st.booleans(), st.integers(0, 2**16), st.floats(1e-6, 1e6))
def test_quantize_round_trip_error_bound_and_exact_zeros(shape, block_size, signed, seed, scale):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape) * scale
  x[rng.random(size=shape) < 0.2] = 0.0
  if not signed:
    x = np.abs(x)
  x = x.astype(np.float32)
  code = CODE[signed]

  @jax.jit  # one compilation per example
  def round_trip(v):
    codes, absmax = quantize_blockwise(v, code, block_size)
    return codes, absmax, dequantize_blockwise(codes, absmax, code, v.shape, jnp.float32,
                                               block_size)

  codes, absmax, out = round_trip(jnp.asarray(x))
  assert codes.dtype == jnp.uint8 and codes.shape == x.shape
  assert absmax.shape == (max(1, math.ceil(x.size / block_size)),)
  out = np.asarray(out)
  assert out.shape == x.shape and _finite(out)
  flat, rec = x.reshape(-1).astype(np.float64), out.reshape(-1).astype(np.float64)
  block_max = np.repeat(np.asarray(absmax, np.float64), block_size)[:x.size]
  half_gap = np.diff(code.astype(np.float64)).max() / 2
  assert np.all(np.abs(rec - flat) <= block_max * half_gap * (1 + 1e-5) + 1e-30)
  assert np.all(rec[flat == 0] == 0)
  assert np.all(np.sign(rec) * np.sign(flat) >= 0)


@PROPERTY
@given(_matrices(elements=SIGNED))
def test_sign_momentum_first_step_is_the_sign(g):
  tx = scale_by_sign_momentum()
  u, _ = jax.jit(tx.update)(jnp.asarray(g), tx.init(jnp.zeros_like(g)))
  np.testing.assert_array_equal(np.asarray(u), np.sign(g))


@PROPERTY
@given(_matrices(), st.floats(0.05, 0.95))
def test_top_fraction_clipping_matches_numpy_order_statistic(g, fraction):
  tx = clip_coordinates_top_fraction(fraction)
  u, _ = jax.jit(tx.update)(jnp.asarray(g), tx.init(None))
  magnitudes = np.sort(np.abs(g).reshape(-1))[::-1]
  tau = magnitudes[int(np.floor(np.float32(fraction) * np.float32(g.size)))]
  np.testing.assert_array_equal(np.asarray(u), np.clip(g, -tau, tau))


@PROPERTY
@given(st.lists(st.integers(0, 4), min_size=2, max_size=4), st.integers(0, 2**16))
def test_matrix_view_round_trip(shape, seed):
  x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
  m = as_matrix(jnp.asarray(x))
  assert m.shape == matrix_shape(tuple(shape))
  assert m.shape == (math.prod(shape[:-1]), shape[-1])
  np.testing.assert_array_equal(np.asarray(m).reshape(shape), x)
