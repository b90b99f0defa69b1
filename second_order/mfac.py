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
lambda + eps * max_i |g_i|^2 (Cholesky's backward-error scale, eps of the
window's dtype), times 10 per further failure (at most 6 tries);
`state.damping` records the value used.

Products are not formed in the Woodbury form itself. Along the window's
span F^{-1} shrinks by ~ m / |g|^2, across it F^{-1} = 1 / lambda (1e5 at
the default damping), and the Woodbury form gets the small in-span part as
the difference of two O(|x| / lambda) terms, so that part carries an error
~ eps |x| / lambda: in float32 (m = 16, d = 200) 17% of it for a random
window and 67% for a nearly collinear one at lambda = 1e-5, 150-700 times it
at 1e-8. The reference's recursion ends in the same difference
(`lambd * x - G^T (...)`, also for its own step). Instead x is split as
x = G^T a + r with a = K^{-1} G x, twice (the second split takes the in-span
part of the first's rounding): the push-through identity
F^{-1} G^T = G^T (lambda I + G G^T / m)^{-1} gives F^{-1} G^T a =
m G^T K^{-1} a with no cancellation, and only the rest r, whose in-span part
is then ~ eps^2 |x|, goes through Woodbury. The in-span part of F^{-1} x is
then as accurate as the m x m problem allows, eps cond(K) with
cond(K) = (m lambda + s_max) / (m lambda + s_min) (s: eigenvalues of
G G^T), up to the rounding of the result itself; the out-of-span part keeps
an error ~ eps |x| / lambda, which is what rounding x to the window's dtype
does to any solve. The optimizer's own gradient g_j (always in the window)
is the case a = e_j, r = 0: F^{-1} g_j = m G^T K^{-1} e_j, without even that.

Blocks (`block_size`; the reference blocks only its pruner's static
algorithm, prun.py `HInvFastBlock`, default 128): the flattened vector is
cut into contiguous blocks of b entries (the last one shorter) and F is block
diagonal, each block k with its own F_k = lambda_k I + (1/m) G_k^T G_k over
the same m gradients restricted to the block, its own Gram matrix, factor and
(raised-on-breakdown) damping.
A new gradient then costs O(dm + (d / b) m^3) and the state holds
(d / b) * 2 m^2 floats besides the window. Blocks shorter than m have Gram
matrices of rank at most b, whose rounding the factorisation meets more
often (the damping retries above, per block).

The reference optimizer's `sparse=True` (weights that are zero at
construction are dropped from the window and stay zero) is not an option
here: zeroing those coordinates of the gradient before this transform gives
the same step (F splits, the dropped coordinates see lambda I and a zero
gradient), at the memory of the full window.

References:
  E. Frantar, E. Kurtic, D. Alistarh, M-FAC: Efficient Matrix-Free
  Approximations of Second-Order Information, NeurIPS 2021 (official code:
  IST-DASLab/M-FAC, optim.py, `HInvFastUpMulti`, `MFAC`; prun.py,
  `HInvFastBlock`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, checked_rate, recipe
from gradkit.registry import register

_HIGHEST = jax.lax.Precision.HIGHEST  # the reference disables TF32: K is badly scaled.


class PreconditionMfacState(NamedTuple):
  """State of `precondition_mfac` (d parameters, m = num_grads, n blocks of b entries).

  Without blocks the window is (m, d), the Gram matrix and factor (m, m) and
  the damping a scalar; with `block_size` they gain a leading block axis:
  (n, m, b) (the last block zero-padded to b), (n, m, m) and (n,). Arrays are
  in the params' dtype, float32 at least.
  """

  count: jax.Array  # int32: gradients seen; the next ring-buffer slot is count % m.
  grads: jax.Array  # the window G (zero rows until m gradients arrived).
  gram: jax.Array  # G_k G_k^T per block.
  factor: jax.Array  # lower Cholesky factor of K_k = G_k G_k^T + m damping_k I per block.
  damping: jax.Array  # the lambda_k in `factor` (raised only on breakdown).


def _compute_dtype(tree: optax.Params) -> jnp.dtype:
  return jnp.result_type(jnp.float32, *(jnp.result_type(x) for x in jax.tree.leaves(tree)))


def _flatten(tree: optax.Updates, dtype: jnp.dtype):
  return ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, dtype), tree))


