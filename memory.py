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
