"""8-bit block-wise optimizer state for any optax transformation.

`quantized(inner)` stores every floating state leaf of `inner` shaped like a
parameter (Adam's mu and nu, momentum's trace, ..., wherever they sit: chains,
`optax.masked`, `optax.partition` branches, `inject_hyperparams`) as uint8
codes into the dynamic map plus one absmax per block, and runs `inner` itself
in float32 (float64 for a float64 state); `quantization_plan` says what
happens to each leaf (Dettmers et al., "8-bit Optimizers via Block-wise
Quantization", ICLR 2022, arXiv 2110.02861; official code
bitsandbytes-foundation/bitsandbytes, `optim/optimizer.py`).
"""

from __future__ import annotations

import collections
import functools
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradkit.transforms.quantization import (
    dequantize_blockwise,
    dequantize_tiled,
    dynamic_map,
    quantize_blockwise,
    quantize_tiled,
    shard_tile,
)
from gradkit.transforms.tree_checks import path_entry_key

_SIGNED_MAP = dynamic_map(signed=True)
_UNSIGNED_MAP = dynamic_map(signed=False)

KeepFp32 = Callable[[tuple[Any, ...], Any], bool] | Any | None


class QuantizedArray(NamedTuple):
  """A readable view of one 8-bit state tensor (see `quantized_view`)."""

  codes: jax.Array  # uint8, the leaf's shape
  absmax: jax.Array  # float32 (float64 for a float64 state), one per block


class QuantizedState(NamedTuple):
  """`inner`'s state with each 8-bit leaf holding its uint8 codes, plus the scales.

  The codes stay in the leaf's place and the per-block absmax arrays sit in
  a flat tuple (in the flattening order of the quantized leaves), so every
  leaf of the state is a plain array: Flax's `nnx.Optimizer`, which wraps
  each state array in a Variable, and checkpointers see nothing unusual.
  """

  inner: optax.OptState
  absmax: tuple[jax.Array, ...]


class NothingQuantizedWarning(UserWarning):
  """`quantized(...).init` found no leaf of the inner state to store in 8 bits.

  Its message counts the kept leaves by reason (see `quantization_plan`).
  """


class ShardLayoutWarning(UserWarning):
  """A leaf split over devices has no tile inside its shards of >= block_size / 8 elements.

  Its 8-bit state then uses the official row-major blocks, which straddle
  the shards (XLA gathers them in every step).
  """


class PlanEntry(NamedTuple):
  """What `quantized` does with one leaf of the inner state (see `quantization_plan`)."""

  path: str  # `jax.tree_util.keystr` of the leaf in the inner state
  shape: tuple[int, ...]
  dtype: Any
  decision: str  # QUANTIZED, or the reason the leaf stays as `inner` made it
  parameter: str | None  # keystr of the parameter the leaf belongs to, when one is known


QUANTIZED = "quantized"
NOT_FLOATING = "not floating"
NOT_PARAMETER_SHAPED = "not shaped like any parameter"
BELOW_MIN_SIZE = "below min_size"
KEEP_FP32 = "keep_fp32"
AMBIGUOUS = "ambiguous"
ALREADY_QUANTIZED = "already quantized"  # inside a nested QuantizedState


def _is_quantized_state(node: Any) -> bool:
  return isinstance(node, QuantizedState)


def _is_codes(leaf: Any) -> bool:
  # init rejects inner states holding uint8 arrays, so uint8 marks a quantized leaf.
  return not _is_quantized_state(leaf) and jnp.result_type(leaf) == jnp.uint8


def _flatten_own(inner_state: Any) -> tuple[list, Any]:
  """(path, leaf) pairs of a `QuantizedState.inner`, nested `QuantizedState`s kept whole."""
  return jax.tree_util.tree_flatten_with_path(inner_state, is_leaf=_is_quantized_state)


def quantized_view(state: QuantizedState) -> optax.OptState:
  """`state.inner` with each quantized leaf shown as `QuantizedArray(codes, absmax)`.

  Args:
    state: a `QuantizedState` from `quantized(...).init`.

  Returns:
    The inner state tree, quantized leaves as `QuantizedArray`s.
  """
  leaves, treedef = jax.tree.flatten(state.inner, is_leaf=_is_quantized_state)
  scales = iter(state.absmax)
  return treedef.unflatten(
      [QuantizedArray(x, next(scales)) if _is_codes(x) else x for x in leaves]
  )


