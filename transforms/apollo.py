"""APOLLO's gradient scaling from low-rank moments, and the norm-growth limiter.

APOLLO projects each matrix gradient G (m, n) with a random Gaussian
projector to R (rank r, side rule "std": channels along the larger side),
runs Adam's moments on R, and measures how much Adam stretches R, channel by
channel (or once per tensor for APOLLO-Mini). The *raw* gradient is then
multiplied by those ratios, so the update stays full rank. `scale_by_apollo`
is the composition

  scale_by_apollo_ratios -> limit_norm_growth -> x sqrt(scale) -> x sqrt(1-b2^t)/(1-b1^t)

(with `scale_front` the sqrt(scale) factor comes before the limiter). The
limiter's reference is by default a decaying maximum of past norms, which
a zero or tiny gradient cannot lock; `limiter="official"` is the official
rule (see `limit_norm_growth`). The projector and its refresh schedule are
`gradkit.transforms.low_rank`'s; the rank, the refresh period and the scale
may be per-leaf rules fn(path, shape) of the leaf's key path and (m, n)
matrix view, as the official code's parameter groups set them per layer.

References:
  H. Zhu et al., APOLLO: SGD-like Memory, AdamW-level Performance, MLSys
  2025, https://arxiv.org/abs/2412.05270 (official code zhuhanqing/APOLLO,
  apollo_torch/apollo.py). X. Chen et al., Fira: Can We Achieve Full-rank
  Training of LLMs Under Low-rank Constraint?, arXiv 2410.01623 (limiter).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.transforms.low_rank import (
    LowRankProjectorState,
    Period,
    Rank,
    Scale,
    check_projection_options,
    compute_dtype,
    init_projectors,
    leaf_value,
    project_updates,
    subspace_zeros,
)
from gradkit.transforms.matrix_view import matrix_shape

Granularity = Literal["channel", "tensor"]
_GRANULARITIES = ("channel", "tensor")
Limiter = Literal["decaying_max", "official"]
_LIMITERS = ("decaying_max", "official")
_PROJECTORS = ("gaussian", "svd")
# APOLLO's channels run along the larger side of the (m, n) view.
_SIDE = "std"
# Guards of the ratio and of the limiter: hard-coded in the official code and
# in Fira, independent of Adam's eps.
_NORM_GUARD = 1e-8


class ScaleByApolloRatiosState(NamedTuple):
  """Projectors, and Adam's moments of the projected gradients (float32 or wider)."""

  projection: LowRankProjectorState
  mu: optax.Updates  # per leaf: (m, r) if m >= n else (r, n).
  nu: optax.Updates  # same shapes as mu.


class LimitNormGrowthState(NamedTuple):
  """Step count and, per leaf, the reference norm a of `limit_norm_growth`."""

  count: jax.Array  # int32 scalar: steps taken.
  norm: optax.Updates  # per leaf: scalar, float32 or the leaf's wider dtype.


def _ratio(n: jax.Array, r: jax.Array, side: str, granularity: Granularity) -> jax.Array:
  """||N|| / (||R|| + 1e-8) per channel (broadcastable against G) or per tensor."""
  if granularity == "tensor":
    return jnp.linalg.norm(n) / (jnp.linalg.norm(r) + _NORM_GUARD)
  # "right" projects the columns away (R is (m, r)): one ratio per row.
  axis = 1 if side == "right" else 0
  return jnp.linalg.norm(n, axis=axis, keepdims=True) / (
      jnp.linalg.norm(r, axis=axis, keepdims=True) + _NORM_GUARD)


