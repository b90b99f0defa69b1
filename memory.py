"""Bytes held by an optimizer state (the unit of every memory claim in gradkit)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def state_nbytes(state: Any) -> int:
  """Total bytes of all array leaves in `state` (shape x itemsize, per leaf).

  Works on concrete arrays and on `jax.ShapeDtypeStruct` trees (e.g. from
  `jax.eval_shape(tx.init, params)`), so large states can be sized without
  allocating them. Typed PRNG keys count their key data (8 bytes for the
  default threefry key). Python scalars and `None` count as zero bytes.

  Args:
    state: any pytree, e.g. an optimizer state or its `jax.eval_shape`.

  Returns:
    The number of bytes, as a Python int.
  """
  total = 0
  for leaf in jax.tree.leaves(state):
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      # dtype.itemsize, not np.dtype(...): typed PRNG keys have no numpy dtype.
      total += int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize
  return total


def state_nbytes_breakdown(state: Any) -> dict[str, int]:
  """`state_nbytes(state)` split into 8-bit state and the rest.

  "quantized" counts, in every `gradkit.transforms.QuantizedState` of the
  tree (nested ones too), the uint8 codes and their float32 absmax scales;
  "other" is everything else (float moments kept in float32, counts,
  projectors, ...). Works on concrete states and `jax.eval_shape` trees.

  Args:
    state: any pytree, e.g. an optimizer state or its `jax.eval_shape`.

  Returns:
    `{"quantized": bytes, "other": bytes}`, summing to `state_nbytes(state)`.
  """
  # Imported here: `gradkit.memory` itself needs neither optax nor the codec.
  from gradkit.transforms.quantized_state import QuantizedState

  is_quantized_state = lambda node: isinstance(node, QuantizedState)  # noqa: E731

  def quantized_bytes(node: QuantizedState) -> int:
    total = state_nbytes(node.absmax)
    for leaf in jax.tree.leaves(node.inner, is_leaf=is_quantized_state):
      if is_quantized_state(leaf):
        total += quantized_bytes(leaf)
      elif getattr(leaf, "dtype", None) == np.uint8:
        total += state_nbytes(leaf)
    return total

  quantized = sum(quantized_bytes(node)
                  for node in jax.tree.leaves(state, is_leaf=is_quantized_state)
                  if is_quantized_state(node))
  return {"quantized": quantized, "other": state_nbytes(state) - quantized}
