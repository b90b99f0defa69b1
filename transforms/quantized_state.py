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
  """`state.inner` with each quantized leaf shown as `QuantizedArray(codes, absmax)`.

  Args:
    state: a `QuantizedState` from `quantized(...).init`.

  Returns:
    The inner state tree, quantized leaves as `QuantizedArray`s.
  """
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


class _Entry(NamedTuple):
  """One parameter's leaf of a parameter-shaped state subtree, during `update`."""

  codes: jax.Array  # uint8 codes, or the float leaf itself when absmax is None
  absmax: jax.Array | None
  code: np.ndarray  # the dynamic map of this leaf


class _Row(NamedTuple):
  """A parameter-shaped subtree of the inner state (mu, nu, ...), one entry per parameter."""

  entries: list[_Entry]


def _param_shaped_test(params: Any) -> Callable[[Any], bool]:
  """Whether a node has the structure of `params` and its leaves their shapes."""
  treedef = jax.tree.structure(params)
  shapes = [jnp.shape(x) for x in jax.tree.leaves(params)]

  def is_param_shaped(node: Any) -> bool:
    if jax.tree.structure(node) != treedef:
      return False
    return [jnp.shape(x) for x in treedef.flatten_up_to(node)] == shapes

  return is_param_shaped


def _chunk_blocks(num_blocks: int, block_size: int, chunk_size: int) -> int:
  """Blocks per chunk: the largest divisor of `num_blocks` within `chunk_size` elements."""
  limit = min(num_blocks, max(1, chunk_size // block_size))
  return max(d for d in range(1, limit + 1) if num_blocks % d == 0)


def quantized(
    inner: optax.GradientTransformation,
    block_size: int = 256,
    min_size: int = 4096,
    keep_fp32: KeepFp32 = None,
    unsigned_fields: Iterable[str] = ("nu",),
    elementwise: bool = False,
    chunk_size: int = 65536,
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

  `elementwise=True` declares that `inner` updates each element from that
  element's gradient, state and parameter alone, plus scalar state such as a
  step count (Adam, Lion, momentum, AdaBelief; not a method with a norm or a
  matrix product). On the CPU backend the new state of each quantized
  parameter whose size is a multiple of `block_size` is then recomputed and
  requantized in chunks of whole blocks (about `chunk_size` elements) inside
  a `lax.scan`, while the updates come from the usual whole-tree pass (whose
  float32 state XLA then fuses away): XLA:CPU otherwise materializes every
  dequantized and new moment to take the per-block absmax. Same formula;
  the two paths agree to float32 rounding.

  Non-finite gradients: there is no element-wise guard like the CUDA kernel's
  (which zeroes the state of non-finite entries); one NaN poisons its block's
  absmax and hence the whole block. Wrap the optimizer in
  `optax.apply_if_finite`, which leaves this state bit-identical on a
  non-finite step.

  All arguments but `inner` are static (under `optax.inject_hyperparams`,
  list them in `static_args`).

  Args:
    inner: any optax transformation (its state is held as described).
    block_size: elements per absmax block (bitsandbytes >= 0.44: 256; paper: 2048). Default 256.
    min_size: parameters with fewer elements keep float32 state (official: 4096). Default 4096.
    keep_fp32: which parameters keep float32 state (see above). Default None.
    unsigned_fields: state field names quantized with the unsigned map. Default ("nu",).
    elementwise: whether `inner` is element-wise (enables chunked requantizing on CPU).
      Default False.
    chunk_size: elements per chunk on the chunked path (rounded down to a
      whole number of blocks dividing the parameter's blocks). Default 65536.

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `QuantizedState`.

  References:
    Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022.
    https://arxiv.org/abs/2110.02861 ; official code:
    https://github.com/bitsandbytes-foundation/bitsandbytes
  """
  for name, value, low in (
      ("block_size", block_size, 1), ("min_size", min_size, 0), ("chunk_size", chunk_size, 1)
  ):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
      raise ValueError(
          f"{name} must be a static Python int >= {low}, got {value!r} (under "
          "optax.inject_hyperparams pass it in static_args)"
      )
  if not isinstance(elementwise, bool):
    raise ValueError(f"elementwise must be a static Python bool, got {elementwise!r}")
  unsigned_fields = frozenset(unsigned_fields)
  inner = optax.with_extra_args_support(inner)

  def code_for(path: tuple[Any, ...]) -> np.ndarray:
    unsigned = any(
        isinstance(k, jax.tree_util.GetAttrKey) and k.name in unsigned_fields for k in path
    )
    return _UNSIGNED_MAP if unsigned else _SIGNED_MAP

  def quantize_marked(marked: Any, state: Any) -> tuple[Any, tuple[jax.Array, ...]]:
    """Quantizes the leaves of `state` that are uint8 placeholders in `marked`."""
    marked_leaves, treedef = jax.tree_util.tree_flatten_with_path(marked)
    leaves, scales = [], []
    for (path, mark), x in zip(marked_leaves, treedef.flatten_up_to(state)):
      if _is_codes(mark):
        codes, absmax = quantize_blockwise(x, code_for(path), block_size)
        leaves.append(codes)
        scales.append(absmax)
      else:
        leaves.append(x)
    return treedef.unflatten(leaves), tuple(scales)

  def init_fn(params):
    state = inner.init(params)
    params_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    keep = _keep_flags(keep_fp32, params_with_path, treedef)
    is_param_shaped = _param_shaped_test(params)

    def convert(node: Any) -> Any:
      if not is_param_shaped(node):
        return node
      leaves = []
      for leaf, kept in zip(treedef.flatten_up_to(node), keep):
        eligible = (
            not kept and jnp.size(leaf) >= min_size
            and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        )
        # A uint8 placeholder marks the leaf; `quantize_marked` fills codes and scales.
        leaves.append(jnp.zeros(jnp.shape(leaf), jnp.uint8) if eligible else leaf)
      return treedef.unflatten(leaves)

    marked = jax.tree.map(convert, state, is_leaf=is_param_shaped)
    return QuantizedState(*quantize_marked(marked, state))

  def restore(entry: _Entry) -> Any:
    if entry.absmax is None:
      return entry.codes
    return dequantize_blockwise(
        entry.codes, entry.absmax, entry.code, entry.codes.shape, jnp.float32, block_size)

  def chunked_requantize(k: int, rows: list[_Row], node_def: Any, nodes: list[Any], grad: Any,
                         param: Any, extra_args: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Parameter `k`'s new (codes, absmax) per state row, from `inner` run chunk by chunk."""
    num_blocks = grad.size // block_size
    chunk_blocks = _chunk_blocks(num_blocks, block_size, chunk_size)
    num_chunks = num_blocks // chunk_blocks
    split = lambda x: x.reshape(num_chunks, chunk_blocks, block_size)  # noqa: E731
    states = [(split(row.entries[k].codes), row.entries[k].absmax.reshape(num_chunks, -1))
              for row in rows]
    maps = [row.entries[k].code for row in rows]

    def body(carry, chunk):
      grad_c, param_c, states_c = chunk
      restored = iter([restore(_Entry(*c, code)) for c, code in zip(states_c, maps)])
      state_c = node_def.unflatten([next(restored) if isinstance(n, _Row) else n for n in nodes])
      _, new_state_c = inner.update(grad_c, state_c, param_c, **extra_args)
      new_rows = [x for x, n in zip(node_def.flatten_up_to(new_state_c), nodes)
                  if isinstance(n, _Row)]
      return carry, [quantize_blockwise(x, code, block_size) for x, code in zip(new_rows, maps)]

    chunks = (split(grad), None if param is None else split(param), states)
    return [(codes.reshape(grad.shape), absmax.reshape(-1))
            for codes, absmax in jax.lax.scan(body, None, chunks)[1]]

  def update_fn(updates, state, params=None, **extra_args):
    grads, param_def = jax.tree.flatten(updates)
    param_leaves = None if params is None else param_def.flatten_up_to(params)
    is_param_shaped = _param_shaped_test(updates)
    nodes, node_def = jax.tree.flatten(state.inner, is_leaf=is_param_shaped)
    paths = iter(path for path, _ in jax.tree_util.tree_flatten_with_path(state.inner)[0])
    scales = iter(state.absmax)
    for j, node in enumerate(nodes):
      if is_param_shaped(node):
        nodes[j] = _Row([
            _Entry(x, next(scales) if _is_codes(x) else None, code_for(next(paths)))
            for x in param_def.flatten_up_to(node)
        ])
      else:
        next(paths)
    rows = [n for n in nodes if isinstance(n, _Row)]
    # The updates come from one pass over the whole tree (its float32 state is
    # fused away); on the chunked path the new state comes from the scan.
    full_state = node_def.unflatten([
        param_def.unflatten([restore(e) for e in n.entries]) if isinstance(n, _Row) else n
        for n in nodes
    ])
    new_updates, new_inner = inner.update(updates, full_state, params, **extra_args)
    requantized = {}
    if elementwise and rows and jax.default_backend() == "cpu":
      for k, grad in enumerate(grads):
        num_blocks, rem = divmod(grad.size, block_size)
        if rem == 0 and all(row.entries[k].absmax is not None for row in rows) and (
            num_blocks // _chunk_blocks(num_blocks, block_size, chunk_size) >= 2):
          requantized[k] = chunked_requantize(
              k, rows, node_def, nodes, grad, None if params is None else param_leaves[k],
              extra_args)

    new_nodes, new_scales, row_index = [], [], 0
    for node, new in zip(nodes, node_def.flatten_up_to(new_inner)):
      if not isinstance(node, _Row):
        new_nodes.append(new)
        continue
      leaves = []
      for k, (entry, x) in enumerate(zip(node.entries, param_def.flatten_up_to(new))):
        if entry.absmax is None:
          leaves.append(x)
          continue
        codes, absmax = (requantized[k][row_index] if k in requantized
                         else quantize_blockwise(x, entry.code, block_size))
        leaves.append(codes)
        new_scales.append(absmax)
      new_nodes.append(param_def.unflatten(leaves))
      row_index += 1
    new_updates = jax.tree.map(lambda u, g: u.astype(jnp.result_type(g)), new_updates, updates)
    return new_updates, QuantizedState(node_def.unflatten(new_nodes), tuple(new_scales))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
