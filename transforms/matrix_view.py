"""The 2-D view every matrix-aware primitive works on, and its rank check.

Rule for higher-rank kernels (documented once, used everywhere): a leaf of
shape (d_1, ..., d_{k-1}, d_k) is viewed as the matrix
(d_1 * ... * d_{k-1}, d_k). For a Flax kernel the last axis is the output
axis, so a Dense kernel (in, out) is unchanged and a convolution kernel
(kh, kw, in, out) becomes (kh * kw * in, out): rows are the fan-in, columns
the output channels, as in the GaLore/APOLLO ports' "flatten to
(fan_in, out)" rule.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def check_matrix(x: jax.Array, where: str, method: str) -> None:
  """Raises ValueError unless `x` has at least two axes.

  Args:
    x: the leaf.
    where: the leaf's key path, for the error message.
    method: the name of the method, for the error message.
  """
  if x.ndim < 2:
    raise ValueError(
        f"{method} acts on matrices (ndim >= 2) but leaf {where} has shape "
        f"{tuple(x.shape)}; route vectors and scalars to a fallback rule "
        "(gradkit.optimizers.matrix_labels labels them 'vector')")


def as_matrix(x: jax.Array) -> jax.Array:
  """The 2-D view of a leaf with ndim >= 2: all leading axes merged.

  Args:
    x: a leaf with ndim >= 2.

  Returns:
    The (d1 * ... * d(k-1), dk) reshaped leaf.
  """
  # Explicit rows, not -1: a zero-size leaf with a last axis of 0 has no inferable size.
  return x.reshape(matrix_shape(x.shape))


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
  """Shape of `as_matrix` for a leaf of `shape`."""
  rows = 1
  for d in shape[:-1]:
    rows *= d
  return rows, shape[-1]


def map_matrices(
    fn: Callable[[jax.Array], jax.Array], tree: optax.Updates, method: str
) -> optax.Updates:
  """Applies a (m, n) -> (m, n) map to the 2-D view of every leaf.

  `fn` sees float32 (or wider) values, whatever the leaf's dtype, and its
  result is cast back. Leaves that are not matrices raise the ValueError of
  `check_matrix`; `None` leaves pass through.
  """

  def one(path, x):
    if x is None:
      return None
    check_matrix(x, jax.tree_util.keystr(path) or "<root>", method)
    m = as_matrix(x).astype(jnp.promote_types(x.dtype, jnp.float32))
    return fn(m).reshape(x.shape).astype(x.dtype)

  return jax.tree_util.tree_map_with_path(one, tree)


def stateless_matrix_transform(
    fn: Callable[[jax.Array], jax.Array], method: str
) -> optax.GradientTransformation:
  """A state-free transform applying `fn` to the 2-D view of every leaf."""

  def update_fn(updates, state, params=None):
    del params
    return map_matrices(fn, updates, method), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
