"""Trace-time checks of an update's inputs (gradients, params, state, losses); key-path helpers."""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def path_entry_key(entry: Any) -> Any:
  """A key-path entry as its plain dict key, attribute name or sequence index.

  Args:
    entry: one entry of a `jax.tree_util` key path (DictKey, GetAttrKey,
      SequenceKey, FlattenedIndexKey) or anything else (returned as is).

  Returns:
    `entry.key`, `entry.name` or `entry.idx`, whichever it has.
  """
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  return entry


def _describe_mismatch(updates: Any, params: Any) -> str | None:
  u_def, p_def = jax.tree.structure(updates), jax.tree.structure(params)
  if u_def != p_def:
    return f"tree structures differ:\n  gradients: {u_def}\n  params:    {p_def}"
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, p), u in zip(paths, jax.tree.leaves(updates)):
    if u is not None and p is not None and u.shape != p.shape:
      where = jax.tree_util.keystr(path) or "<root>"
      return f"leaf {where}: gradient shape {u.shape} != param shape {p.shape}"
  return None


def check_updates_match_params() -> optax.GradientTransformation:
  """Raises a ValueError naming the first mismatch between gradient and params.

  Stateless and free at run time: the check runs on shapes while tracing.
  Every gradkit recipe starts with it, so a gradient tree that does not match
  the parameters fails with a readable message instead of an opaque
  `tree_map` error deep inside a later transform. When `params` is not given
  the check is skipped.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is not None:
      problem = _describe_mismatch(updates, params)
      if problem is not None:
        raise ValueError(f"gradients do not match params: {problem}")
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


# The update keywords that hold the loss: each must return a scalar.
LOSS_FUNCTION_ARGS = ("obj_fn", "sampled_obj_fn")
_CACHED_INITS = 8  # abstract states kept per optimizer (one per parameter signature)


def _scalar_loss(name: str, fn: Callable) -> Callable:
  """`fn`, raising a ValueError naming `name` when a call returns anything but a scalar."""

  @functools.wraps(fn)
  def checked(*args, **kwargs):
    value = fn(*args, **kwargs)
    shape = () if isinstance(value, numbers.Number) else getattr(value, "shape", None)
    if shape != ():
      got = f"shape {tuple(shape)}" if shape is not None else f"a {type(value).__name__}"
      raise ValueError(
          f"{name} must return the loss as a scalar (shape ()), but it returned {got}: "
          "reduce it over the batch (e.g. jnp.mean)")
    return value

  return checked


def _signature(tree: Any) -> tuple:
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves)


def _is_float(dtype: Any) -> bool:
  return jnp.issubdtype(dtype, jnp.floating)


_OTHER_PARAMETERS = ("The state was initialised for other parameters (or restored from another "
                     "run): call tx.init on the parameters being trained and pass its state to "
                     "update")


def _with_expected_scale_layouts(state: Any, expected: Any) -> Any:
  """`state` with the 8-bit scales that follow a sharding (`quantized`'s tiles)
  shown in the layout `expected` has, where they fit their codes."""
  from gradkit.transforms.quantized_state import QuantizedState, with_scales_of  # noqa: PLC0415

  is_quantized = lambda node: isinstance(node, QuantizedState)  # noqa: E731
  try:
    return jax.tree.map(
        lambda got, want: with_scales_of(got, want) if is_quantized(got) and is_quantized(want)
        else got, state, expected, is_leaf=is_quantized)
  except (ValueError, TypeError):  # other structures: reported by the caller
    return state


def _describe_state_mismatch(state: Any, expected: Any, params: Any,
                             compare_dtypes: bool) -> str | None:
  """The first way `state` differs from `expected` (`jax.eval_shape(tx.init, params)`)."""
  state = _with_expected_scale_layouts(state, expected)
  got, got_def = jax.tree_util.tree_flatten_with_path(state)
  want, want_def = jax.tree_util.tree_flatten_with_path(expected)
  if got_def != want_def:
    got_paths = [jax.tree_util.keystr(p) for p, _ in got]
    want_paths = [jax.tree_util.keystr(p) for p, _ in want]
    first = next((i for i, (a, b) in enumerate(zip(got_paths, want_paths)) if a != b),
                 min(len(got_paths), len(want_paths)))
    got_at = got_paths[first] if first < len(got_paths) else "nothing"
    want_at = want_paths[first] if first < len(want_paths) else "nothing"
    return (f"its tree structure differs from the one tx.init(params) makes ({len(got)} vs "
            f"{len(want)} leaves; leaf {first} is state{got_at} but should be "
            f"state{want_at}). {_OTHER_PARAMETERS}")
  for (path, x), (_, e) in zip(got, want):
    if jnp.shape(x) != e.shape:
      return (f"leaf state{jax.tree_util.keystr(path)} has shape {jnp.shape(x)}, but "
              f"tx.init(params) makes it {e.shape} for these parameters. {_OTHER_PARAMETERS}")
  if not compare_dtypes:
    return None
  param_shapes = {jnp.shape(p) for p in jax.tree.leaves(params)}
  for (path, x), (_, e) in zip(got, want):
    # Parameter-shaped floating state (moments, momentum, EMAs); a state kept
    # wider than init makes it (float32 for bf16 params, as `quantized`
    # dequantizes) holds it exactly and is left alone.
    if not (e.shape and e.shape in param_shapes and _is_float(e.dtype) and not e.weak_type):
      continue
    dtype = jnp.result_type(x)
    if dtype != e.dtype and not (_is_float(dtype) and jnp.promote_types(dtype, e.dtype) == dtype):
      param_dtypes = sorted({jnp.dtype(jnp.result_type(p)).name for p in jax.tree.leaves(params)})
      return (f"leaf state{jax.tree_util.keystr(path)} is {jnp.dtype(dtype).name}, but "
              f"tx.init(params) makes it {jnp.dtype(e.dtype).name} for these parameters "
              f"({', '.join(param_dtypes)}). The state was initialised (or restored) for "
              "parameters of another dtype: call tx.init on the parameters being trained, "
              "or cast the restored state to the dtypes of jax.eval_shape(tx.init, params)")
  return None


def check_update_inputs(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`tx`, its `update` checking its inputs while tracing (free at run time).

  Before `tx.update` runs:

  - gradients must match `params` (as `check_updates_match_params`);
  - the state must be what `tx.init` makes for these parameters (the
    gradients when `params` is not given): the same tree structure and leaf
    shapes, so a state initialised for other parameters (another model,
    another size) fails here, naming the leaf and both shapes, instead of
    deep inside `tx` ("add got incompatible shapes"); with `params` given, a
    parameter-shaped floating leaf must also have init's dtype, or a wider
    float that holds it exactly (a float16 state restored into a bfloat16 or
    float32 run is an error; a float32 one for bfloat16 parameters, as
    `quantized` hands its inner optimizer, is not). Without `params` the
    dtypes are not compared (float32 state with bfloat16 gradients is
    mixed precision);
  - `obj_fn` and `sampled_obj_fn` must return scalars: each call of one that
    returns anything else raises a ValueError naming it and the shape.

  The expected state is `jax.eval_shape(tx.init, params)`, traced once per
  parameter signature. Every optimizer `gradkit.create` builds is wrapped in
  it (`gradkit.registry.register`).

  Args:
    tx: the optimizer to check.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `init` is `tx.init`.
  """
  tx = optax.with_extra_args_support(tx)
  expected_states: dict[tuple, Any] = {}

  def expected_state(reference):
    key = _signature(reference)
    if key not in expected_states:
      if len(expected_states) >= _CACHED_INITS:
        expected_states.clear()
      with warnings.catch_warnings():  # init's warnings were given when it ran
        warnings.simplefilter("ignore")
        expected_states[key] = jax.eval_shape(tx.init, reference)
    return expected_states[key]

  def update_fn(updates, state, params=None, **extra_args):
    if params is not None:
      problem = _describe_mismatch(updates, params)
      if problem is not None:
        raise ValueError(f"gradients do not match params: {problem}")
      expected = expected_state(params)
    else:
      try:
        expected = expected_state(updates)
      except Exception:  # noqa: BLE001  gradients tx.init cannot take as parameters: no check
        expected = None
    if expected is not None:
      problem = _describe_state_mismatch(state, expected, params, params is not None)
      if problem is not None:
        raise ValueError(f"optimizer state does not match the parameters: {problem}")
    for name in LOSS_FUNCTION_ARGS:
      if callable(extra_args.get(name)):
        extra_args[name] = _scalar_loss(name, extra_args[name])
    return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)
