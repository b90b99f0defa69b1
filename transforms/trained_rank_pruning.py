"""Trained Rank Pruning's periodic low-rank projection of the weights.

Every `every` steps each weight matrix is replaced by its truncated SVD: the
components kept are the top `rank` ones and/or the fewest whose squared
singular values reach an `energy` fraction of the total (the official
`EnergyThreshold`). The projection acts on parameters, not on updates; as an
optax transformation placed last in a chain it returns, on projection steps,

  u <- P_k(w + u) - w,

so that optax.apply_updates lands exactly on the truncated matrix
P_k(w + u) = U_k U_k^T (w + u) V_k V_k^T, and u unchanged on other steps.
The projector is `gradkit.transforms.low_rank`'s SVD projector on the "full"
side (U^T W V, then U X V^T back), so the low-rank machinery is shared with
GaLore and friends; the matrix view is gradkit's (leading axes merged,
(kh*kw*in, out) for a Flax convolution: the transpose of the official "NC"
channel decomposition (out, in*kh*kw), so the same rank). Leaves with
ndim < 2 pass through.

References:
  Y. Xu et al., Trained Rank Pruning for Efficient Deep Neural Networks,
  IJCAI 2020 (arXiv 2004.14566; official code yuhuixu1993/Trained-Rank-Pruning,
  cifar-TRP.py `low_rank_approx`, decompose.py `EnergyThreshold`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.transforms.low_rank import project, project_back
from gradkit.transforms.matrix_view import as_matrix
from gradkit.transforms.nuclear_norm import svd_frame


def truncation_mask(
    sigma: jax.Array, rank: int | None = None, energy: jax.typing.ArrayLike | None = None
) -> jax.Array:
  """Bool mask of the kept components of descending singular values `sigma`.

  Component i is kept if i < rank and the energy of the components before it,
  sum_{j<i} s_j^2 / sum_j s_j^2, is below `energy` (so the kept ones are the
  fewest reaching the fraction; the first is always kept).

  Args:
    sigma: singular values in descending order.
    rank: keep at most this many components; None means no cap. Default None.
    energy: keep the fewest components whose energy reaches this fraction;
      None means no energy criterion. Default None.

  Returns:
    A boolean array shaped like `sigma`.

  References:
    Xu et al., "TRP: Trained Rank Pruning for Efficient Deep Neural Networks", IJCAI 2020.
    https://arxiv.org/abs/2004.14566 ; official code:
    https://github.com/yuhuixu1993/Trained-Rank-Pruning
  """
  index = jnp.arange(sigma.shape[0])
  keep = jnp.ones(sigma.shape, bool)
  if rank is not None:
    keep = keep & (index < rank)
  if energy is not None:
    power = sigma.astype(jnp.float32) ** 2
    total = jnp.sum(power)
    before = (jnp.cumsum(power) - power) / jnp.where(total > 0, total, 1.0)
    keep = keep & (before < energy)
  return keep


def check_truncation(rank: int | None, energy: jax.typing.ArrayLike | None) -> None:
  """ValueError unless rank is None or an int >= 1 and energy None or in (0, 1]."""
  if rank is None and energy is None:
    raise ValueError("give a rank, an energy fraction, or both")
  if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
    raise ValueError(f"rank must be an int >= 1, got {rank!r}")
  if energy is not None:
    _checks.check_positive("energy", energy)
    _checks.check_unit_interval("energy", energy, closed=True)


class ProjectTrainedRankState(NamedTuple):
  """Steps taken (projection when count % every == 0, the first step included)."""

  count: jax.Array  # int32


def truncate(matrix: jax.Array, rank: int | None, energy: jax.typing.ArrayLike | None) -> jax.Array:
  """U_k U_k^T W V_k V_k^T (float32): the truncated SVD of a (m, n) matrix."""
  frame, sigma = svd_frame(matrix)
  keep = truncation_mask(sigma, rank, energy).astype(jnp.float32)
  low = project(matrix.astype(jnp.float32), frame, "full") * keep[:, None] * keep[None, :]
  return project_back(low, frame, "full", matrix.shape)


def project_trained_rank(
    rank: int | None = None,
    energy: jax.typing.ArrayLike | None = 0.9,
    every: int = 1,
) -> optax.GradientTransformation:
  """On every `every`-th step, u <- P_k(w + u) - w for every matrix leaf.

  Place it last in a chain (after the learning rate): it turns the step into
  a move onto the truncated SVD of the stepped weights. Needs `params`.

  Args:
    rank: keep at most this many components (static int >= 1, or None). Default None.
    energy: keep the fewest components holding this fraction of sum(s^2)
      (official default 0.9), or None.
    every: projection period m (static int >= 1). Default 1.

  References:
    Xu et al., "TRP: Trained Rank Pruning for Efficient Deep Neural Networks", IJCAI 2020.
    https://arxiv.org/abs/2004.14566 ; official code:
    https://github.com/yuhuixu1993/Trained-Rank-Pruning
  """
  check_truncation(rank, energy)
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ValueError(f"every must be an int >= 1, got {every!r}")

  def init_fn(params):
    del params
    return ProjectTrainedRankState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("project_trained_rank needs params")
    active = state.count % every == 0

    def one(u, p):
      if p.ndim < 2:
        return u

      def projected():
        stepped = as_matrix(p).astype(jnp.float32) + as_matrix(u).astype(jnp.float32)
        return (truncate(stepped, rank, energy) - as_matrix(p).astype(jnp.float32)).reshape(
            u.shape).astype(u.dtype)

      return jax.lax.cond(active, projected, lambda: u)

    return (jax.tree.map(one, updates, params),
            ProjectTrainedRankState(optax.safe_increment(state.count)))

  return optax.GradientTransformation(init_fn, update_fn)