def scale_by_apollo_ratios(
    rank: Rank,
    update_every: Period = 200,
    *,
    granularity: Granularity = "channel",
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-6,
    seed: int = 0,
    projector: Literal["gaussian", "svd"] = "gaussian",
) -> optax.GradientTransformation:
  """Multiplies each raw matrix gradient by APOLLO's low-rank Adam ratios.

  With R = project(G) (G P^T if m >= n, else P^T G), M and V Adam's moments
  of R (kept across projector refreshes, no bias correction) and
  N = M / (sqrt(V) + eps), the output is s * G with s = ||N_c|| / (||R_c|| + 1e-8)
  per channel c (rows of a tall G, columns of a wide one) or per tensor.
  Steps 1-5 of the APOLLO update; the step-size bias correction is left to
  the caller (`scale_by_apollo`).

  Args:
    rank: projection rank r (an int, or a per-leaf rule fn(path, shape) or
      fn(shape) of each leaf's key path and (m, n) view), clamped to
      [1, min(m, n)] per leaf. Static.
    update_every: the projector is redrawn every `update_every` steps (T; an
      int or a per-leaf rule). Default 200.
    granularity: "channel" (APOLLO) or "tensor" (APOLLO-Mini). Static. Default "channel".
    b1: decay rate of the low-rank first moment, in [0, 1). Default 0.9.
    b2: decay rate of the low-rank second moment, in [0, 1). Default 0.999.
    eps: added to the uncorrected sqrt(V). Default 1e-6.
    seed: seed of the Gaussian projectors (leaf i, refresh k draws from
      fold_in(fold_in(key(seed), i), k)). Default 0.
    projector: "gaussian" (N(0, 1/r) entries, APOLLO) or "svd" (GaLore's
      top-r singular vectors, the official `proj="svd"`). Default "gaussian".

  Returns:
    An `optax.GradientTransformation` with a `ScaleByApolloRatiosState`,
    acting on matrix leaves only (leaves with more than two axes use the
    `matrix_view` rule); vectors and scalars raise a ValueError.

  References:
    Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", MLSys 2025.
    https://arxiv.org/abs/2412.05270 ; official code: https://github.com/zhuhanqing/APOLLO
  """
  if projector not in _PROJECTORS:
    raise ValueError(f"projector must be one of {_PROJECTORS}, got {projector!r}")
  check_projection_options(rank, update_every, _SIDE, projector)
  if granularity not in _GRANULARITIES:
    raise ValueError(f"granularity must be one of {_GRANULARITIES}, got {granularity!r}")
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)

  def init_fn(params):
    projection = init_projectors(params, rank, _SIDE, seed, "scale_by_apollo", update_every)
    # Two allocations: one buffer for both would make donating the state fail.
    return ScaleByApolloRatiosState(projection, subspace_zeros(params, rank, _SIDE),
                                    subspace_zeros(params, rank, _SIDE))

  def update_fn(updates, state, params=None):
    del params
    step = project_updates(state.projection, updates, rank, update_every, _SIDE, projector)
    grads, projectors, sides, low = step.grads, step.projectors, step.sides, step.low
    mu = optax.tree.update_moment(low, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(low, state.nu, b2, 2)

    def scaled(u, g, r, m, v, side):
      s = _ratio(m / (jnp.sqrt(v) + eps), r, side, granularity)
      return (s * g).reshape(u.shape).astype(u.dtype)

    new_updates = jax.tree.map(scaled, updates, grads, low, mu, nu, sides)
    projection = state.projection._replace(
        count=optax.safe_increment(state.projection.count), projectors=projectors)
    return new_updates, ScaleByApolloRatiosState(projection, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


def _check_limiter(limiter) -> None:
  if limiter not in _LIMITERS:
    raise ValueError(f"limiter must be one of {_LIMITERS}, got {limiter!r}")


def _safe_norm(u: jax.Array, dtype) -> jax.Array:
  """||u||_F in `dtype`, computed on u / max|u| so no square overflows or underflows."""
  u = u.astype(dtype)
  peak = jnp.max(jnp.abs(u), initial=0.0)  # 0 for a zero-size leaf
  scale = jnp.where(peak > 0, peak, jnp.ones_like(peak))
  return scale * jnp.linalg.norm(u / scale)


def limit_norm_growth(
    gamma: jax.typing.ArrayLike = 1.01, *, limiter: Limiter = "decaying_max"
) -> optax.GradientTransformation:
  """Caps the growth of each leaf's update norm at a factor gamma per step.

  Fira's norm-growth limiter, as used by APOLLO, divides each update u by
  l = max(||u|| / (a + 1e-8), gamma) / gamma, so ||u|| <= gamma a (up to
  the 1e-8); smaller norms pass unchanged. The reference a depends on
  `limiter`:

  - "decaying_max" (default): a_t = max(||u_t|| / l_t, a_{t-1} / gamma), a
    running maximum of the limited norms that forgets by the factor gamma
    per step; a reference that is 0 (nothing but zero updates so far) or
    not finite means no limit, and the next reference is that step's norm.
    The reference therefore moves by at most a factor gamma per step either
    way: a zero or x1e-30 step lowers it by gamma only, so the step after it
    may be as large as the last ordinary one. While norms shrink by less
    than gamma per step (a_t is then the last limited norm) this is the
    official rule exactly.
  - "official": a_t = ||u_t|| / l_t (the first update passes and sets a),
    the rule of the APOLLO and Fira codes. One zero or tiny update locks
    it: after a zero gradient the next update is capped at gamma * 1e-8,
    and the cap regrows by gamma per step (about 1850 steps at 1.01 to
    climb back from 1e-8 to 1).

  Norms are Frobenius norms of whole leaves, in float32 or the leaf's wider
  dtype, computed on u / max|u| so that they do not overflow for huge
  (x1e30) or underflow for tiny updates in float32.

  Args:
    gamma: the largest allowed ratio of consecutive norms (> 0; 1.01 in
      APOLLO and Fira). Default 1.01.
    limiter: "decaying_max" or "official" (static), see above. Default
      "decaying_max".

  Returns:
    An `optax.GradientTransformation` with a `LimitNormGrowthState`.

  References:
    Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?", 2024.
    https://arxiv.org/abs/2410.01623 ; official code: https://github.com/xichen-fy/Fira

    Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", MLSys 2025.
    https://arxiv.org/abs/2412.05270 ; official code: https://github.com/zhuhanqing/APOLLO

  Example:
    >>> import jax.numpy as jnp
    >>> tx = limit_norm_growth(1.01)
    >>> state = tx.init(jnp.zeros(2))
    >>> _, state = tx.update(jnp.array([3.0, 4.0]), state)
    >>> u, _ = tx.update(jnp.array([30.0, 40.0]), state)
    >>> round(float(jnp.linalg.norm(u)), 4)
    5.05
  """
  _checks.check_positive("gamma", gamma)
  _check_limiter(limiter)

  def init_fn(params):
    return LimitNormGrowthState(
        count=jnp.zeros([], jnp.int32),
        norm=jax.tree.map(lambda p: jnp.zeros([], compute_dtype(p)), params))

  def usable(a):
    return jnp.isfinite(a) & (a > 0)

  def factor(n, a, count):
    """The divisor l of one leaf, cast to the reference's dtype (an injected gamma is
    float64 under x64)."""
    free = count == 0 if limiter == "official" else ~usable(a)
    return jnp.where(free, 1.0, jnp.maximum(n / (a + _NORM_GUARD), gamma) / gamma).astype(a.dtype)

  def reference(n, a, lim):
    limited = n / lim
    if limiter == "official":
      return limited
    return jnp.where(usable(a), jnp.maximum(limited, a / gamma), limited).astype(a.dtype)

  def update_fn(updates, state, params=None):
    del params
    norms = jax.tree.map(lambda u, a: _safe_norm(u, a.dtype), updates, state.norm)
    limits = jax.tree.map(lambda n, a: factor(n, a, state.count), norms, state.norm)
    new_updates = jax.tree.map(lambda u, lim: (u / lim).astype(u.dtype), updates, limits)
    new_norms = jax.tree.map(reference, norms, state.norm, limits)
    return new_updates, LimitNormGrowthState(optax.safe_increment(state.count), new_norms)

  return optax.GradientTransformation(init_fn, update_fn)


def _scale_by_sqrt(scale: Scale) -> optax.GradientTransformation:
  """x sqrt(scale): one factor for every leaf, or per leaf from a rule fn(path, shape)."""
  if not callable(scale):
    return optax.scale(jnp.sqrt(scale))

  def factors(tree):
    def one(path, x):
      value = leaf_value(scale, path, matrix_shape(x.shape))
      _checks.check_positive(f"scale of leaf {jax.tree_util.keystr(path) or '<root>'}", value)
      return math.sqrt(value)

    return jax.tree_util.tree_map_with_path(one, tree)

  def init_fn(params):
    factors(params)  # a rule's values are checked when the state is built
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: (u * f).astype(u.dtype), updates, factors(updates)), state

  return optax.GradientTransformation(init_fn, update_fn)


def _adam_step_size(
    b1: jax.typing.ArrayLike, b2: jax.typing.ArrayLike
) -> optax.GradientTransformation:
  """Multiplies by sqrt(1 - b2^t) / (1 - b1^t), t = 1, 2, ... (optax.scale_by_schedule)."""

  def factor(count):
    t = count + 1
    return jnp.sqrt(1 - b2**t) / (1 - b1**t)

  return optax.scale_by_schedule(factor)


def scale_by_apollo(
    rank: Rank,
    update_every: Period = 200,
    *,
    granularity: Granularity = "channel",
    scale: Scale = 1.0,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-6,
    seed: int = 0,
    projector: Literal["gaussian", "svd"] = "gaussian",
    limit_growth: jax.typing.ArrayLike | None = 1.01,
    scale_front: bool = False,
    limiter: Limiter = "decaying_max",
) -> optax.GradientTransformation:
  """APOLLO's direction (steps 1-8 of the paper's update, before -lr).

  u_t = sqrt(1 - b2^t) / (1 - b1^t) * sqrt(scale) * limit(s_t * G_t), a chain
  of `scale_by_apollo_ratios`, `limit_norm_growth(limit_growth)` (left out
  when `limit_growth` is None, the official `disable_nl`), `optax.scale`
  by sqrt(scale) and the step-size bias correction. With `scale_front` the
  sqrt(scale) factor precedes the limiter, as the official flag does; the
  limiter compares norms that carry the same factor, so the two orders
  differ only through its 1e-8 guard.

  Args:
    rank: projection rank (1 for APOLLO-Mini), clamped per leaf; an int or a
      per-leaf rule fn(path, shape). Static.
    update_every: projector refresh period T (an int or a per-leaf rule). Default 200.
    granularity: "channel" (APOLLO) or "tensor" (APOLLO-Mini). Static. Default "channel".
    scale: the heuristic constant; the update is multiplied by sqrt(scale)
      (1 for APOLLO, 128 for APOLLO-Mini in the paper); a number or a
      per-leaf rule fn(path, shape) (static). Default 1.0.
    b1: decay rate of the low-rank first moment. Default 0.9.
    b2: decay rate of the low-rank second moment. Default 0.999.
    eps: added to the uncorrected sqrt(V). Default 1e-6.
    seed: seed of the random projectors. Default 0.
    projector: "gaussian" or "svd". Default "gaussian".
    limit_growth: the limiter's gamma (1.01), or None to disable it. Static
      whether None. Default 1.01.
    scale_front: apply sqrt(scale) before the limiter. Static. Default False.
    limiter: the limiter's reference rule (static, see `limit_norm_growth`):
      "decaying_max", which a zero or tiny gradient cannot lock, or
      "official", the APOLLO/Fira code's, which it can. Default "decaying_max".

  Returns:
    An `optax.GradientTransformation` (an `optax.chain`; matrix leaves only).

  References:
    H. Zhu et al., APOLLO: SGD-like Memory, AdamW-level Performance, MLSys
    2025, https://arxiv.org/abs/2412.05270.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_apollo(rank=1, granularity="tensor", scale=128.0)
    >>> u, _ = tx.update(jnp.ones((4, 3)), tx.init(jnp.zeros((4, 3))))
    >>> u.shape
    (4, 3)
  """
  _checks.check_positive("scale", scale)
  _check_limiter(limiter)  # checked even when limit_growth is None
  ratios = scale_by_apollo_ratios(
      rank, update_every, granularity=granularity, b1=b1, b2=b2, eps=eps, seed=seed,
      projector=projector)
  heuristic = _scale_by_sqrt(scale)
  limiters = () if limit_growth is None else (limit_norm_growth(limit_growth, limiter=limiter),)
  scaled = (heuristic, *limiters) if scale_front else (*limiters, heuristic)
  return optax.chain(ratios, *scaled, _adam_step_size(b1, b2))
