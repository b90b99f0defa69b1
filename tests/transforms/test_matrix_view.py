"""The 2-D view rule and the wrong-rank check shared by every matrix primitive."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from gradkit.transforms.matrix_view import (
    as_matrix,
    check_matrix,
    map_matrices,
    matrix_shape,
    stateless_matrix_transform,
)


def test_conv_kernel_view_merges_leading_axes_into_fan_in_rows():
  kernel = np.arange(3 * 3 * 2 * 4, dtype=np.float32).reshape(3, 3, 2, 4)
  view = as_matrix(jnp.asarray(kernel))
  assert view.shape == matrix_shape(kernel.shape) == (18, 4)
  # Column j is output channel j: every (kh, kw, in) entry feeding it.
  np.testing.assert_array_equal(view[:, 1], kernel[..., 1].reshape(-1))


def test_dense_kernel_is_its_own_view():
  w = jnp.ones((5, 7))
  assert as_matrix(w).shape == (5, 7) and matrix_shape((5, 7)) == (5, 7)


@pytest.mark.parametrize("shape", [(3,), ()])
def test_vectors_and_scalars_are_rejected_with_the_leaf_named(shape):
  with pytest.raises(ValueError, match=r"my_method.*\['b'\].*matrix_labels"):
    map_matrices(lambda m: m, {"b": jnp.ones(shape)}, "my_method")
  with pytest.raises(ValueError, match="ndim >= 2"):
    check_matrix(jnp.ones(shape), "x", "m")


def test_map_matrices_computes_in_float32_and_restores_shape_and_dtype():
  seen = []

  def fn(m):
    seen.append((m.shape, m.dtype))
    return 2 * m

  tree = {"conv": jnp.ones((2, 2, 3, 4), jnp.bfloat16), "w": jnp.ones((4, 5)), "none": None}
  out = map_matrices(fn, tree, "double")
  assert seen == [((12, 4), jnp.float32), ((4, 5), jnp.float32)]
  assert out["conv"].shape == (2, 2, 3, 4) and out["conv"].dtype == jnp.bfloat16
  assert out["none"] is None
  np.testing.assert_array_equal(np.asarray(out["w"]), 2.0)


def test_stateless_transform_keeps_no_state():
  tx = stateless_matrix_transform(lambda m: -m, "negate")
  state = tx.init({"w": jnp.ones((2, 2))})
  updates, new_state = tx.update({"w": jnp.ones((2, 2))}, state)
  np.testing.assert_array_equal(np.asarray(updates["w"]), -1.0)
  assert new_state == state
