"""Per-block learning-rate scales fixed from the first gradient (SGD-SaI).

Xu, Xiang, Cai, Wen, "No More Adam: Learning Rate Scaling at Initialization
is All You Need" (arXiv 2412.11768); official code AnonymousAlethiometer/SGD_SaI.
Two scores: the g-SNR ||g|| / (std(g) + eps) of the released v1.0.3 code,
and sqrt(numel), the official code's replacement for it from v1.1.0 on.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks

Score = Literal["gsnr", "sqrt_size"]
_SCORES = ("gsnr", "sqrt_size")


class ScaleByGsnrAtInitState(NamedTuple):
  """State of `scale_by_gsnr_at_init`."""

  count: jax.Array  # int32 scalar: number of updates seen.
  gsnr: optax.Updates  # scalar per leaf (float32 or wider), fixed after the first update.


def _score_dtype(x: jax.Array) -> jnp.dtype:
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _block_gsnr(g: jax.Array, eps: jax.typing.ArrayLike) -> jax.Array:
  dtype = _score_dtype(g)
  g = g.astype(dtype)
  if g.size < 2:
    # The unbiased std of one element is undefined (torch gives NaN -> 0).
    return jnp.ones([], dtype)
  norm = jnp.sqrt(jnp.sum(g * g))
  sigma = jnp.std(g, ddof=1)
  # sigma == 0 (constant or all-zero gradient) would give |g| / eps, up to
  # 1e8 x the gradient, or freeze an all-zero block forever: use scale 1.
  # eps takes g's dtype: an injected eps is float64 under x64, and lax.cond's
  # branches must agree with the stored scores' dtype.
  score = norm / (sigma + jnp.asarray(eps, dtype))
  return jnp.where(sigma > 0, score, jnp.ones([], dtype))


def _block_score(g: jax.Array, eps: jax.typing.ArrayLike, score: Score) -> jax.Array:
  if score == "sqrt_size":
    return jnp.sqrt(jnp.asarray(g.size, _score_dtype(g)))
  return _block_gsnr(g, eps)


def scale_by_gsnr_at_init(
    eps: jax.typing.ArrayLike = 1e-8, normalize_by_max: bool = False, score: Score = "gsnr"
) -> optax.GradientTransformation:
  """Scales each leaf by its gradient signal-to-noise ratio at the first step.

  On the first update, for every leaf (block) g of the incoming updates:
  g-SNR = ||g||_2 / (std(g, ddof=1) + eps), computed and stored as a scalar
  in the leaf's dtype (float32 at least, so float32 for bf16 leaves) and
  never updated. Every update (the first included) is multiplied leafwise by
  the stored value. A block whose std is zero or undefined (one element, a
  constant or an all-zero gradient) gets g-SNR = 1 instead of the official
  code's ||g|| / eps (see BUILD_NOTES.md). Non-finite first gradients are
  best skipped with `optax.apply_if_finite`: the scores are then taken from
  the first finite gradient.

  With `score="sqrt_size"` the score of a block of n elements is sqrt(n),
  the official code's v1.1.0 rule ("sqrt(numel) as an approximation of
  g-SNR"; ||g|| / std(g) ~ sqrt(n) for a zero-mean block): it no longer
  reads the gradient's values, and `eps` is unused.

  Args:
    eps: added to the standard deviation. Default 1e-8.
    normalize_by_max: divide every score by the largest over all leaves, as
      in the paper's Algorithm 1 (the released v1.0.3 code does not). Default False.
    score: "gsnr" (||g|| / (std + eps), v1.0.3) or "sqrt_size" (sqrt(n),
      v1.1.0). Static. Default "gsnr".

  Returns:
    An `optax.GradientTransformation`.

  References:
    Xu, Xiang, Cai & Wen, "No More Adam: Learning Rate Scaling at Initialization is All You Need",
    2024. https://arxiv.org/abs/2412.11768 ; official code:
    https://github.com/AnonymousAlethiometer/SGD_SaI

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_gsnr_at_init()
    >>> g = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
    >>> u, state = tx.update(g, tx.init(g))
    >>> round(float(state.gsnr["w"]), 4)
    4.2426
  """
  _checks.check_non_negative("eps", eps)
  if score not in _SCORES:
    raise ValueError(f"score must be one of {_SCORES}, got {score!r}")

  def init_fn(params):
    gsnr = jax.tree.map(lambda p: jnp.ones([], _score_dtype(p)), params)
    return ScaleByGsnrAtInitState(count=jnp.zeros([], jnp.int32), gsnr=gsnr)

  def first_scores(updates):
    gsnr = jax.tree.map(lambda g: _block_score(g, eps, score), updates)
    if normalize_by_max and jax.tree.leaves(gsnr):
      top = jnp.max(jnp.stack(jax.tree.leaves(gsnr)))
      gsnr = jax.tree.map(lambda s: (s / top).astype(s.dtype), gsnr)
    return gsnr

  def update_fn(updates, state, params=None):
    del params
    # lax.cond runs the reductions only on the first step.
    gsnr = jax.lax.cond(
        state.count == 0,
        lambda u: optax.tree.cast_like(first_scores(u), state.gsnr),
        lambda _: state.gsnr, updates)
    updates = jax.tree.map(lambda g, s: g * s.astype(g.dtype), updates, gsnr)
    count = optax.safe_increment(state.count)
    return updates, ScaleByGsnrAtInitState(count=count, gsnr=gsnr)

  return optax.GradientTransformation(init_fn, update_fn)
