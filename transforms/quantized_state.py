"""8-bit block-wise optimizer state for any optax transformation.

`quantized(inner)` stores the parameter-shaped state of `inner` (Adam's mu and
nu, momentum's trace, ...) as uint8 codes into the dynamic map plus one
float32 absmax per block, and runs `inner` itself in float32 (Dettmers et al.,
"8-bit Optimizers via Block-wise Quantization", ICLR 2022, arXiv 2110.02861;
official code bitsandbytes-foundation/bitsandbytes, `optim/optimizer.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradkit.transforms.quantization import dequantize_blockwise, dynamic_map, quantize_blockwise

_SIGNED_MAP = dynamic_map(signed=True)
_UNSIGNED_MAP = dynamic_map(signed=False)

KeepFp32 = Callable[[tuple[Any, ...], Any], bool] | Any | None


class QuantizedArray(NamedTuple):
  """A readable view of one 8-bit state tensor (see `quantized_view`)."""

  codes: jax.Array  # uint8, the leaf's shape
  absmax: jax.Array  # float32, one per block


class QuantizedState(NamedTuple):
  """`inner`'s state with each 8-bit leaf holding its uint8 codes, plus the scales.

  The codes stay in the leaf's place and the per-block absmax arrays sit in
  a flat tuple (in the flattening order of the quantized leaves), so every
  leaf of the state is a plain array: Flax's `nnx.Optimizer`, which wraps
  each state array in a Variable, and checkpointers see nothing unusual.
  """

  inner: optax.OptState
  absmax: tuple[jax.Array, ...]


def _is_codes(leaf: Any) -> bool:
  # optax states hold no uint8 arrays, so uint8 marks a quantized leaf.
  return jnp.result_type(leaf) == jnp.uint8


def quantized_view(state: QuantizedState) -> optax.OptState:
  """`state.inner` with each quantized leaf shown as `QuantizedArray(codes, absmax)`."""
  leaves, treedef = jax.tree.flatten(state.inner)
  scales = iter(state.absmax)
  return treedef.unflatten(
      [QuantizedArray(x, next(scales)) if _is_codes(x) else x for x in leaves]
  )


def _path_mentions_embedding(path: tuple[Any, ...], leaf: Any) -> bool:
  del leaf
  return "embedding" in jax.tree_util.keystr(path).lower()


def _keep_flags(keep_fp32: KeepFp32, params_with_path: list, treedef: Any) -> list[bool]:
  """One bool per parameter leaf: True keeps that parameter's state in float32."""
  if keep_fp32 is None:
    keep_fp32 = _path_mentions_embedding
  if callable(keep_fp32):
    return [bool(keep_fp32(path, leaf)) for path, leaf in params_with_path]
  return [bool(flag) for flag in treedef.flatten_up_to(keep_fp32)]