def with_scales_of(state: QuantizedState, like: QuantizedState) -> QuantizedState:
  """`state` with each tiled absmax that fits its codes replaced by `like`'s.

  The layout of an 8-bit leaf depends on its parameter's sharding when
  `init` ran, which `jax.eval_shape(tx.init, params)` does not see; a check
  of a state against that shape compares this instead.

  Args:
    state: a `QuantizedState`.
    like: the `QuantizedState` (or its shapes) to compare it with.

  Returns:
    `state`, its tiled scales (absmax of the codes' rank, each extent
    dividing the codes') swapped for `like`'s.
  """
  codes = [x for x in jax.tree.leaves(state.inner, is_leaf=_is_quantized_state) if _is_codes(x)]
  if not len(codes) == len(state.absmax) == len(like.absmax):
    return state
  fits = lambda c, a: _tiled(c, a) and all(n % g == 0 for n, g in zip(c.shape, a.shape))  # noqa: E731
  return state._replace(absmax=tuple(
      e if fits(c, a) else a for c, a, e in zip(codes, state.absmax, like.absmax)))


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
  """One leaf of the inner state during `update`."""

  codes: Any  # uint8 codes, or the leaf itself when absmax is None
  absmax: jax.Array | None
  code: np.ndarray | None  # the dynamic map of a quantized leaf


def _param_shaped_test(params: Any) -> Callable[[Any], bool]:
  """Whether a node has the structure of `params` and its leaves their shapes."""
  treedef = jax.tree.structure(params)
  shapes = [jnp.shape(x) for x in jax.tree.leaves(params)]

  def is_param_shaped(node: Any) -> bool:
    if _is_quantized_state(node) or jax.tree.structure(node) != treedef:
      return False
    return [jnp.shape(x) for x in treedef.flatten_up_to(node)] == shapes

  return is_param_shaped


def _dtype(leaf: Any) -> Any:
  return leaf.dtype if hasattr(leaf, "dtype") else jnp.result_type(leaf)


