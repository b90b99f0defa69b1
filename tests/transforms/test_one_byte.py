"""Oracles for the one-byte projected-gradient codec (Zelikman et al., "Just One Byte")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradkit.transforms.one_byte import one_byte_decode, one_byte_encode


def _roundtrip(p, scale):
  codes = jax.jit(lambda v: one_byte_encode(v, scale))(jnp.asarray(p, jnp.float32))
  return codes, jax.jit(lambda c: one_byte_decode(c, scale))(codes)


def _bound(scale):
  return np.expm1(1.0 / (2.0 * scale))


def test_sheet_oracles_at_reference_scale():
  # Sheet: 0.5 -> c = -11 -> 0.502831578; -3.7 -> c = 21 -> -3.715450738.
  # The byte carries sign * (c + 64).
  codes, decoded = _roundtrip([0.5, -3.7], 16.0)
  assert codes.dtype == jnp.int8
  np.testing.assert_array_equal(np.asarray(codes), [-11 + 64, -(21 + 64)])
  np.testing.assert_allclose(np.asarray(decoded), [0.502831578, -3.715450738], rtol=1e-6)


def test_sheet_oracle_with_even_reference_code_at_default_scale():
  # Sheet: 0.0123 -> c = -70 at scale 16 -> 0.01258814224; at scale 8 the code is -35,
  # the same level exp(-70/16) = exp(-35/8).
  codes, decoded = _roundtrip([0.0123, -0.0123], 8.0)
  np.testing.assert_array_equal(np.asarray(codes), [-35 + 64, -(-35 + 64)])
  np.testing.assert_allclose(np.asarray(decoded), [0.01258814224, -0.01258814224], rtol=1e-6)


@pytest.mark.parametrize("scale", [4.0, 8.0, 16.0])
def test_relative_error_bound_over_log_uniform_sweep(scale):
  rng = np.random.default_rng(0)
  magnitude = np.exp(rng.uniform(-63.0 / scale, 63.0 / scale, size=20_000))
  p = (magnitude * rng.choice([-1.0, 1.0], size=magnitude.size)).astype(np.float32)
  _, decoded = _roundtrip(p, scale)
  decoded = np.asarray(decoded, np.float64)
  rel = np.abs(decoded - p) / np.abs(p)
  assert np.all(np.sign(decoded) == np.sign(p))
  assert rel.max() <= _bound(scale) + 2e-6
  # The bound is tight, so the scale is really the documented one.
  assert rel.max() >= 0.95 * _bound(scale)


@pytest.mark.parametrize("scale", [8.0, 16.0])
def test_saturation_keeps_sign_and_range_end(scale):
  big, small = np.exp(63.0 / scale), np.exp(-63.0 / scale)
  p = [5000.0, -1e30, np.inf, -np.inf, 1e-5, -1e-30, 1e-37]
  codes, decoded = _roundtrip(p, scale)
  np.testing.assert_array_equal(np.asarray(codes), [127, -127, 127, -127, 1, -1, 1])
  np.testing.assert_allclose(
      np.asarray(decoded), [big, -big, big, -big, small, -small, small], rtol=1e-6)


def test_zero_and_nan_encode_to_exact_zero():
  codes, decoded = _roundtrip([0.0, -0.0, np.nan], 8.0)
  np.testing.assert_array_equal(np.asarray(codes), [0, 0, 0])
  np.testing.assert_array_equal(np.asarray(decoded), [0.0, 0.0, 0.0])


def test_all_255_codes_are_distinct_levels_that_round_trip():
  codes = jnp.arange(-127, 128, dtype=jnp.int32).astype(jnp.int8)
  values = jax.jit(one_byte_decode)(codes)
  again = jax.jit(one_byte_encode)(values)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(codes))
  assert np.all(np.diff(np.asarray(values)) > 0)
  assert values.dtype == jnp.float32


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan])
def test_invalid_scale_raises(scale):
  with pytest.raises(ValueError, match="scale"):
    one_byte_encode(jnp.ones(2), scale)
  with pytest.raises(ValueError, match="scale"):
    one_byte_decode(jnp.ones(2, jnp.int8), scale)
