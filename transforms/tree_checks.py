"""Trace-time check that gradients match the parameters they update, and key-path helpers."""

from __future__ import annotations

from typing import Any

import jax
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