def quantization_plan(
    state: Any,
    params: Any,
    *,
    min_size: int = 4096,
    keep_fp32: KeepFp32 = None,
) -> list[PlanEntry]:
  """What `quantized(inner, min_size=..., keep_fp32=...)` does with each leaf of `inner`'s state.

  `quantized`'s init runs this on `inner.init(params)`. A leaf is quantized
  when it is floating, has the shape of some parameter, has >= `min_size`
  elements, and its parameter is not kept float32 by `keep_fp32`. The
  parameter of a leaf is known exactly inside a subtree with the structure of
  `params` (optax's mu, nu, trace); elsewhere (`optax.masked` states holding
  `MaskedNode`s, `optax.partition` branches) it is the same-shaped parameter
  whose key path ends the leaf's path (dict keys, attribute names and indices
  compared), else the only parameter of that shape; with several and no path
  match, the leaf is quantized or kept when their `keep_fp32` flags agree,
  and kept as "ambiguous" otherwise.

  A shape match is all it takes: a leaf of a parameter's shape that is not a
  moment (a full-rank projector, a copy of the parameters) is quantized too.

  Args:
    state: `inner`'s state, or its `jax.eval_shape(inner.init, params)`.
    params: the parameters (arrays or `jax.ShapeDtypeStruct`s).
    min_size: as in `quantized`. Default 4096.
    keep_fp32: as in `quantized`. Default None (parameters whose path
      mentions "embedding").

  Returns:
    One `PlanEntry(path, shape, dtype, decision, parameter)` per leaf of
    `state`, in `jax.tree.leaves` order. `decision` is "quantized" or why the
    leaf is kept: "not floating", "not shaped like any parameter", "below
    min_size", "keep_fp32", "ambiguous" (same-shaped parameters disagree on
    `keep_fp32`) or "already quantized" (inside a nested `QuantizedState`).
  """
  params_with_path, param_def = jax.tree_util.tree_flatten_with_path(params)
  keep = _keep_flags(keep_fp32, params_with_path, param_def)
  names = [jax.tree_util.keystr(path) for path, _ in params_with_path]
  tails = [tuple(path_entry_key(k) for k in path) for path, _ in params_with_path]
  by_shape = collections.defaultdict(list)
  for k, (_, param) in enumerate(params_with_path):
    by_shape[tuple(jnp.shape(param))].append(k)
  is_param_shaped = _param_shaped_test(params)

  def associate(path: tuple[Any, ...], candidates: list[int]) -> tuple[str | None, bool | None]:
    """(parameter name, keep flag) of a leaf outside a params-structured subtree."""
    keys = tuple(path_entry_key(k) for k in path)
    suffixes = [k for k in candidates
                if len(tails[k]) <= len(keys) and keys[len(keys) - len(tails[k]):] == tails[k]]
    if suffixes:
      k = max(suffixes, key=lambda k: len(tails[k]))
      return names[k], keep[k]
    if len(candidates) == 1:
      return names[candidates[0]], keep[candidates[0]]
    flags = {keep[k] for k in candidates}
    return None, flags.pop() if len(flags) == 1 else None

  def decide(path: tuple[Any, ...], leaf: Any, k: int | None) -> PlanEntry:
    shape, dtype = tuple(jnp.shape(leaf)), _dtype(leaf)
    entry = PlanEntry(jax.tree_util.keystr(path), shape, dtype, QUANTIZED, None)
    if not jnp.issubdtype(dtype, jnp.floating):
      return entry._replace(decision=NOT_FLOATING)
    candidates = by_shape.get(shape, [])
    if not candidates:
      return entry._replace(decision=NOT_PARAMETER_SHAPED)
    # Inside a subtree structured like params the parameter is known exactly.
    name, kept = (names[k], keep[k]) if k is not None else associate(path, candidates)
    entry = entry._replace(parameter=name)
    if math.prod(shape) < min_size:
      return entry._replace(decision=BELOW_MIN_SIZE)
    if kept is None:
      return entry._replace(decision=AMBIGUOUS)
    return entry._replace(decision=KEEP_FP32) if kept else entry

  is_node = lambda n: _is_quantized_state(n) or is_param_shaped(n)  # noqa: E731
  plan = []
  for prefix, node in jax.tree_util.tree_flatten_with_path(state, is_leaf=is_node)[0]:
    if _is_quantized_state(node):
      for path, leaf in jax.tree_util.tree_flatten_with_path(node)[0]:
        entry = PlanEntry(jax.tree_util.keystr(prefix + path), tuple(jnp.shape(leaf)),
                          _dtype(leaf), ALREADY_QUANTIZED, None)
        plan.append(entry)
    elif is_param_shaped(node):
      for k, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(node)[0]):
        plan.append(decide(prefix + path, leaf, k))
    else:
      plan.append(decide(prefix, node, None))
  return plan


def _nothing_quantized_message(plan: list[PlanEntry], min_size: int) -> str:
  counts = collections.Counter(entry.decision for entry in plan)
  kept = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
  return (
      f"quantized: no leaf of the inner state is stored in 8 bits ({len(plan)} leaves kept"
      f"{': ' + kept if kept else ''}; min_size={min_size}). Only floating leaves shaped "
      "like a parameter are quantized (factored or low-rank state is not): lower min_size "
      "for small parameters, wrap the transformation that holds parameter-shaped moments, "
      "or see gradkit.transforms.quantization_plan."
  )


@functools.lru_cache(maxsize=None)
def _init_quantizer(unsigned: bool, block_size: int, tile: tuple[int, ...] | None) -> Callable:
  """One compiled `(codes, absmax)` of a state leaf per map and layout, for `init`.

  Run eagerly, the quantizer's dozens of small operations would each be
  compiled for every new shape and sharding of the parameters; jitted, the
  codes and scales of a sharded leaf still follow its layout (they are
  computed from it).
  """
  code = _UNSIGNED_MAP if unsigned else _SIGNED_MAP
  if tile is None:
    return jax.jit(lambda x: quantize_blockwise(x, code, block_size))
  return jax.jit(lambda x: quantize_tiled(x, code, tile))


