"""M-FAC: the inverse of a sliding-window empirical Fisher, applied matrix-free.

The window holds the last m flattened gradients g_1..g_m (rows of G, m x d)
and the curvature model is the damped empirical Fisher

  F = lambda I + (1/m) G^T G.

By Woodbury, F^{-1} x = lambda^{-1} [x - G^T K^{-1} G x] with the m x m
matrix K = G G^T + m lambda I. The state keeps G as a ring buffer, the Gram
matrix G G^T (one row and column change per new gradient: O(dm)) and the
Cholesky factor of K (O(m^3) per new gradient, as the reference's
recomputation of its D and B), so one product costs O(dm + m^2).

The reference's recursion (D from an LU without pivoting of
lambda^{-1} G G^T + m I, B by row recursion, then forward substitution) is
Sherman-Morrison applied m times; that matrix being symmetric positive
definite, its pivot-free LU is a rescaled Cholesky factorisation, so both
compute the same K^{-1}. In float32 the Gram matrix of nearly dependent
gradients (more gradients than parameters, slowly turning full-batch
gradients) carries rounding errors far above m lambda = 1e-2 and the
factorisation breaks down (NaN; the reference's LU returns garbage). Then,
and only then, the step is retried with the damping raised to
lambda + eps32 * max_i |g_i|^2 (Cholesky's backward-error scale), times
10 per further failure (at most 6 tries); `state.damping` records the
value used.

For the optimizer's own gradient g_j (always in the window) the push-through
identity F^{-1} G^T = G^T (lambda I + G G^T / m)^{-1} gives

  F^{-1} g_j = m G^T K^{-1} e_j,

which avoids the cancellation of two O(|g| / lambda) terms in the Woodbury
form (lambda is 1e-5 by default, so that cancellation costs float32 most of
its digits).

References:
  E. Frantar, E. Kurtic, D. Alistarh, M-FAC: Efficient Matrix-Free
  Approximations of Second-Order Information, NeurIPS 2021 (official code:
  IST-DASLab/M-FAC, optim.py, `HInvFastUpMulti`, `MFAC`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register

_HIGHEST = jax.lax.Precision.HIGHEST  # the reference disables TF32: K is badly scaled.


class PreconditionMfacState(NamedTuple):
  """State of `precondition_mfac` (d = number of parameters, m = num_grads)."""

  count: jax.Array  # int32: gradients seen; the next ring-buffer slot is count % m.
  grads: jax.Array  # (m, d) float32 window G (zero rows until m gradients arrived).
  gram: jax.Array  # (m, m) float32 G G^T.
  factor: jax.Array  # (m, m) float32 lower Cholesky factor of K = G G^T + m damping I.
  damping: jax.Array  # float32 scalar: the lambda in `factor` (raised only on breakdown).


def _as_flat_f32(tree: optax.Updates) -> jax.Array:
  return ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree))[0]


def _factorize(gram: jax.Array, damping: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Cholesky factor of gram + m lambda' I, lambda'), lambda' = damping unless it breaks."""
  m = gram.shape[0]
  eye = jnp.eye(m, dtype=jnp.float32)
  floor = jnp.finfo(jnp.float32).eps * jnp.max(jnp.diagonal(gram))

  def retry(carry):
    tries, _, lam = carry
    lam = jnp.where(tries == 0, damping, jnp.where(tries == 1, damping + floor, 10.0 * lam))
    return tries + 1, jnp.linalg.cholesky(gram + m * lam * eye), lam

  def broken(carry):
    tries, factor, _ = carry
    return (tries == 0) | ((tries < 6) & ~jnp.all(jnp.isfinite(factor)))

  _, factor, lam = jax.lax.while_loop(broken, retry, (0, eye, damping))
  return factor, lam


def mfac_inverse_product(state: PreconditionMfacState, vector: optax.Updates) -> optax.Updates:
  """F^{-1} x for the window in `state`, O(dm + m^2); x is a tree like the params.

  Woodbury form lambda^{-1} [x - G^T K^{-1} G x] (module docstring). Along
  the window's span its two O(|x| / lambda) terms cancel, which costs float32
  digits when lambda is tiny; the optimizer's own step uses the push-through
  form instead.

  Args:
    state: a `PreconditionMfacState` holding the gradient window.
    vector: the tree x to multiply, shaped like the params.

  Returns:
    F^{-1} x, a tree like `vector`.

  References:
    Frantar, Kurtic & Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order
    Information", NeurIPS 2021. https://arxiv.org/abs/2107.03356 ; official code:
    https://github.com/IST-DASLab/M-FAC
  """
  flat, unravel = ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), vector))
  gx = jnp.matmul(state.grads, flat, precision=_HIGHEST)
  coef = jax.scipy.linalg.cho_solve((state.factor, True), gx)
  out = (flat - jnp.matmul(coef, state.grads, precision=_HIGHEST)) / state.damping
  return jax.tree.map(lambda o, x: o.astype(jnp.asarray(x).dtype), unravel(out), vector)