def _layout(d: int, block_size: int | None) -> tuple[int, int]:
  """(n, b): n blocks of b entries cover the d-vector, the last one zero-padded."""
  b = d if block_size is None or block_size >= d else block_size
  return (1 if b == 0 else -(-d // b)), b


def _blocks_of(state: PreconditionMfacState) -> tuple[jax.Array, ...]:
  """The state's arrays with a leading block axis: (n, m, b), (n, m, m), (n, m, m), (n,)."""
  m = state.gram.shape[-1]
  n = state.damping.size
  return (state.grads.reshape(n, m, -1), state.gram.reshape(n, m, m),
          state.factor.reshape(n, m, m), state.damping.reshape(n))


def _split(flat: jax.Array, n: int, b: int) -> jax.Array:
  return jnp.pad(flat, (0, n * b - flat.size)).reshape(n, b)


def _window_times(grads: jax.Array, x: jax.Array) -> jax.Array:
  """G_k x_k per block: (n, m, b), (n, b) -> (n, m)."""
  return jnp.einsum("nib,nb->ni", grads, x, precision=_HIGHEST)


def _times_window(c: jax.Array, grads: jax.Array) -> jax.Array:
  """G_k^T c_k per block: (n, m), (n, m, b) -> (n, b)."""
  return jnp.einsum("ni,nib->nb", c, grads, precision=_HIGHEST)


def _solve(factor: jax.Array, rhs: jax.Array) -> jax.Array:
  """K_k^{-1} rhs_k from the Cholesky factors, one block after the other.

  Not vmapped: XLA:CPU (jaxlib 0.10) splits a batched LAPACK call over its
  thread pool and waits inside a pool thread, so two such calls in flight on
  a 2-core machine deadlock (measured: the blocked step hung after 1 step).
  """
  return jax.lax.map(lambda fr: jax.scipy.linalg.cho_solve((fr[0], True), fr[1]), (factor, rhs))


def _factorize(gram: jax.Array, damping: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Cholesky factor of gram + m lambda' I, lambda'), lambda' = damping unless it breaks."""
  m = gram.shape[0]
  eye = jnp.eye(m, dtype=gram.dtype)
  floor = jnp.finfo(gram.dtype).eps * jnp.max(jnp.diagonal(gram))

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

  Computed blockwise (one block without `block_size`) in the window's dtype
  as F^{-1} x = m G^T K^{-1} a + lambda^{-1} [r - G^T K^{-1} G r], where
  x = G^T a + r comes from two splits a_i = K^{-1} G r_{i-1} (module
  docstring): six products with the window instead of Woodbury's two, and no
  cancellation of O(|x| / lambda) terms along the window's span. Along the
  span the result is as accurate as that m x m problem allows (eps times
  cond(K) = (m lambda + s_max) / (m lambda + s_min), s the eigenvalues of
  G G^T); across it the rounding of x itself (eps |x| / lambda) remains, as
  in any solve in that precision.

  Args:
    state: a `PreconditionMfacState` holding the gradient window.
    vector: the tree x to multiply, shaped like the params.

  Returns:
    F^{-1} x, a tree like `vector` (each leaf in its own dtype).

  References:
    Frantar, Kurtic & Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order
    Information", NeurIPS 2021. https://arxiv.org/abs/2107.03356 ; official code:
    https://github.com/IST-DASLab/M-FAC
  """
  grads, _, factor, damping = _blocks_of(state)
  n, m, b = grads.shape
  flat, unravel = _flatten(vector, grads.dtype)
  x = _split(flat, n, b)
  lam = damping[:, None]
  span, rest = jnp.zeros((n, m), grads.dtype), x
  for _ in range(2):  # the second split takes the in-span part (~eps |x|) of the first's rounding.
    a = _solve(factor, _window_times(grads, rest))
    span, rest = span + a, rest - _times_window(a, grads)
  coef = m * _solve(factor, span) - _solve(factor, _window_times(grads, rest)) / lam
  out = (rest / lam + _times_window(coef, grads)).reshape(-1)[: flat.size]
  return jax.tree.map(lambda o, x: o.astype(jnp.asarray(x).dtype), unravel(out), vector)


def precondition_mfac(
    num_grads: int = 1024, damping: jax.typing.ArrayLike = 1e-5, block_size: int | None = None
) -> optax.GradientTransformation:
  """Multiplies the update by the inverse M-FAC empirical Fisher of its window.

  The incoming update g (flattened over the whole tree) replaces the oldest
  row of the window, then u = F^{-1} g with F = damping I + (1/m) G^T G
  (the reference's scaling: 1/m even while fewer than m gradients have
  arrived, the missing rows being zero). With `block_size` = b, F is block
  diagonal over contiguous blocks of b entries of the flattened vector (the
  last one shorter), one independent M-FAC inverse per block over the same
  window. Computed in the params' dtype, float32 at least; the output keeps
  each leaf's dtype. Memory: m * d floats for G (padded to a whole number of
  blocks) plus 2 m^2 per block for the Gram matrix and the factor
  (`gradkit.state_nbytes` counts them); m = 1024 means 1024 copies of the
  model.

  Args:
    num_grads: m, the window length (static int >= 1; reference 1024). Default 1024.
    damping: lambda > 0 (reference `damp` = 1e-5). Default 1e-5.
    block_size: b, the block length (static int >= 1), or None for one block
      over all parameters (the reference optimizer's dense M-FAC). The
      reference's blocked M-FAC (its pruner) uses 128. Default None.

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
  if block_size is not None and (
      not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1):
    raise ValueError(f"block_size must be None or a static int >= 1, got {block_size!r}")
  _checks.check_positive("damping", damping)
  m = num_grads

  def init_fn(params):
    dtype = _compute_dtype(params)
    d = _flatten(params, dtype)[0].size
    n, b = _layout(d, block_size)
    lead = () if block_size is None else (n,)
    lam = jnp.asarray(damping, dtype)
    return PreconditionMfacState(
        count=jnp.zeros([], jnp.int32),
        grads=jnp.zeros((m, d) if block_size is None else (n, m, b), dtype),
        gram=jnp.zeros(lead + (m, m), dtype),
        factor=jnp.broadcast_to(jnp.sqrt(m * lam) * jnp.eye(m, dtype=dtype), lead + (m, m)),
        damping=jnp.full(lead, lam),
    )

  def update_fn(updates, state, params=None):
    del params
    n, _, b = _blocks_of(state)[0].shape
    flat, unravel = _flatten(updates, state.grads.dtype)
    g = _split(flat, n, b)
    slot = state.count % m
    # Rows and columns are set in the stored layout ((m, d) or (n, m, b)): through
    # the (n, m, b) view XLA copies the whole window once more.
    window = state.grads.at[..., slot, :].set(g.reshape(state.grads.shape[:-2] + (b,)))
    grads = window.reshape(n, m, b)
    row = _window_times(grads, g).reshape(state.gram.shape[:-1])
    gram = state.gram.at[..., slot, :].set(row).at[..., :, slot].set(row)
    wanted = jnp.asarray(damping, grads.dtype)
    factor, lam = jax.lax.map(lambda gram_k: _factorize(gram_k, wanted), gram.reshape(n, m, m))
    e_slot = jnp.broadcast_to(jax.nn.one_hot(slot, m, dtype=grads.dtype), (n, m))
    out = (m * _times_window(_solve(factor, e_slot), grads)).reshape(-1)[: flat.size]
    out = jax.tree.map(lambda o, x: o.astype(x.dtype), unravel(out), updates)
    return out, PreconditionMfacState(
        optax.safe_increment(state.count), window, gram, factor.reshape(state.factor.shape),
        lam.reshape(state.damping.shape))

  return optax.GradientTransformation(init_fn, update_fn)


@register("mfac")
def mfac(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    num_grads: int | None = None,
    damping: jax.typing.ArrayLike = 1e-5,
    momentum: jax.typing.ArrayLike = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    block_size: int | None = None,
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
    block_size: None for one M-FAC inverse over all parameters (the reference
      optimizer), or a static int b for independent inverses on contiguous
      blocks of b entries of the flattened parameters (`precondition_mfac`;
      under `optax.inject_hyperparams` pass it through `static_args`).
      Default None.

  References:
    Frantar, Kurtic & Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order
    Information", NeurIPS 2021. https://arxiv.org/abs/2107.03356 ; official code:
    https://github.com/IST-DASLab/M-FAC
  """
  _checks.check_unit_interval("momentum", momentum)
  return recipe(
      optax.add_decayed_weights(checked_rate("weight_decay", weight_decay), mask),
      precondition_mfac(1024 if num_grads is None else num_grads, damping, block_size),
      optax.ema(momentum, debias=False),
      learning_rate=learning_rate,
  )