def _tiled(codes: Any, absmax: jax.Array) -> bool:
  """Whether a quantized leaf has tiled blocks (absmax keeps the leaf's axes)."""
  return jnp.ndim(codes) >= 2 and jnp.ndim(absmax) == jnp.ndim(codes)


def _tile_for(x: Any, block_size: int, path: str) -> tuple[int, ...] | None:
  """The tile of a state leaf split over devices at init; None for the official blocks.

  A leaf of rank >= 2 whose (eager) array is split into shards gets the
  largest tile inside a shard (`shard_tile`); an unsplit, replicated or
  traced leaf, or a vector, keeps the official row-major blocks.
  """
  if isinstance(x, jax.core.Tracer) or jnp.ndim(x) < 2 or not hasattr(x, "sharding"):
    return None
  shard = tuple(x.sharding.shard_shape(x.shape))
  if shard == tuple(x.shape):
    return None
  tile = shard_tile(shard, block_size)
  width = x.shape[-1]
  if all(t == 1 for t in tile[:-2]) and (
      tile[-2:] == (1, block_size) and width % block_size == 0
      or tile[-1] == width and tile[-2] * width == block_size):
    return None  # the tiles are the official blocks (a row split): keep their layout
  if math.prod(tile) * 8 < block_size:
    warnings.warn(
        f"quantized: state leaf {path} {tuple(x.shape)} is split into shards {shard} with no "
        f"tile of >= {block_size // 8} elements inside one (best {tile}); it keeps the "
        "row-major blocks, which straddle the shards. Shard along extents with small factors "
        "(powers of two) to keep its 8-bit state sharded.", ShardLayoutWarning, stacklevel=4)
    return None
  return tile


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

  At init, every floating leaf of `inner.init(params)` whose shape is that of
  some parameter is quantized, wherever it sits (optax's mu, nu and trace in
  a chain, the moments of an `optax.masked` or `optax.partition` branch, under
  `inject_hyperparams`, the AdamW fallback of gradkit's matrix family), when
  it has >= `min_size` elements and its parameter is not kept in float32 by
  `keep_fp32`; `quantization_plan` gives the decision and its reason for each
  leaf, and how a leaf outside a params-structured subtree finds its
  parameter. Such a leaf is replaced by its uint8 codes (the leaf's shape),
  and its absmax (float32; float64 for a float64 state) goes to
  `QuantizedState.absmax`; `quantized_view(state)` shows them together.

  Blocks: on one device, replicated, or for a vector, the official layout:
  runs of `block_size` elements of the row-major flattening (absmax of shape
  `(ceil(n / block_size),)`; the last block may be short). A leaf of rank
  >= 2 whose array is split over devices when `init` runs (eagerly, on
  sharded parameters) gets tiles inside its shards instead (`shard_tile`:
  the largest tile of <= `block_size` elements dividing the shard, absmax of
  shape `leaf.shape // tile`), so codes and scales stay split like the
  parameter under FSDP over any axis and on 2-D meshes; the official
  row-major blocks of a column-split matrix straddle its shards. For a
  row-split matrix whose width divides `block_size` (or is a multiple of it)
  the tiles are the official blocks, and the official layout is kept. The absmax's shape records the layout, so `update`
  follows it; a state restored for another sharding must be re-initialised
  for it (its absmax shapes differ). A shard with no tile of >=
  `block_size / 8` elements keeps the official blocks and warns
  (`ShardLayoutWarning`); a jitted `init` sees no sharding and uses them too. Other leaves (counts, small parameters' moments, factored or
  low-rank state such as GaLore's (r, n) moments) stay as `inner` made them;
  an init that quantizes nothing warns (`NothingQuantizedWarning`), unless
  `params` has no leaves (an `optax.partition` branch that got none).
  `gradkit.state_nbytes_breakdown` splits the bytes of the result.

  Signedness: a leaf whose state path contains a NamedTuple field named in
  `unsigned_fields` (default `("nu",)`: optax's Adam/belief second moments,
  which are non-negative) uses the unsigned dynamic map; all others use the
  signed map, so any state that may be negative is safe by default. Naming a
  field that can go negative clips it to 0.

  `keep_fp32`: None keeps float32 state for every parameter whose key path
  contains "embedding" (case-insensitive; Flax `nnx.Embed` names its table
  `embedding`), as bitsandbytes does for StableEmbedding; or a callable
  `(path, param) -> bool`; or a tree of bools with the structure of `params`.

  update: dequantizes to float32 (float64 for a float64 state), runs `inner.update`, and requantizes the new
  state; the returned updates are `inner`'s float32 output (never recomputed
  from dequantized state), cast to each gradient's dtype. So step 1 equals
  the float32 optimizer exactly and quantization error enters from step 2.
  uint8 marks the quantized leaves, so an inner state holding uint8 arrays
  is rejected at init (a nested `quantized`'s state is left to it).

  `elementwise=True` declares that `inner` updates each element from that
  element's gradient, state and parameter alone, plus scalar state such as a
  step count (Adam, Lion, momentum, AdaBelief; not a method with a norm or a
  matrix product). On the CPU backend, when every quantized leaf lies in a
  subtree structured like the parameters (a plain chain of such directions),
  the new state of each quantized parameter whose size is a multiple of
  `block_size` is then recomputed and requantized in chunks of whole blocks
  (about `chunk_size` elements) inside a `lax.scan`, while the updates come
  from the usual whole-tree pass (whose float32 state XLA then fuses away):
  XLA:CPU otherwise materializes every dequantized and new moment to take
  the per-block absmax. Same formula; the two paths agree to float32
  rounding.

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

  def init_fn(params):
    state = inner.init(params)
    plan = quantization_plan(state, params, min_size=min_size, keep_fp32=keep_fp32)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(state)
    leaves, scales = [], []
    for (path, x), entry in zip(leaves_with_path, plan):
      if entry.decision == QUANTIZED:
        tile = _tile_for(x, block_size, entry.path)
        quantize = _init_quantizer(code_for(path) is _UNSIGNED_MAP, block_size, tile)
        codes, absmax = quantize(x)
        leaves.append(codes)
        # The scales keep the state's precision (float32 at least): a float64
        # state is restored in float64, so `inner` sees its own dtypes.
        scales.append(absmax.astype(jnp.promote_types(entry.dtype, jnp.float32)))
        continue
      if entry.decision != ALREADY_QUANTIZED and jnp.issubdtype(entry.dtype, jnp.uint8):
        raise ValueError(
            f"quantized: inner's state holds a uint8 leaf at {entry.path}; uint8 marks "
            "quantized's own codes, so such a state cannot be wrapped")
      leaves.append(x)
    if not scales and jax.tree.leaves(params):  # not for a partition branch with no leaves
      warnings.warn(_nothing_quantized_message(plan, min_size), NothingQuantizedWarning,
                    stacklevel=2)
    return QuantizedState(treedef.unflatten(leaves), tuple(scales))

  def restore(entry: _Entry) -> Any:
    if entry.absmax is None:
      return entry.codes
    if _tiled(entry.codes, entry.absmax):
      return dequantize_tiled(entry.codes, entry.absmax, entry.code, entry.absmax.dtype)
    return dequantize_blockwise(
        entry.codes, entry.absmax, entry.code, entry.codes.shape, entry.absmax.dtype, block_size)

  def requantize(x: Any, entry: _Entry) -> tuple[jax.Array, jax.Array]:
    """(codes, absmax) of a new state leaf, in the blocks of its old state."""
    if _tiled(entry.codes, entry.absmax):
      tile = tuple(n // g for n, g in zip(entry.codes.shape, entry.absmax.shape))
      return quantize_tiled(x, entry.code, tile)
    return quantize_blockwise(x, entry.code, block_size)

  def chunked_requantize(k: int, rows: list[list[_Entry]], node_def: Any, nodes: list[Any],
                         is_row: list[bool], grad: Any, param: Any,
                         extra_args: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Parameter `k`'s new (codes, absmax) per state row, from `inner` run chunk by chunk."""
    num_blocks = grad.size // block_size
    chunk_blocks = _chunk_blocks(num_blocks, block_size, chunk_size)
    num_chunks = num_blocks // chunk_blocks
    split = lambda x: x.reshape(num_chunks, chunk_blocks, block_size)  # noqa: E731
    states = [(split(row[k].codes), row[k].absmax.reshape(num_chunks, -1)) for row in rows]
    maps = [row[k].code for row in rows]

    def body(carry, chunk):
      grad_c, param_c, states_c = chunk
      restored = iter([restore(_Entry(*c, code)) for c, code in zip(states_c, maps)])
      state_c = node_def.unflatten(
          [next(restored) if row else n for n, row in zip(nodes, is_row)])
      _, new_state_c = inner.update(grad_c, state_c, param_c, **extra_args)
      new_rows = [x for x, row in zip(node_def.flatten_up_to(new_state_c), is_row) if row]
      return carry, [quantize_blockwise(x, code, block_size) for x, code in zip(new_rows, maps)]

    chunks = (split(grad), None if param is None else split(param), states)
    return [(codes.reshape(grad.shape), absmax.reshape(-1))
            for codes, absmax in jax.lax.scan(body, None, chunks)[1]]

  def chunked_path(updates, entries, state, params, extra_args) -> dict[int, tuple[Any, Any]]:
    """New (codes, absmax) by leaf index, for the leaves the chunked path requantizes.

    It runs `inner` on one parameter's chunk at a time in place of each
    subtree structured like the parameters (a row), so it applies only when
    every quantized leaf sits in such a row.
    """
    grads, param_def = jax.tree.flatten(updates)
    is_param_shaped = _param_shaped_test(updates)
    nodes, node_def = jax.tree.flatten(
        state.inner, is_leaf=lambda n: _is_quantized_state(n) or is_param_shaped(n))
    is_row = [is_param_shaped(n) for n in nodes]
    rows, row_indices, offset = [], [], 0
    for row in is_row:
      width = len(grads) if row else 1
      if row:
        row_indices.append(range(offset, offset + width))
        rows.append(entries[offset:offset + width])
      elif entries[offset].absmax is not None:
        return {}
      offset += width
    if not rows:
      return {}
    param_leaves = None if params is None else param_def.flatten_up_to(params)
    requantized = {}
    for k, grad in enumerate(grads):
      num_blocks, rem = divmod(grad.size, block_size)
      if rem == 0 and all(row[k].absmax is not None and not _tiled(row[k].codes, row[k].absmax)
                          for row in rows) and (
          num_blocks // _chunk_blocks(num_blocks, block_size, chunk_size) >= 2):
        new = chunked_requantize(k, rows, node_def, nodes, is_row, grad,
                                 None if params is None else param_leaves[k], extra_args)
        requantized.update({indices[k]: pair for indices, pair in zip(row_indices, new)})
    return requantized

  def update_fn(updates, state, params=None, **extra_args):
    leaves_with_path, treedef = _flatten_own(state.inner)
    scales = iter(state.absmax)
    entries = [_Entry(x, next(scales), code_for(path)) if _is_codes(x) else _Entry(x, None, None)
               for path, x in leaves_with_path]
    # The updates come from one pass over the whole tree (its float32 state is
    # fused away); on the chunked path the new state comes from the scan.
    full_state = treedef.unflatten([restore(e) for e in entries])
    new_updates, new_inner = inner.update(updates, full_state, params, **extra_args)
    requantized = {}
    if elementwise and jax.default_backend() == "cpu":
      requantized = chunked_path(updates, entries, state, params, extra_args)
    new_leaves, new_scales = [], []
    for i, (entry, x) in enumerate(zip(entries, treedef.flatten_up_to(new_inner))):
      if entry.absmax is None:
        new_leaves.append(x)
        continue
      codes, absmax = requantized[i] if i in requantized else requantize(x, entry)
      new_leaves.append(codes)
      new_scales.append(absmax.astype(entry.absmax.dtype))
    new_updates = jax.tree.map(lambda u, g: u.astype(jnp.result_type(g)), new_updates, updates)
    return new_updates, QuantizedState(treedef.unflatten(new_leaves), tuple(new_scales))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
