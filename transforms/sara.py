"""SaRA's sparse trainable set: only the small-magnitude weights are trained.

SaRA fine-tunes the weights a pre-trained model barely uses, |w| < threshold
(official default 2e-3), with AdamW; everything else stays frozen. Here:

- the trainable set of each leaf is at most k = ceil(max_fraction * size)
  positions (a static k, so shapes are fixed under jit): the k smallest |w|,
  of which those with |w| < threshold are active. The state holds their flat
  indices (sorted), the active flags and `inner`'s state on (k,) vectors, so
  AdamW's moments cost 2k floats per leaf, not 2 * size. If more than k
  weights are below the threshold, the k smallest are trained (a documented
  cap; the official code trains them all);
- progressive refinement: once, when `refine_at` steps have been taken (the
  official `progressive_iter`, half of training), the set is re-selected by
  the same rule on the current weights and `inner` restarts on it, as the
  official code re-creates its AdamW there: every sub-state of `inner` that
  holds per-entry buffers (Adam's moments) is re-initialised together with
  its step count, so every trainable weight, kept or newly admitted, takes a
  bias-corrected AdamW step 1 next; sub-states without such buffers (a
  learning-rate schedule's count) continue, as the official torch scheduler
  does. The official code also skips that step's update; here it is applied;
- the low-rank penalty lambda * ||W (.) M||_* on the sparse trainable matrix
  of every 2-D leaf with min(m, n) > `min_dim` (official: Linear weights
  with both sides > 64): its sub-gradient lambda * (U V^T)[M] is added to
  the gradient before `inner` (official: one randomly chosen layer per step;
  here every such layer, deterministically). W (.) M is the official
  `param * mask`: the trainable entries' current values, i.e. the sparse
  update plus the initial sub-threshold values.

Not `gradkit.transforms.zeroth_order.small_magnitude_mask`: that selects by a
per-leaf quantile (|w| <= the fraction-quantile), SaRA by an absolute
threshold.

References:
  T. Hu et al., SaRA: High-Efficient Diffusion Model Fine-tuning with
  Progressive Sparse Low-Rank Adaptation, ICLR 2025 (arXiv 2409.06633;
  official code sjtuplayer/SaRA, optim/adamw.py, finetune.sh).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.transforms.nuclear_norm import nuclear_norm_subgradient


class RestrictToSmallWeightsState(NamedTuple):
  """Trainable positions of every leaf and `inner`'s state on them."""

  count: jax.Array  # int32: steps taken
  indices: Any  # per leaf (k,) int32, sorted flat indices of the k smallest |w|
  active: Any  # per leaf (k,) bool: |w| < threshold when selected
  inner: optax.OptState  # inner's state for the (k,) vectors (params' dtype, float32 at least)


def capacity(size: int, max_fraction: float) -> int:
  """k = ceil(max_fraction * size), at least 1 and at most size (0 for an empty leaf)."""
  return min(size, max(1, math.ceil(max_fraction * size)))


def select_small_weights(
    params: Any, threshold: jax.typing.ArrayLike, max_fraction: float
) -> tuple[Any, Any]:
  """(indices, active) per leaf: the sorted flat indices of the k smallest |w|
  and whether each is below `threshold` (`threshold` may be traced)."""

  def one(p):
    magnitude = jnp.abs(p.astype(_dtype(p))).ravel()
    if p.size == 0:  # a zero-size leaf has nothing to train
      return jnp.zeros((0,), jnp.int32), jnp.zeros((0,), bool)
    _, index = jax.lax.top_k(-magnitude, capacity(p.size, max_fraction))
    index = jnp.sort(index).astype(jnp.int32)
    return index, magnitude[index] < threshold

  return _unzip(jax.tree.map(one, params), params)


def _unzip(pairs: Any, like: Any) -> tuple[Any, Any]:
  """A tree of pairs (shaped like `like`) as a pair of trees."""
  if not jax.tree.leaves(like):  # no pairs to transpose: both trees are `pairs` itself
    return pairs, pairs
  return jax.tree.transpose(jax.tree.structure(like), jax.tree.structure((0, 0)), pairs)


