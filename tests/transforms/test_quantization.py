"""Oracles for the dynamic map and block-wise 8-bit quantization (Dettmers et al., 2022)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradkit
from gradkit.transforms.quantization import (
    _count_midpoints_below,
    dequantize_blockwise,
    dequantize_tiled,
    dynamic_map,
    quantize_blockwise,
    quantize_tiled,
    shard_tile,
)


def _roundtrip(x, code, block_size):
  """Jitted quantize then dequantize; returns numpy (codes, absmax, x_hat)."""
  quantize = jax.jit(functools.partial(quantize_blockwise, block_size=block_size))
  dequantize = jax.jit(
      functools.partial(dequantize_blockwise, block_size=block_size),
      static_argnames=("shape", "dtype"),
  )
  codes, absmax = quantize(jnp.asarray(x), code)
  x_hat = dequantize(codes, absmax, code, shape=x.shape, dtype=jnp.float32)
  return np.asarray(codes), np.asarray(absmax), np.asarray(x_hat)


def _brute_force(x, code, block_size):
  """Nearest map entry by exhaustive search in float64 (ties to the lower index)."""
  flat = np.asarray(x, np.float32).reshape(-1)
  n_blocks = max(1, -(-flat.size // block_size))
  absmax = np.array(
      [np.abs(flat[b * block_size : (b + 1) * block_size]).max() for b in range(n_blocks)],
      np.float32,
  )
  scale = np.repeat(np.where(absmax > 0, absmax, 1.0), block_size)[: flat.size]
  y = np.clip(flat / scale, -1.0, 1.0).astype(np.float64)
  dist = np.abs(y[:, None] - np.asarray(code, np.float64)[None, :])
  return np.argmin(dist, axis=1), absmax, y, scale


def _spread_sample(rng, size, signed):
  """Magnitudes spread over nine decades, with some exact zeros."""
  mag = 10.0 ** rng.uniform(-9, 0, size=size)
  x = mag * rng.choice([-1.0, 1.0], size=size) if signed else mag
  x[rng.choice(size, size // 50, replace=False)] = 0.0
  return x.astype(np.float32)


def test_signed_map_matches_sheet():
  m = dynamic_map(signed=True)
  assert m.shape == (256,) and m.dtype == np.float32
  assert np.all(np.diff(m) > 0)
  np.testing.assert_allclose(m[0], -0.99296875, rtol=1e-6)
  assert m[127] == 0.0 and m[255] == 1.0
  assert -1.0 not in m
  np.testing.assert_allclose(
      m[124:132],
      [-7.75e-6, -3.25e-6, -5.5e-7, 0.0, 5.5e-7, 3.25e-6, 7.75e-6, 2.125e-5],
      rtol=1e-6,
  )
  assert np.sum(m < 0) == 127 and np.sum(m > 0) == 128
  np.testing.assert_allclose(np.max(np.diff(m)) / 2, 0.0070313, rtol=1e-4)


def test_unsigned_map_matches_sheet():
  m = dynamic_map(signed=False)
  assert m.shape == (256,) and m.dtype == np.float32
  assert np.all(np.diff(m) > 0)
  assert m[0] == 0.0 and m[255] == 1.0 and np.all(m >= 0)
  np.testing.assert_allclose(m[1:6], [3.25e-7, 7.75e-7, 2.125e-6, 4.375e-6, 6.625e-6], rtol=1e-6)
  np.testing.assert_allclose(m[252:256], [0.9824219, 0.9894531, 0.9964844, 1.0], rtol=1e-6)
  np.testing.assert_allclose(np.max(np.diff(m)) / 2, 0.0035157, rtol=1e-4)


@pytest.mark.parametrize("signed, per_decade", [(True, 1), (False, 2)])
def test_levels_per_decade(signed, per_decade):
  m = dynamic_map(signed)
  counts = [np.sum((m > 10.0 ** (d - 1)) & (m < 10.0**d)) for d in range(-6, 1)]
  assert counts == [per_decade * 2**i for i in range(7)]


def test_sheet_signed_block():
  x = np.array([0.5, -0.25, 0.1, 0.0, 0.003, -0.5], np.float32)
  codes, absmax, x_hat = _roundtrip(x, dynamic_map(True), block_size=6)
  np.testing.assert_array_equal(codes, [255, 35, 198, 127, 151, 0])
  np.testing.assert_allclose(absmax, [0.5])
  np.testing.assert_allclose(
      x_hat,
      [0.5, -0.25039062, 0.10273437, 0.0, 0.00289063, -0.49648437],
      rtol=1e-6,
      atol=5e-9,  # the sheet prints 8 decimals
  )


def test_sheet_unsigned_block():
  x = np.array([4e-4, 1e-6, 2.5e-5, 0.0], np.float32)
  codes, absmax, x_hat = _roundtrip(x, dynamic_map(False), block_size=4)
  np.testing.assert_array_equal(codes, [255, 36, 100, 0])
  np.testing.assert_allclose(absmax, [4e-4], rtol=1e-7)
  np.testing.assert_allclose(x_hat, [4e-4, 1.01875e-6, 2.509375e-5, 0.0], rtol=1e-6)


@pytest.mark.parametrize("signed", [True, False])
def test_matches_brute_force_nearest_with_ragged_last_block(signed):
  code = dynamic_map(signed)
  x = _spread_sample(np.random.default_rng(0), 5000, signed)
  x[4500] = 3.0  # an outlier only coarsens its own (last) block
  codes, absmax, x_hat = _roundtrip(x, code, block_size=2048)
  want_codes, want_absmax, y, scale = _brute_force(x, code, block_size=2048)
  assert codes.dtype == np.uint8 and codes.shape == (5000,)
  assert absmax.shape == (3,)
  np.testing.assert_array_equal(absmax, want_absmax)
  assert absmax[2] == 3.0
  np.testing.assert_array_equal(codes, want_codes)
  # The error is at most half the gap between the map values around x / absmax;
  # below the signed map's minimum (-0.99296875) the nearest level is that minimum.
  upper = np.clip(np.searchsorted(code, y, side="left"), 1, 255)
  half_gap = (code[upper].astype(np.float64) - code[upper - 1]) / 2
  half_gap = np.where(y < code[0], code[0] + 1.0, half_gap)
  err = np.abs(x.astype(np.float64) - x_hat)
  assert np.all(err <= half_gap * scale * (1 + 1e-5) + 1e-12 * scale)


@pytest.mark.parametrize("signed", [True, False])
def test_zeros_and_positive_block_max_are_exact(signed):
  x = np.abs(_spread_sample(np.random.default_rng(1), 5000, signed))
  if signed:
    x[::3] *= -1.0
  for b in range(3):  # a positive entry is each block's absmax
    x[b * 2048 + 7] = 2.0 + b
  _, absmax, x_hat = _roundtrip(x, dynamic_map(signed), block_size=2048)
  np.testing.assert_array_equal(absmax, [2.0, 3.0, 4.0])
  zeros = x == 0.0
  assert zeros.sum() > 0
  np.testing.assert_array_equal(x_hat[zeros], 0.0)
  np.testing.assert_array_equal(x_hat[[7, 2055, 4103]], [2.0, 3.0, 4.0])


def test_negative_block_max_maps_to_signed_minimum():
  x = np.array([-2.0, 0.5, 1.0], np.float32)
  _, absmax, x_hat = _roundtrip(x, dynamic_map(True), block_size=4)
  np.testing.assert_array_equal(absmax, [2.0])
  np.testing.assert_allclose(x_hat[0], -0.99296875 * 2.0, rtol=1e-6)


def test_all_zero_block_round_trips_without_nan():
  x = np.zeros(10, np.float32)
  x[8] = -0.5  # second block non-zero, first all zero
  codes, absmax, x_hat = _roundtrip(x, dynamic_map(True), block_size=8)
  np.testing.assert_array_equal(absmax, [0.0, 0.5])
  np.testing.assert_array_equal(codes[:8], 127)
  assert np.all(np.isfinite(x_hat))
  np.testing.assert_array_equal(x_hat[:8], 0.0)


def test_tiny_array_in_one_short_block():
  x = np.array([0.25, -1.0, 1e-3], np.float32)
  code = dynamic_map(True)
  codes, absmax, x_hat = _roundtrip(x, code, block_size=2048)
  want_codes, _, _, _ = _brute_force(x, code, block_size=2048)
  assert codes.shape == (3,) and absmax.shape == (1,)
  np.testing.assert_array_equal(absmax, [1.0])
  np.testing.assert_array_equal(codes, want_codes)
  np.testing.assert_allclose(x_hat, code[want_codes], rtol=0)


def test_shape_and_dtype_are_restored():
  x = _spread_sample(np.random.default_rng(2), 40 * 125, signed=True).reshape(40, 125)
  code = dynamic_map(True)
  codes, absmax = jax.jit(functools.partial(quantize_blockwise, block_size=256))(x, code)
  assert codes.shape == (40, 125) and codes.dtype == jnp.uint8
  restored = dequantize_blockwise(codes, absmax, code, (40, 125), jnp.bfloat16, block_size=256)
  assert restored.shape == (40, 125) and restored.dtype == jnp.bfloat16
  _, _, x_hat = _roundtrip(x, code, block_size=256)
  np.testing.assert_allclose(
      np.asarray(restored, np.float32), x_hat.astype(jnp.bfloat16).astype(np.float32)
  )


@pytest.mark.parametrize("shape, block_size", [((5000,), 2048), ((3,), 2048), ((64, 128), 256)])
def test_state_bytes_under_jit(shape, block_size):
  x = jnp.ones(shape, jnp.float32)
  pair = jax.jit(functools.partial(quantize_blockwise, block_size=block_size))(
      x, dynamic_map(False)
  )
  size = int(np.prod(shape))
  n_blocks = -(-size // block_size)
  assert pair[0].dtype == jnp.uint8 and pair[1].dtype == jnp.float32
  assert gradkit.state_nbytes(pair) == size + 4 * n_blocks
  if shape == (64, 128):  # the sheet's oracle: 8192 code bytes + 32 float32 scales
    assert gradkit.state_nbytes(pair) == 8320


@pytest.mark.parametrize("block_size", [0, -4])
def test_invalid_block_size_raises(block_size):
  x = jnp.ones((5,), jnp.float32)
  with pytest.raises(ValueError, match="block_size"):
    quantize_blockwise(x, dynamic_map(True), block_size=block_size)
  with pytest.raises(ValueError, match="block_size"):
    dequantize_blockwise(
        jnp.zeros((5,), jnp.uint8), jnp.ones((1,)), dynamic_map(True), (5,), block_size=block_size
    )


@pytest.mark.parametrize("signed", [True, False])
def test_bucketed_lookup_equals_searchsorted_at_ties_and_extremes(signed):
  code = dynamic_map(signed)
  mids = (code[:-1] + code[1:]) / np.float32(2)
  tiny = np.float32(np.finfo(np.float32).tiny)
  y = np.concatenate([
      mids, np.nextafter(mids, np.float32(2)), np.nextafter(mids, np.float32(-2)),
      code, [-1.0, 1.0, 0.0, -0.0, tiny, -tiny],
      np.random.default_rng(0).uniform(-1, 1, 4000),
  ]).astype(np.float32)
  if not signed:
    y = np.abs(y)
  got = jax.jit(lambda v: _count_midpoints_below(v, code))(jnp.asarray(y))
  np.testing.assert_array_equal(got, np.searchsorted(mids, y, side="left"))


@pytest.mark.parametrize("shard, block_size", [((16, 32), 256), ((128, 4), 256), ((4, 128), 256),
                                               ((3, 7, 10), 64), ((997, 6), 256), ((5,), 256)])
def test_shard_tile_divides_the_shard_within_the_block(shard, block_size):
  tile = shard_tile(shard, block_size)
  assert len(tile) == len(shard) and np.prod(tile) <= block_size
  assert all(n % t == 0 for n, t in zip(shard, tile))
  # Filled from the last axis: no axis could take a larger divisor within the budget left.
  budget = block_size
  for n, t in zip(reversed(shard), reversed(tile)):
    assert not any(n % d == 0 for d in range(t + 1, min(n, budget) + 1))
    budget //= t


def test_tiles_of_whole_rows_are_the_official_blocks():
  """A (64, 32) array in (8, 32) tiles is the row-major blocks of 256."""
  x = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
  code = dynamic_map(signed=True)
  codes, absmax = quantize_tiled(jnp.asarray(x), code, (8, 32))
  flat_codes, flat_absmax = quantize_blockwise(jnp.asarray(x), code, 256)
  np.testing.assert_array_equal(codes, flat_codes)
  np.testing.assert_array_equal(np.asarray(absmax).reshape(-1), flat_absmax)


@pytest.mark.parametrize("signed", [True, False])
def test_each_tile_is_quantized_as_its_own_block(signed):
  """Tiles of a (12, 20) array, (4, 5) each, against the brute-force nearest
  code of every tile cut out by numpy and flattened into one block."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(12, 20)).astype(np.float32) * rng.uniform(0.01, 10, size=(12, 1))
  x = x if signed else np.abs(x)
  x[4:8, 5:10] = 0.0  # an all-zero tile
  code = dynamic_map(signed)
  codes, absmax = jax.jit(lambda v: quantize_tiled(v, code, (4, 5)))(jnp.asarray(x))
  assert codes.shape == x.shape and codes.dtype == jnp.uint8 and absmax.shape == (3, 4)
  restored = dequantize_tiled(codes, absmax, code)
  for i in range(3):
    for j in range(4):
      block = x[4 * i:4 * i + 4, 5 * j:5 * j + 5]
      want_codes, want_absmax, _, _ = _brute_force(block, code, block.size)
      np.testing.assert_array_equal(np.asarray(codes)[4 * i:4 * i + 4, 5 * j:5 * j + 5],
                                    want_codes.reshape(4, 5))
      assert float(absmax[i, j]) == want_absmax[0]
      want_values = code[want_codes] * want_absmax[0]
      np.testing.assert_array_equal(
          np.asarray(restored)[4 * i:4 * i + 4, 5 * j:5 * j + 5], want_values.reshape(4, 5))


def test_tile_that_does_not_partition_the_array_is_rejected():
  with pytest.raises(ValueError, match=r"tile \(5, 5\) does not partition .* \(12, 20\)"):
    quantize_tiled(jnp.zeros((12, 20)), dynamic_map(True), (5, 5))
