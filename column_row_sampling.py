"""Winner-take-all column-row sampling (WTA-CRS) of a linear layer's weight gradient.

The weight gradient of y = x K (x: N rows of `in` features, K: (in, out)) is
a sum over the N rows, grad K = sum_r x_r^T dy_r. Column-row sampling keeps k
of the N (row of x, row of dy) pairs, drawn with probability p_r proportional
to ||x_r|| ||dy_r||, and rescales them so the estimate is unbiased; WTA-CRS
keeps the |C| most probable pairs exactly (the winners) and samples the rest
from the remaining mass, which lowers the variance when the winners carry more
than their share of it. Only the k kept rows of x are saved for the backward
pass, so the layer's stored activation shrinks from N x in to k x in. The
forward output and the input gradient dy K^T are exact.

Estimators (pair weights w_r = ||x_r|| ||dy_r||, p = w / sum w):

  CRS:     G = (1/k) sum_t x_{i_t}^T dy_{i_t} / p_{i_t},  i_t ~ p i.i.d.
  WTA-CRS: G = sum_{c in C} x_c^T dy_c
               + (1 - P_C) / s * sum_t x_{j_t}^T dy_{j_t} / p_{j_t},
           j_t ~ p restricted to the non-winners, s = k - |C|,

with |C| chosen by the official adaptive rule (`winner_count`). ||dy_r|| is
not known in the forward pass: the official code caches each example's
output-gradient row norms from the previous epoch (zeros, hence ||x_r||
alone, in the first); here `grad_norms` takes any such estimate, and None
uses ||x_r|| alone. Every row keeps a probability floor, so stale estimates
cost variance, never bias.

Deviations from the official code (zirui-ray-liu/WTACRS,
`seq2seq/approxlinear/functional.py`), which has two biased paths: with
`mix_replacement` and no winners it stores rows drawn without replacement
and without the 1/p rescaling, and with zero cached norms it omits the
division by s p_j; it also drops the sampled part when P_C > 0.999. gradkit
always rescales (unbiased), does not cut the long tail, and computes in the
input's dtype (the official forward casts to float16).

References:
  Liu et al., "Winner-Take-All Column Row Sampling for Memory Efficient
  Adaptation of Language Model", NeurIPS 2023. https://arxiv.org/abs/2305.15265 ;
  official code: https://github.com/zirui-ray-liu/WTACRS
  Drineas, Kannan & Mahoney, "Fast Monte Carlo Algorithms for Matrices I:
  Approximating Matrix Multiplication", SIAM J. Comput. 2006.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Every pair keeps at least this share of the mean weight, so it can be drawn.
_PROBABILITY_FLOOR = 1e-8


def sampling_budget(num_rows: int, sampling_ratio: float, minimal_k: int = 10) -> int:
  """The number of kept pairs k = min(max(floor(N * ratio), minimal_k), N) (official rule).

  Args:
    num_rows: N, the rows of the layer's flattened input.
    sampling_ratio: the kept share k / N (paper: 0.3 and 0.1).
    minimal_k: the fewest pairs kept. Default 10 (official).

  Returns:
    k, a Python int; k == N means the exact gradient.

  References:
    Liu et al., "Winner-Take-All Column Row Sampling for Memory Efficient Adaptation of Language
    Model", NeurIPS 2023. https://arxiv.org/abs/2305.15265 ; official code:
    https://github.com/zirui-ray-liu/WTACRS
  """
  if not 0.0 < sampling_ratio <= 1.0:
    raise ValueError(f"sampling_ratio must lie in (0, 1], got {sampling_ratio!r}")
  if not isinstance(minimal_k, (int, np.integer)) or minimal_k < 1:
    raise ValueError(f"minimal_k must be an int >= 1, got {minimal_k!r}")
  return min(max(math.floor(num_rows * sampling_ratio), int(minimal_k)), num_rows)


def pair_probabilities(x_norms: jax.Array, grad_norms: jax.Array | None = None) -> jax.Array:
  """p_r proportional to ||x_r|| ||dy_r|| (or ||x_r|| alone), with a floor on every row.

  Args:
    x_norms: (N,) row norms of the layer's input.
    grad_norms: (N,) estimates of the output gradient's row norms, or None for
      ||x_r|| alone. Default None.

  Returns:
    (N,) probabilities summing to 1, each at least 1e-8 of the mean weight's share.

  References:
    Liu et al., "Winner-Take-All Column Row Sampling for Memory Efficient Adaptation of Language
    Model", NeurIPS 2023. https://arxiv.org/abs/2305.15265 ; official code:
    https://github.com/zirui-ray-liu/WTACRS
  """
  w = x_norms if grad_norms is None else x_norms * grad_norms
  w = w + _PROBABILITY_FLOOR * jnp.mean(w) + jnp.finfo(w.dtype).tiny
  return w / jnp.sum(w)


def winner_count(top_p: jax.Array) -> jax.Array:
  """|C| by the official adaptive rule, from the k largest probabilities (descending).

  With Q_c the sum of the c largest, score_c = (1 - Q_c) / (k - c) for
  c = 1..k-1: |C| = argmin_c score_c when that minimum is below 1/k (plain
  CRS's factor), else 0.

  Args:
    top_p: (k,) the k largest pair probabilities, sorted descending.

  Returns:
    An int32 scalar in [0, k - 1].

  References:
    Liu et al., "Winner-Take-All Column Row Sampling for Memory Efficient Adaptation of Language
    Model", NeurIPS 2023. https://arxiv.org/abs/2305.15265 ; official code:
    https://github.com/zirui-ray-liu/WTACRS (`k_adaptive_3D`)
  """
  k = top_p.shape[0]
  if k < 2:
    return jnp.zeros((), jnp.int32)
  c = jnp.arange(1, k)
  scores = (1.0 - jnp.cumsum(top_p)[:-1]) / (k - c)
  best = jnp.argmin(scores)
  return jnp.where(scores[best] < 1.0 / k, best + 1, 0).astype(jnp.int32)


def select_pairs(
    key: jax.Array, p: jax.Array, k: int, winners: str | int = "adaptive"
) -> tuple[jax.Array, jax.Array]:
  """The k kept pairs and their weights: |C| winners (weight 1), then s = k - |C| draws.

  Args:
    key: PRNG key of the draws.
    p: (N,) pair probabilities (`pair_probabilities`).
    k: pairs kept, 1 <= k <= N (static).
    winners: "adaptive" (the official rule, `winner_count`), or a static
      count in [0, k - 1]; 0 is plain CRS. Default "adaptive".

  Returns:
    `(indices, weights)`, both (k,): row indices (int32) and the factor each
    kept pair is multiplied by, 1 for a winner and (1 - P_C) / (s p_j) for a
    draw j, so the weighted sum of the kept pairs is unbiased.

  References:
    Liu et al., "Winner-Take-All Column Row Sampling for Memory Efficient Adaptation of Language
    Model", NeurIPS 2023. https://arxiv.org/abs/2305.15265 ; official code:
    https://github.com/zirui-ray-liu/WTACRS
  """
  n = p.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"k must lie in [1, {n}] (the rows), got {k!r}")
  top_p, top_idx = jax.lax.top_k(p, k)
  if winners == "adaptive":
    num_winners = winner_count(top_p)
  elif isinstance(winners, (int, np.integer)) and 0 <= winners < k:
    num_winners = jnp.asarray(winners, jnp.int32)
  else:
    raise ValueError(f"winners must be 'adaptive' or an int in [0, {k - 1}], got {winners!r}")
  slot = jnp.arange(k)
  is_winner = slot < num_winners
  winner_mass = jnp.sum(jnp.where(is_winner, top_p, 0.0))
  excluded = jnp.zeros((n,), bool).at[top_idx].set(is_winner)
  # Inverse-CDF draws from p on the non-winners: O(N + k log N) memory and
  # work, where a Gumbel-max `categorical` of k draws materialises (k, N).
  cdf = jnp.cumsum(jnp.where(excluded, 0.0, p))
  uniforms = jax.random.uniform(key, (k,), p.dtype) * cdf[-1]
  draws = jnp.minimum(jnp.searchsorted(cdf, uniforms, side="right"), n - 1)
  num_draws = (k - num_winners).astype(p.dtype)
  indices = jnp.where(is_winner, top_idx, draws).astype(jnp.int32)
  weights = jnp.where(is_winner, 1.0, (1.0 - winner_mass) / (num_draws * p[draws]))
  return indices, weights.astype(p.dtype)


@jax.custom_vjp
def _dense_with_kept_rows(x2d, kernel, indices, weights):
  return x2d @ kernel


def _dense_fwd(x2d, kernel, indices, weights):
  # The residuals: the k kept (and weighted) rows of x, their indices, the kernel.
  kept = x2d[indices] * weights[:, None].astype(x2d.dtype)
  return x2d @ kernel, (kept, indices, kernel, weights)


def _dense_bwd(residuals, dy):
  kept, indices, kernel, weights = residuals
  grad_kernel = (kept.T @ dy[indices]).astype(kernel.dtype)
  grad_x = (dy @ kernel.T).astype(kept.dtype)
  return grad_x, grad_kernel, np.zeros(indices.shape, jax.dtypes.float0), jnp.zeros_like(weights)


_dense_with_kept_rows.defvjp(_dense_fwd, _dense_bwd)


def wta_crs_dense(
    x: jax.Array,
    kernel: jax.Array,
    key: jax.Array,
    k: int,
    *,
    grad_norms: jax.Array | None = None,
    winners: str | int = "adaptive",
) -> jax.Array:
  """x @ kernel, whose kernel gradient is the WTA-CRS estimate from k kept rows.

  The output and the gradient with respect to `x` are exact; the kernel's
  gradient is the unbiased estimate described in the module docstring, and
  only the k kept rows of `x` are saved for it. All leading axes of `x` are
  rows (tokens of the whole batch are sampled jointly, as in the official
  code). k equal to the number of rows gives the exact gradient.

  Args:
    x: (..., in) inputs.
    kernel: (in, out) weights (Flax layout).
    key: PRNG key of the draws (one set of rows per call).
    k: rows kept, 1 <= k <= N = prod(x.shape[:-1]) (static).
    grad_norms: (...,) estimates of ||dy_r|| per row (e.g. cached from the
      previous epoch, as the official code does), or None for ||x_r|| alone.
      Default None.
    winners: "adaptive" (official) or a static winner count; 0 is plain CRS.
      Default "adaptive".

  Returns:
    The (..., out) product.

  References:
    Liu et al., "Winner-Take-All Column Row Sampling for Memory Efficient Adaptation of Language
    Model", NeurIPS 2023. https://arxiv.org/abs/2305.15265 ; official code:
    https://github.com/zirui-ray-liu/WTACRS
  """
  x2d = x.reshape(-1, x.shape[-1])
  n = x2d.shape[0]
  if k == n:
    return x @ kernel
  norms = jax.lax.stop_gradient(jnp.linalg.norm(x2d.astype(jnp.float32), axis=-1))
  if grad_norms is not None:
    grad_norms = jax.lax.stop_gradient(jnp.reshape(grad_norms, (n,)).astype(jnp.float32))
  indices, weights = select_pairs(key, pair_probabilities(norms, grad_norms), k, winners)
  y = _dense_with_kept_rows(x2d, kernel, indices, weights)
  return y.reshape(*x.shape[:-1], kernel.shape[-1])