def _dtype(x: jax.Array) -> jnp.dtype:
  """The params' dtype, float32 at least: the trainable entries' buffers and arithmetic."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _gather(tree: Any, indices: Any, like: Any) -> Any:
  return jax.tree.map(lambda x, i, p: x.astype(_dtype(p)).ravel()[i], tree, indices, like)


def _scatter(values: Any, indices: Any, like: Any) -> Any:
  return jax.tree.map(
      lambda v, i, x: jnp.zeros(x.size, v.dtype).at[i].set(v).reshape(x.shape),
      values, indices, like)


def _is_namedtuple(x: Any) -> bool:
  return isinstance(x, tuple) and hasattr(x, "_fields")


def _restart_buffers(
    inner: optax.GradientTransformation, state: optax.OptState, fresh: optax.OptState
) -> optax.OptState:
  """`fresh` for every sub-state of `inner` holding parameter-shaped buffers, else `state`.

  A NamedTuple sub-state with a field that is a parameter tree (Adam's
  `mu`, `nu`) is replaced whole, so its step count restarts with its
  moments; sub-states without such a field (a schedule's step count) are kept.

  Args:
    inner: the transformation whose state this is (for `optax.tree_map_params`).
    state: its current state.
    fresh: `inner.init` of the new parameters, same structure as `state`.

  Returns:
    The merged state.
  """
  marks = optax.tree_map_params(inner, lambda _: True, state,
                                transform_non_params=lambda _: False)

  def holds_buffers(mark):
    leaves = jax.tree.leaves(mark)
    return bool(leaves) and all(leaves)

  def merge(old, new, mark):
    if _is_namedtuple(old):
      if any(holds_buffers(m) for m in mark):
        return new
      return type(old)(*(merge(o, n, m) for o, n, m in zip(old, new, mark)))
    if isinstance(old, (tuple, list)):
      return type(old)(merge(o, n, m) for o, n, m in zip(old, new, mark))
    if isinstance(old, dict):
      return {key: merge(old[key], new[key], mark[key]) for key in old}
    return new if holds_buffers(mark) else old

  return merge(state, fresh, marks)


def restrict_to_small_weights(
    inner: optax.GradientTransformation,
    threshold: jax.typing.ArrayLike = 2e-3,
    max_fraction: float = 0.05,
    refine_at: int | None = None,
    nuclear_weight: jax.typing.ArrayLike = 0.0,
    min_dim: int = 64,
) -> optax.GradientTransformation:
  """Runs `inner` on the small-magnitude weights only; zero update elsewhere.

  `inner` sees, per leaf, the (k,) vectors of the trainable positions'
  gradients (plus the nuclear sub-gradient) and params, in the params' dtype
  (float32 at least: bf16 in float32, float64 in float64); inactive
  positions get zero gradient and zero update. Needs `params` in `update`.

  Args:
    inner: the rule on the trainable entries (SaRA: AdamW, e.g.
      `gradkit.optimizers._recipe.descend(optax.scale_by_adam(), ...)`).
    threshold: trainable where |w| < threshold (official 2e-3). Default 2e-3.
    max_fraction: k = ceil(max_fraction * size) positions per leaf (static). Default 0.05.
    refine_at: re-select the set when this many steps have been taken
      (official 2500 of 5005), or None for never. Default None.
    nuclear_weight: lambda of the low-rank penalty (official 5e-4). Default 0.0.
    min_dim: 2-D leaves with min(m, n) > min_dim get the penalty (static). Default 64.

  References:
    Hu et al., "SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank
    Adaptation", ICLR 2025. https://arxiv.org/abs/2409.06633 ; official code:
    https://github.com/sjtuplayer/SaRA
  """
  _checks.check_positive("threshold", threshold)
  _checks.check_non_negative("nuclear_weight", nuclear_weight)
  if not 0.0 < max_fraction <= 1.0:
    raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction!r}")
  if refine_at is not None:
    _checks.check_non_negative("refine_at", refine_at)

  def zeros_like_selection(indices, params):
    return jax.tree.map(lambda i, p: jnp.zeros(i.shape, _dtype(p)), indices, params)

  def init_fn(params):
    indices, active = select_small_weights(params, threshold, max_fraction)
    return RestrictToSmallWeightsState(
        jnp.zeros([], jnp.int32), indices, active,
        inner.init(zeros_like_selection(indices, params)))

  def refine(state, params):
    indices, active = select_small_weights(params, threshold, max_fraction)
    fresh = inner.init(zeros_like_selection(indices, params))
    return state._replace(indices=indices, active=active,
                          inner=_restart_buffers(inner, state.inner, fresh))

  def penalty(p, index, active):
    if p.ndim != 2 or min(p.shape) <= min_dim:
      return jnp.zeros(index.shape, _dtype(p))
    values = jnp.where(active, p.astype(_dtype(p)).ravel()[index], 0.0)
    sparse = jnp.zeros(p.size, _dtype(p)).at[index].set(values).reshape(p.shape)
    return nuclear_weight * nuclear_norm_subgradient(sparse).ravel()[index]

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("restrict_to_small_weights needs params")
    if refine_at is not None:
      # Both branches in the state's dtypes (an injected hyperparameter may widen a buffer).
      state = jax.lax.cond(state.count == refine_at,
                           lambda: optax.tree.cast_like(refine(state, params), state),
                           lambda: state)
    grads = jax.tree.map(
        lambda g, pen, a: jnp.where(a, g + pen, 0.0),
        _gather(updates, state.indices, params),
        jax.tree.map(penalty, params, state.indices, state.active), state.active)
    small, inner_state = inner.update(grads, state.inner,
                                      _gather(params, state.indices, params))
    small = jax.tree.map(lambda s, a: jnp.where(a, s, 0.0), small, state.active)
    new_updates = jax.tree.map(lambda u, x: x.astype(u.dtype),
                               updates, _scatter(small, state.indices, updates))
    return new_updates, RestrictToSmallWeightsState(
        optax.safe_increment(state.count), state.indices, state.active, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)
