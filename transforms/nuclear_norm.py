"""Nuclear-norm sub-gradient of weight matrices, from the shared SVD projector.

For W = U diag(s) V^T (thin SVD), U V^T is a sub-gradient of ||W||_* =
sum(s) (the gradient where W has full rank); restricted to a set of kept
components it is U_k V_k^T, the sub-gradient of the nuclear norm of the
truncated matrix U_k diag(s_k) V_k^T. The SVD is `gradkit.transforms.
low_rank`'s "full"-side SVD projector (U stacked over V), and U_k V_k^T is its
`project_back` of the 0/1 diagonal of kept components. Used by SaRA (the
low-rank penalty on the sparse trainable matrix) and Trained Rank Pruning.

References:
  Y. Xu et al., Trained Rank Pruning for Efficient Deep Neural Networks,
  IJCAI 2020 (official code yuhuixu1993/Trained-Rank-Pruning).
  T. Hu et al., SaRA: High-Efficient Diffusion Model Fine-tuning with
  Progressive Sparse Low-Rank Adaptation, ICLR 2025 (official code
  sjtuplayer/SaRA).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.transforms.low_rank import make_projector, project, project_back
from gradkit.transforms.matrix_view import as_matrix

Truncation = Callable[[jax.Array], jax.Array]


def svd_frame(matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(frame, s): the full-rank "full"-side SVD projector of a (m, n) matrix
  (U over V, (m + n, min(m, n))) and the singular values, descending."""
  matrix = matrix.astype(jnp.float32)
  frame = make_projector(matrix, None, min(matrix.shape), "full", "svd")
  return frame, jnp.diagonal(project(matrix, frame, "full"))


def nuclear_norm_subgradient(matrix: jax.Array, truncation: Truncation | None = None) -> jax.Array:
  """U_k V_k^T (float32) for the components k that `truncation(s)` keeps (all if None).

  Args:
    matrix: a 2-D array.
    truncation: callable on the singular values returning the mask of the kept
      components (e.g. `truncation_mask`), or None to keep all. Default None.

  Returns:
    The float32 subgradient U_k V_k^T, shaped like `matrix`.

  References:
    Xu et al., "TRP: Trained Rank Pruning for Efficient Deep Neural Networks", IJCAI 2020.
    https://arxiv.org/abs/2004.14566 ; official code:
    https://github.com/yuhuixu1993/Trained-Rank-Pruning

    Hu et al., "SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank
    Adaptation", ICLR 2025. https://arxiv.org/abs/2409.06633 ; official code:
    https://github.com/sjtuplayer/SaRA
  """
  frame, sigma = svd_frame(matrix)
  keep = jnp.ones_like(sigma) if truncation is None else truncation(sigma).astype(jnp.float32)
  return project_back(jnp.diag(keep), frame, "full", matrix.shape)


def is_penalized(x: jax.Array, min_dim: int) -> bool:
  """A leaf with ndim >= 2 whose 2-D view has min(m, n) > min_dim."""
  return x.ndim >= 2 and min(as_matrix(x).shape) > min_dim


class AddNuclearNormSubgradientState(NamedTuple):
  """Steps taken (the penalty is added when count % every == 0)."""

  count: jax.Array  # int32


def add_nuclear_norm_subgradient(
    weight: jax.typing.ArrayLike,
    every: int = 1,
    truncation: Truncation | None = None,
    min_dim: int = 0,
) -> optax.GradientTransformation:
  """u <- u + weight * U_k V_k^T(W) on matrix leaves, every `every` steps.

  The stochastic sub-gradient step of the regularizer weight * ||W||_*
  (TRP's nuclear regularization), W the 2-D view of each param with
  ndim >= 2 (`gradkit.transforms.matrix_view`) and min(m, n) > `min_dim`;
  other leaves pass through. The SVD runs only on penalized steps.

  Args:
    weight: lambda >= 0.
    every: add the term when count % every == 0 (static int >= 1; TRP adds
      it on its projection steps). Default 1.
    truncation: sigma -> bool mask of kept components (None: all). Default None.
    min_dim: matrices whose smaller side is <= min_dim are skipped (static). Default 0.

  References:
    Xu et al., "TRP: Trained Rank Pruning for Efficient Deep Neural Networks", IJCAI 2020.
    https://arxiv.org/abs/2004.14566 ; official code:
    https://github.com/yuhuixu1993/Trained-Rank-Pruning

    Hu et al., "SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank
    Adaptation", ICLR 2025. https://arxiv.org/abs/2409.06633 ; official code:
    https://github.com/sjtuplayer/SaRA
  """
  _checks.check_non_negative("weight", weight)
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ValueError(f"every must be an int >= 1, got {every!r}")

  def init_fn(params):
    del params
    return AddNuclearNormSubgradientState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("add_nuclear_norm_subgradient needs params")
    active = state.count % every == 0

    def one(u, p):
      if not is_penalized(p, min_dim):
        return u
      sub = jax.lax.cond(
          active, lambda: nuclear_norm_subgradient(as_matrix(p), truncation),
          lambda: jnp.zeros(as_matrix(p).shape, jnp.float32))
      return (u.astype(jnp.float32) + weight * sub.reshape(u.shape)).astype(u.dtype)

    return (jax.tree.map(one, updates, params),
            AddNuclearNormSubgradientState(optax.safe_increment(state.count)))

  return optax.GradientTransformation(init_fn, update_fn)
