"""Natural GaLore's inverse empirical Fisher over a short gradient history.

Per leaf, the last s flattened updates h_1..h_s (the current one included)
form Gh in R^{k x s} and the update g becomes

  g_nat = (lambda I + Gh Gh^T)^{-1} g,

the empirical Fisher's damped inverse (no 1/s normalisation, as in the
official code), at the cost of an s x s triangular solve. The history is a
zero-initialised FIFO ring buffer of fixed shape (s, k): a zero column adds
nothing to Gh Gh^T, so it is exactly the official growing list, and jit
sees one shape from the first step on.

Because the current g is itself a column of Gh (g = Gh e_j), the push-through
identity (lambda I + Gh Gh^T)^{-1} Gh = Gh (lambda I + Gh^T Gh)^{-1} gives

  g_nat = Gh w,   (lambda I + Gh^T Gh) w = e_j,

which equals the Woodbury form g / lambda - Gh S^{-1} Gh^T g / lambda^2
(S = I + Gh^T Gh / lambda) of the official code without its cancellation
of two O(|g| / lambda) terms (in float32 that costs about
eps * |g|^2 / lambda relative error: 1e-4 at |g| = 1, lambda = 1e-3).
The Cholesky factor R of lambda I + Gh^T Gh is taken from a thin QR of
[Gh; sqrt(lambda) I] instead of from the Gram matrix, which squares the
condition number and in float32 loses lambda entirely once
|g|^2 > lambda / eps (~1e4), where the factorisation fails (NaN).

References:
  A. Das, Natural GaLore: Accelerating GaLore for memory-efficient LLM
  Training and Fine-tuning, arXiv 2410.16029, 2024 (official code:
  selfsupervised-ai/Natural-GaLore, `galore_projector_tensor.py`,
  `_natural_gradient_transform`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes: lambda is tiny.


class PreconditionNaturalFisherState(NamedTuple):
  """State of `precondition_natural_fisher`."""

  count: jax.Array  # int32 scalar: updates seen; the next slot is count % s.
  history: optax.Updates  # per leaf: (s, leaf.size) ring buffer, float32 or wider.


def _natural_direction(
    history: jax.Array, slot: jax.Array, damping: jax.typing.ArrayLike
) -> jax.Array:
  """Gh w with (damping I + Gh^T Gh) w = e_slot; `history` holds Gh^T, (s, k).

  [Gh; sqrt(damping) I] = Q R gives R^T R = damping I + Gh^T Gh (R is its
  Cholesky factor, |R_ii| >= sqrt(damping)) and Gh R^{-1} = Q's first k
  rows, so Gh w = Q[:k] R^{-T} e_slot: one s x s triangular solve.
  """
  s, k = history.shape
  stacked = jnp.concatenate(
      [history.T, jnp.sqrt(jnp.asarray(damping, history.dtype)) * jnp.eye(s, dtype=history.dtype)])
  q, r = jnp.linalg.qr(stacked)
  y = jax.scipy.linalg.solve_triangular(
      r, jax.nn.one_hot(slot, s, dtype=history.dtype), trans="T", lower=False)
  return jnp.matmul(q[:k], y, precision=_HIGHEST)


def precondition_natural_fisher(
    history: int = 20, damping: jax.typing.ArrayLike = 1e-3
) -> optax.GradientTransformation:
  """Preconditions each leaf by the damped inverse of its empirical Fisher.

  u = (damping I + Gh Gh^T)^{-1} vec(g), reshaped to g's shape, where Gh holds
  the last `history` flattened updates, the current one inserted first
  (module docstring for the solve). Computed from a thin QR of the
  (k + s) x s history (cost O(k s^2), as the Gram matrix) in float32, or in
  the leaf's dtype when it is wider (float64 runs stay float64); the output
  keeps each leaf's dtype. Works on
  any leaf shape; in Natural GaLore it runs inside
  `gradkit.transforms.low_rank.project_low_rank`, on the r x r cores.

  Args:
    history: s, how many recent updates the Fisher keeps (static int >= 1). Default 20.
    damping: lambda > 0 (official: 1e-3, hard-coded). Default 1e-3.

  Returns:
    An `optax.GradientTransformation` with a `PreconditionNaturalFisherState`;
    memory s * size floats per leaf.

  References:
    Das, "Natural GaLore: Accelerating GaLore for memory-efficient LLM Training and Fine-tuning",
    2024. https://arxiv.org/abs/2410.16029 ; official code:
    https://github.com/selfsupervised-ai/Natural-GaLore

  Example:
    >>> import jax.numpy as jnp
    >>> tx = precondition_natural_fisher(history=2, damping=1e-3)
    >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    >>> [round(x, 4) for x in u.tolist()]  # g / (lambda + |g|^2)
    [0.12, 0.16]
  """
  if not isinstance(history, int) or isinstance(history, bool) or history < 1:
    raise ValueError(f"history must be a static int >= 1, got {history!r}")
  _checks.check_positive("damping", damping)

  def init_fn(params):
    return PreconditionNaturalFisherState(
        count=jnp.zeros([], jnp.int32),
        history=jax.tree.map(
            lambda p: jnp.zeros((history, p.size), jnp.promote_types(p.dtype, jnp.float32)),
            params))

  def update_fn(updates, state, params=None):
    del params
    slot = state.count % history
    buffers = jax.tree.map(
        lambda g, h: h.at[slot].set(g.reshape(-1).astype(h.dtype)), updates, state.history)
    natural = jax.tree.map(
        lambda g, h: _natural_direction(h, slot, damping).reshape(g.shape).astype(g.dtype),
        updates, buffers)
    return natural, PreconditionNaturalFisherState(optax.safe_increment(state.count), buffers)

  return optax.GradientTransformation(init_fn, update_fn)