def quantized(
    inner: optax.GradientTransformation,
    block_size: int = 256,
    min_size: int = 4096,
    keep_fp32: KeepFp32 = None,
    unsigned_fields: Iterable[str] = ("nu",),
) -> optax.GradientTransformationExtraArgs:
  """Stores `inner`'s parameter-shaped float state in 8 bits, block-wise.

  At init, every floating leaf of `inner.init(params)` that sits in a subtree
  with the structure of `params` and has its parameter's shape (mu, nu,
  trace, ...) is quantized when the parameter has >= `min_size` elements and
  is not kept in float32 by `keep_fp32`. Such a leaf is replaced by its uint8
  codes (the leaf's shape), and its float32 absmax, of shape
  `(ceil(n / block_size),)` over the row-major flattening (the official
  layout; the last block may be short), goes to `QuantizedState.absmax`;
  `quantized_view(state)` shows them together. Other leaves (counts, small
  parameters' moments) stay as `inner` made them.

  Signedness: a leaf whose state path contains a NamedTuple field named in
  `unsigned_fields` (default `("nu",)`: optax's Adam/belief second moments,
  which are non-negative) uses the unsigned dynamic map; all others use the
  signed map, so any state that may be negative is safe by default. Naming a
  field that can go negative clips it to 0.

  `keep_fp32`: None keeps float32 state for every parameter whose key path
  contains "embedding" (case-insensitive; Flax `nnx.Embed` names its table
  `embedding`), as bitsandbytes does for StableEmbedding; or a callable
  `(path, param) -> bool`; or a tree of bools with the structure of `params`.

  update: dequantizes to float32, runs `inner.update`, and requantizes the new
  state; the returned updates are `inner`'s float32 output (never recomputed
  from dequantized state), cast to each gradient's dtype. So step 1 equals
  the float32 optimizer exactly and quantization error enters from step 2.

  Non-finite gradients: there is no element-wise guard like the CUDA kernel's
  (which zeroes the state of non-finite entries); one NaN poisons its block's
  absmax and hence the whole block. Wrap the optimizer in
  `optax.apply_if_finite`, which leaves this state bit-identical on a
  non-finite step.

  `block_size`, `min_size`, `keep_fp32` and `unsigned_fields` are static
  (under `optax.inject_hyperparams`, list them in `static_args`).

  Args:
    inner: any optax transformation (its state is held as described).
    block_size: elements per absmax block (bitsandbytes >= 0.44: 256; paper: 2048).
    min_size: parameters with fewer elements keep float32 state (official: 4096).
    keep_fp32: which parameters keep float32 state (see above).
    unsigned_fields: state field names quantized with the unsigned map.

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `QuantizedState`.

  References:
    Dettmers et al., 8-bit Optimizers via Block-wise Quantization, ICLR 2022.
  """
  for name, value, low in (("block_size", block_size, 1), ("min_size", min_size, 0)):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
      raise ValueError(
          f"{name} must be a static Python int >= {low}, got {value!r} (under "
          "optax.inject_hyperparams pass it in static_args)"
      )
  unsigned_fields = frozenset(unsigned_fields)
  inner = optax.with_extra_args_support(inner)

  def code_for(path: tuple[Any, ...]) -> np.ndarray:
    unsigned = any(
        isinstance(k, jax.tree_util.GetAttrKey) and k.name in unsigned_fields for k in path
    )
    return _UNSIGNED_MAP if unsigned else _SIGNED_MAP

  def quantize(path: tuple[Any, ...], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return quantize_blockwise(x, code_for(path), block_size)

  def dequantize(path: tuple[Any, ...], codes: jax.Array, absmax: jax.Array) -> jax.Array:
    return dequantize_blockwise(
        codes, absmax, code_for(path), codes.shape, jnp.float32, block_size
    )

  def requantize(old_inner: Any, new_inner: Any) -> tuple[Any, tuple[jax.Array, ...]]:
    """Quantizes the leaves of `new_inner` that are codes in `old_inner`."""
    old_leaves, treedef = jax.tree_util.tree_flatten_with_path(old_inner)
    leaves, scales = [], []
    for (path, old), new in zip(old_leaves, treedef.flatten_up_to(new_inner)):
      if _is_codes(old):
        codes, absmax = quantize(path, new)
        leaves.append(codes)
        scales.append(absmax)
      else:
        leaves.append(new)
    return treedef.unflatten(leaves), tuple(scales)

  def init_fn(params):
    state = inner.init(params)
    params_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    shapes = [jnp.shape(p) for _, p in params_with_path]
    keep = _keep_flags(keep_fp32, params_with_path, treedef)

    def is_param_shaped(node: Any) -> bool:
      if jax.tree.structure(node) != treedef:
        return False
      return [jnp.shape(x) for x in treedef.flatten_up_to(node)] == shapes

    def convert(node: Any) -> Any:
      if not is_param_shaped(node):
        return node
      leaves = []
      for leaf, kept in zip(treedef.flatten_up_to(node), keep):
        eligible = (
            not kept and jnp.size(leaf) >= min_size
            and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        )
        # A uint8 placeholder marks the leaf; `requantize` fills codes and scales.
        leaves.append(jnp.zeros(jnp.shape(leaf), jnp.uint8) if eligible else leaf)
      return treedef.unflatten(leaves)

    marked = jax.tree.map(convert, state, is_leaf=is_param_shaped)
    return QuantizedState(*requantize(marked, state))

  def update_fn(updates, state, params=None, **extra_args):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state.inner)
    scales = iter(state.absmax)
    full = treedef.unflatten([
        dequantize(path, x, next(scales)) if _is_codes(x) else x for path, x in leaves
    ])
    new_updates, new_inner = inner.update(updates, full, params, **extra_args)
    new_updates = jax.tree.map(lambda u, g: u.astype(jnp.result_type(g)), new_updates, updates)
    return new_updates, QuantizedState(*requantize(state.inner, new_inner))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
