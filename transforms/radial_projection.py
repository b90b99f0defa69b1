"""AdamP/SGDP's projection: drop the radial part of steps on scale-invariant weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks


class ProjectRadialState(NamedTuple):
  """State of `project_radial`; the projection itself keeps nothing."""

  inner_state: optax.OptState
  decay_state: optax.OptState  # optax.add_decayed_weights's (schedule count, mask)


def _unit_peak_rows(x, axes):
  """(x / peak, peak), peak = max |x| over `axes` per row (a zero row is divided by 1)."""
  peak = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
  return x / jnp.where(peak > 0, peak, jnp.ones_like(peak)), peak


def _project_view(g, d, p, axes, row_length, delta, eps):
  """Tests one view and projects d if the test fires.

  A view's rows are the slices reduced over `axes` (every axis but the
  channel axis for the channel view, all axes for the layer view), so no
  transpose or reshape is materialized. Fires when
  max_i |cos(g_i, p_i)| < delta / sqrt(row_length); cos clamps each norm at
  eps, as torch's F.cosine_similarity does. Each row is divided by its
  largest |entry| before anything is squared (`_unit_peak_rows`), so huge
  (x1e30 in float32) or tiny rows give the same cosines and p_hat as the
  exact arithmetic, not an overflowed norm (a cosine of 0, a p_hat of 0).
  """
  g_unit, g_peak = _unit_peak_rows(g, axes)
  p_unit, p_peak = _unit_peak_rows(p, axes)
  g_unit_norm = jnp.sqrt(jnp.sum(g_unit * g_unit, axis=axes, keepdims=True))
  p_unit_norm = jnp.sqrt(jnp.sum(p_unit * p_unit, axis=axes, keepdims=True))
  # max(||x||, eps) = peak * max(||x / peak||, eps / peak); eps / 0 = inf gives 0 for a zero row.
  cosine = jnp.abs(jnp.sum(g_unit * p_unit, axis=axes, keepdims=True)) / (
      jnp.maximum(g_unit_norm, eps / g_peak) * jnp.maximum(p_unit_norm, eps / p_peak)
  )
  fired = jnp.max(cosine) < delta / math.sqrt(row_length)
  p_hat = p_unit / (p_unit_norm + eps / p_peak)  # p / (||p|| + eps)
  tangential = d - p_hat * jnp.sum(p_hat * d, axis=axes, keepdims=True)
  return fired, tangential


def _project_leaf(g, d, p, delta, wd_ratio, eps, channel_axis):
  """(direction, weight-decay ratio) for one leaf; ndim <= 1 leaves pass."""
  if p.ndim <= 1 or p.size == 0:
    return d, jnp.ones((), p.dtype)
  channel = channel_axis % p.ndim
  row_axes = tuple(a for a in range(p.ndim) if a != channel)
  channel_fired, channel_d = _project_view(
      g, d, p, row_axes, p.size // p.shape[channel], delta, eps
  )
  layer_fired, layer_d = _project_view(
      g, d, p, tuple(range(p.ndim)), p.size, delta, eps
  )
  # Channel view first; the layer view only counts when the channel view fails.
  projected = jnp.where(channel_fired, channel_d, jnp.where(layer_fired, layer_d, d))
  ratio = jnp.where(channel_fired | layer_fired, wd_ratio, 1.0).astype(p.dtype)
  return projected.astype(d.dtype), ratio


def project_radial(
    inner: optax.GradientTransformation,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any | Callable[[optax.Params], Any] | None = None,
    channel_axis: int = -1,
) -> optax.GradientTransformationExtraArgs:
  """Removes the radial part of `inner`'s step on weights that look scale-invariant.

  Weight decay is added after the projection, weakened by `wd_ratio` on the
  leaves where it fired. For every leaf p with ndim > 1, with g the incoming
  (raw) gradient and d the direction `inner` computes from it, two views are
  tested in order:
  per output channel (rows of shape (C, numel / C)), then the whole tensor
  (one row). A view fires when max_i |cos(g_i, p_i)| < delta / sqrt(K), K
  the row length; the first view that fires replaces each row d_i by
  d_i - p_hat_i <p_hat_i, d_i>, p_hat_i = p_i / (||p_i|| + eps), and sets the
  leaf's decay ratio r = wd_ratio (else r = 1). Leaves with ndim <= 1 pass
  unchanged with r = 1. The output is d_projected + weight_decay * r * p, the
  decay computed by optax.add_decayed_weights (schedule, `mask`) on r * p,
  so a following `scale_by_learning_rate` gives AdamP's
  p <- p (1 - lr wd r) - lr d. The test, the projection and the decay all use
  the current parameter, so `params` is required.

  The output channel is `channel_axis`: the LAST axis for Flax kernels
  (Dense (in, out), Conv (..., in, out)); pass 0 for PyTorch-layout
  (out, in, ...) arrays. Grouping by an input axis would be a silent error.

  Args:
    inner: the direction transform (e.g. optax.scale_by_adam); it receives
      the raw gradient this transform receives.
    delta: threshold of the cosine test. Default 0.1.
    wd_ratio: weight-decay factor on leaves where a view fired. Default 0.1.
    eps: guards the norms in the cosine and in p_hat. Default 1e-8.
    weight_decay: decoupled decay coefficient, float or schedule. Default 0.0.
    mask: tree or callable selecting the leaves that get weight decay (the
      projection applies to every leaf with ndim > 1 regardless). Default None (every leaf).
    channel_axis: static index of the output-channel axis. Default -1.

  Returns:
    A `GradientTransformationExtraArgs`; extra arguments go to `inner`.

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021. https://arxiv.org/abs/2006.08217 ; official code:
    https://github.com/clovaai/AdamP

  Example:
    >>> import optax
    >>> from gradkit.transforms import project_radial
    >>> tx = optax.chain(
    ...     project_radial(optax.scale_by_adam(), weight_decay=1e-2),
    ...     optax.scale_by_learning_rate(1e-3))
  """
  _checks.check_non_negative("delta", delta)
  _checks.check_non_negative("wd_ratio", wd_ratio)
  _checks.check_non_negative("eps", eps)
  _checks.check_non_negative("weight_decay", weight_decay)
  if not isinstance(channel_axis, int):
    raise ValueError(f"channel_axis must be a static int, got {channel_axis!r}")
  inner = optax.with_extra_args_support(inner)
  decay = optax.add_decayed_weights(weight_decay, mask)

  def init_fn(params):
    return ProjectRadialState(
        inner_state=inner.init(params), decay_state=decay.init(params)
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("project_radial needs `params` in update()")
    direction, inner_state = inner.update(
        updates, state.inner_state, params, **extra_args
    )
    grads, treedef = jax.tree.flatten(updates)
    param_leaves = treedef.flatten_up_to(params)
    results = [
        _project_leaf(g, d, p, delta, wd_ratio, eps, channel_axis)
        for g, d, p in zip(grads, treedef.flatten_up_to(direction), param_leaves)
    ]
    projected = treedef.unflatten([d for d, _ in results])
    decayed_params = treedef.unflatten(
        [r * p for (_, r), p in zip(results, param_leaves)]
    )
    updates, decay_state = decay.update(projected, state.decay_state, decayed_params)
    return updates, ProjectRadialState(inner_state=inner_state, decay_state=decay_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
