"""Clipping of the largest gradient coordinates to an adaptive threshold.

Pan & Li, "Toward Understanding Why Adam Converges Faster Than SGD for
Transformers" (OPT 2022, arXiv 2306.00204); official code panyan7/adam-vs-sgd.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks


class ScaleByAdamClippedFirstMomentState(NamedTuple):
  """State of `scale_by_adam_clipped_first_moment` (as optax's Adam state)."""

  count: jax.Array  # int32 scalar.
  mu: optax.Updates
  nu: optax.Updates


def _check_fraction(fraction: Any, threshold_scale: Any) -> None:
  if callable(fraction):
    raise ValueError(
        "fraction must be a number; schedule it through optax.inject_hyperparams"
    )
  _checks.check_unit_interval("fraction", fraction, closed=True)
  _checks.check_non_negative("threshold_scale", threshold_scale)


_FLOAT32_INF_BITS = 0x7F800000


def _count_at_least(bit_leaves: list[jax.Array], threshold_bits: jax.Array) -> jax.Array:
  return sum(jnp.sum(b >= threshold_bits, dtype=jnp.int32) for b in bit_leaves)


def _top_fraction_threshold(leaves: list[jax.Array], fraction: Any) -> jax.Array:
  """The value at descending position floor(fraction * d) of |g| over all leaves.

  Exact selection without sorting: for non-negative float32 numbers the
  order of the values is the order of their bit patterns as int32, so a
  bisection over bit patterns (31 passes, each a count of entries at or
  above a candidate) finds the largest pattern that at least index + 1
  entries reach, which is that order statistic. Each pass is one streaming
  read per leaf and a scalar sum, so under sharding only scalars cross
  devices and no top-k or sort of d values is materialized.
  """
  d = sum(g.size for g in leaves)
  bit_leaves = [
      jax.lax.bitcast_convert_type(jnp.abs(g).astype(jnp.float32), jnp.int32)
      for g in leaves
  ]
  index = jnp.floor(jnp.asarray(fraction, jnp.float32) * d).astype(jnp.int32)

  def bisect(_, bounds):
    low, high = bounds  # count(>= low) > index >= count(>= high)
    mid = low + (high - low) // 2
    reached = _count_at_least(bit_leaves, mid) > index
    return jnp.where(reached, mid, low), jnp.where(reached, high, mid)

  bounds = (jnp.int32(0), jnp.int32(_FLOAT32_INF_BITS + 1))
  low, _ = jax.lax.fori_loop(0, 31, bisect, bounds)
  tau = jax.lax.bitcast_convert_type(low, jnp.float32)
  return jnp.where(index >= d, jnp.zeros([], jnp.float32), tau)


def _clip_top_fraction(updates: Any, fraction: Any, threshold_scale: Any) -> Any:
  leaves = jax.tree.leaves(updates)
  if not leaves:
    return updates
  tau = _top_fraction_threshold(leaves, fraction) * threshold_scale
  return jax.tree.map(
      lambda g: jnp.clip(g, -tau.astype(g.dtype), tau.astype(g.dtype)), updates
  )


def clip_coordinates_top_fraction(
    fraction: float, threshold_scale: jax.typing.ArrayLike = 1.0
) -> optax.GradientTransformation:
  """Clips the top `fraction` of coordinates, by magnitude, over the whole tree.

  tau = the value at 0-based position floor(fraction * d) of |g| sorted in
  descending order, where g concatenates ALL leaves (d entries: the official
  rule per parameter group); then every entry is clipped to
  [-threshold_scale * tau, threshold_scale * tau]. About fraction * d
  coordinates are clipped; fraction = 0 leaves the updates unchanged,
  fraction = 1 gives tau = 0 (all zeros). Stateless.

  The threshold is selected exactly by a 31-pass bisection over float32 bit
  patterns (each pass counts the entries at or above a candidate), not by
  sorting or `top_k`, which on CPU cost seconds for millions of entries.
  floor(fraction * d) is computed in float32, so a traced fraction
  (`optax.inject_hyperparams`) works too; for d beyond ~1e7 it can differ by
  one position from the float64 rule. Under sharding the threshold is exact
  and global, and only scalar counts cross devices; the clipping itself
  stays sharded like the leaves.

  Args:
    fraction: share of coordinates to clip, in [0, 1].
    threshold_scale: multiplies the threshold (official `threshold_scale`). Default 1.0.

  Returns:
    An `optax.GradientTransformation`.

  References:
    Pan & Li, "Toward Understanding Why Adam Converges Faster Than SGD for Transformers", 2023.
    https://arxiv.org/abs/2306.00204 ; official code: https://github.com/panyan7/adam-vs-sgd

  Example:
    >>> import jax.numpy as jnp
    >>> tx = clip_coordinates_top_fraction(0.25)
    >>> u, _ = tx.update(jnp.array([1.0, -8.0, 2.0, 0.5]), tx.init(None))
    >>> u.tolist()
    [1.0, -2.0, 2.0, 0.5]
  """
  _check_fraction(fraction, threshold_scale)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    if not isinstance(fraction, jax.core.Tracer) and float(fraction) == 0.0:
      return updates, state
    return _clip_top_fraction(updates, fraction, threshold_scale), state

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adam_clipped_first_moment(
    fraction: float,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    threshold_scale: jax.typing.ArrayLike = 1.0,
) -> optax.GradientTransformation:
  """Adam whose first moment sees the coordinate-clipped gradient.

  m <- b1 m + (1 - b1) clip(g), v <- b2 v + (1 - b2) g^2 (unclipped), output
  m_hat / (sqrt(v_hat) + eps) with the bias corrections and eps placement of
  `optax.scale_by_adam`, built from the same optax.tree helpers. clip(g) is
  `clip_coordinates_top_fraction(fraction, threshold_scale)`; fraction = 0
  gives exactly `optax.scale_by_adam(b1, b2, eps)`.

  Args:
    fraction: share of coordinates clipped in the first-moment input.
    b1: first-moment decay. Default 0.9.
    b2: second-moment decay. Default 0.999.
    eps: added to sqrt(v_hat). Default 1e-8.
    threshold_scale: multiplies the clipping threshold. Default 1.0.

  Returns:
    An `optax.GradientTransformation`.

  References:
    Pan & Li, "Toward Understanding Why Adam Converges Faster Than SGD for Transformers", 2023.
    https://arxiv.org/abs/2306.00204 ; official code: https://github.com/panyan7/adam-vs-sgd
  """
  _check_fraction(fraction, threshold_scale)
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  clip = clip_coordinates_top_fraction(fraction, threshold_scale)

  def init_fn(params):
    return ScaleByAdamClippedFirstMomentState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params),
        nu=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    del params
    clipped, _ = clip.update(updates, optax.EmptyState())
    mu = optax.tree.update_moment(clipped, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
    mu = optax.tree.cast_like(mu, state.mu)
    nu = optax.tree.cast_like(nu, state.nu)
    return updates, ScaleByAdamClippedFirstMomentState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