def precondition_mfac(
    num_grads: int = 1024, damping: jax.typing.ArrayLike = 1e-5
) -> optax.GradientTransformation:
  """Multiplies the update by the inverse M-FAC empirical Fisher of its window.

  The incoming update g (flattened over the whole tree) replaces the oldest
  row of the window, then u = F^{-1} g with F = damping I + (1/m) G^T G
  (the reference's scaling: 1/m even while fewer than m gradients have
  arrived, the missing rows being zero). Computed in float32; the output
  keeps each leaf's dtype. Memory: m * d floats for G plus 2 m^2 for the
  Gram matrix and the factor (`gradkit.state_nbytes` counts them); m = 1024
  means 1024 copies of the model.

  Args:
    num_grads: m, the window length (static int >= 1; reference 1024). Default 1024.
    damping: lambda > 0 (reference `damp` = 1e-5). Default 1e-5.

  Returns:
    An `optax.GradientTransformation` with a `PreconditionMfacState`.
    `mfac_inverse_product(state, x)` applies the same F^{-1} to any x.

  References:
    Frantar, Kurtic & Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order
    Information", NeurIPS 2021. https://arxiv.org/abs/2107.03356 ; official code:
    https://github.com/IST-DASLab/M-FAC

  Example:
    >>> import jax.numpy as jnp
    >>> tx = precondition_mfac(num_grads=1, damping=1.0)
    >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    >>> [round(x, 4) for x in u.tolist()]  # g / (damping + |g|^2)
    [0.1154, 0.1538]
  """
  if not isinstance(num_grads, int) or isinstance(num_grads, bool) or num_grads < 1:
    raise ValueError(f"num_grads must be a static int >= 1, got {num_grads!r}")
  _checks.check_positive("damping", damping)
  m = num_grads

  def init_fn(params):
    d = _as_flat_f32(params).size
    lam = jnp.asarray(damping, jnp.float32)
    return PreconditionMfacState(
        count=jnp.zeros([], jnp.int32),
        grads=jnp.zeros((m, d), jnp.float32),
        gram=jnp.zeros((m, m), jnp.float32),
        factor=jnp.sqrt(m * lam) * jnp.eye(m, dtype=jnp.float32),
        damping=lam,
    )

  def update_fn(updates, state, params=None):
    del params
    g = _as_flat_f32(updates)
    slot = state.count % m
    grads = state.grads.at[slot].set(g)
    row = jnp.matmul(grads, g, precision=_HIGHEST)
    gram = state.gram.at[slot].set(row).at[:, slot].set(row)
    factor, lam = _factorize(gram, jnp.asarray(damping, jnp.float32))
    w = jax.scipy.linalg.cho_solve((factor, True), jax.nn.one_hot(slot, m, dtype=jnp.float32))
    flat = m * jnp.matmul(w, grads, precision=_HIGHEST)
    _, unravel = ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), updates))
    out = jax.tree.map(lambda o, x: o.astype(x.dtype), unravel(flat), updates)
    return out, PreconditionMfacState(optax.safe_increment(state.count), grads, gram, factor, lam)

  return optax.GradientTransformation(init_fn, update_fn)


@register("mfac")
def mfac(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    num_grads: int | None = None,
    damping: jax.typing.ArrayLike = 1e-5,
    momentum: jax.typing.ArrayLike = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """M-FAC optimizer (Frantar et al., NeurIPS 2021): p <- p - lr * v.

  With g' = g + wd * p (coupled L2 decay, added *before* the gradient enters
  the window, as the reference `MFAC.step`), s = F^{-1} g' from
  `precondition_mfac` and v = momentum * v + (1 - momentum) * s
  (`optax.ema` without debiasing; momentum 0 gives v = s). Defaults are the
  reference's optimization runs (main_optim.py / class `MFAC`): lr 1e-3,
  m = 1024, damping 1e-5, momentum 0, weight decay 0 (its README example
  uses m = 512, weight decay 3e-3).

  Args:
    learning_rate: float or optax schedule. Default 1e-3.
    num_grads: m, the gradient window (static int; None means 1024, so that
      `optax.inject_hyperparams` leaves it alone — pass explicit values there
      through `static_args`). Default None.
    damping: lambda of the empirical Fisher. Default 1e-5.
    momentum: in [0, 1). Default 0.0.
    weight_decay: coupled L2 coefficient (float or schedule). Default 0.0.
    mask: which leaves are decayed (tree or callable); None decays all. Default None (every leaf).

  References:
    Frantar, Kurtic & Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order
    Information", NeurIPS 2021. https://arxiv.org/abs/2107.03356 ; official code:
    https://github.com/IST-DASLab/M-FAC
  """
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_non_negative("weight_decay", weight_decay)
  return recipe(
      optax.add_decayed_weights(weight_decay, mask),
      precondition_mfac(1024 if num_grads is None else num_grads, damping),
      optax.ema(momentum, debias=False),
      learning_rate=learning_rate,
  )
