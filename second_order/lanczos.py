"""Lanczos on curvature operators: top eigenvalue and spectral density (SLQ).

`matvec` is any symmetric operator on parameter trees, e.g.
`operators.hessian_operator(loss_fn, params)` (Hessian of a model's loss) or
`operators.gauss_newton_operator(model_fn, loss_of_outputs, params)`; trees
are flattened with `jax.flatten_util.ravel_pytree` and everything runs in
float32 inside `lax` loops, so the functions can be jitted whole (fix the
batch, disable dropout: the operator must be deterministic).

Lanczos keeps the whole basis (num_iters x d floats) and re-orthogonalises
each new vector against it twice, which removes the spurious duplicated
("ghost") Ritz values of plain Lanczos in finite precision. On breakdown
(the Krylov space became invariant) it restarts from a random vector
orthogonal to the basis with a zero off-diagonal, as PyHessian does; the
restarted block then carries zero quadrature weight. More than d steps mean
nothing, so num_iters is capped at d.

Stochastic Lanczos quadrature: for a unit probe v the m-step tridiagonal
T = U diag(theta) U^T gives nodes theta_k and weights U_{1k}^2 with
sum_k w_k theta_k^p = v^T H^p v for p <= 2m - 1; averaging over Rademacher
probes estimates the spectral density (1/d) sum_i delta(t - lambda_i), and
each node is smoothed by a Gaussian.

References:
  B. Ghorbani, S. Krishnan, Y. Xiao, An Investigation into Neural Net
  Optimization via Hessian Eigenvalue Density, ICML 2019; Z. Yao et al.,
  PyHessian, 2020 (amirgholami/PyHessian, `hessian.density`,
  `density_plot.density_generate`); D. Granziol, S. Zohren, S. Roberts,
  Learning Rates as a Function of Batch Size, JMLR 2022.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Params = Any
_HIGHEST = jax.lax.Precision.HIGHEST


class SpectralDensity(NamedTuple):
  """Output of `spectral_density`."""

  grid: jax.Array  # (num_points,) eigenvalue axis.
  density: jax.Array  # (num_points,) smoothed density; integrates to ~1.
  nodes: jax.Array  # (num_probes, num_iters) Ritz values per probe.
  weights: jax.Array  # (num_probes, num_iters) quadrature weights (each row sums to 1).


def _flat_operator(matvec: Callable[[Params], Params], params: Params):
  flat, unravel = ravel_pytree(jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params))

  def flat_matvec(v):
    return ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), matvec(unravel(v))))[0]

  return flat_matvec, flat.size


def _orthogonalize(w: jax.Array, basis: jax.Array) -> jax.Array:
  for _ in range(2):  # "twice is enough" (Kahan/Parlett) for full re-orthogonalisation.
    w = w - jnp.matmul(jnp.matmul(basis, w, precision=_HIGHEST), basis, precision=_HIGHEST)
  return w


def _tridiagonal(flat_matvec, v0: jax.Array, num_iters: int, key: jax.Array):
  """(alphas, betas) of `num_iters` Lanczos steps from the unit vector v0."""
  d = v0.size
  # One spare row: step j always writes row j + 1; the last write is unused.
  basis = jnp.zeros((num_iters + 1, d), jnp.float32).at[0].set(v0)

  def body(j, carry):
    basis, alphas, betas = carry
    av = flat_matvec(basis[j])
    alpha = jnp.dot(av, basis[j], precision=_HIGHEST)
    w = _orthogonalize(av, basis)
    beta = jnp.linalg.norm(w)
    broke = beta <= 1e-5 * jnp.linalg.norm(av)
    fresh = _orthogonalize(jax.random.normal(jax.random.fold_in(key, j), (d,)), basis)
    nxt = jnp.where(broke, fresh / jnp.linalg.norm(fresh), w / jnp.where(broke, 1.0, beta))
    beta = jnp.where(broke, 0.0, beta)
    return basis.at[j + 1].set(nxt), alphas.at[j].set(alpha), betas.at[j].set(beta)

  _, alphas, betas = jax.lax.fori_loop(
      0, num_iters, body,
      (basis, jnp.zeros(num_iters, jnp.float32), jnp.zeros(num_iters, jnp.float32)))
  return alphas, betas[:-1]


def _num_steps(num_iters: int, d: int) -> int:
  if not isinstance(num_iters, int) or isinstance(num_iters, bool) or num_iters < 1:
    raise ValueError(f"num_iters must be a static int >= 1, got {num_iters!r}")
  return min(num_iters, d)


def lanczos_quadrature(
    matvec: Callable[[Params], Params], probe: Params, num_iters: int, key: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Gauss quadrature (nodes, weights) of the operator's spectral measure at `probe`.

  sum_k weights_k f(nodes_k) approximates v^T f(H) v for v = probe / |probe|,
  exactly for polynomials f of degree <= 2 num_iters - 1. `key` seeds the
  restart vectors after a breakdown (default PRNGKey(0)).

  Args:
    matvec: the symmetric operator v -> H v on trees like `probe`, e.g.
      `hessian_operator(loss, params)`.
    probe: the start vector (a tree; normalised internally).
    num_iters: Lanczos steps (clamped to the dimension).
    key: PRNG key of the restart vectors; None means PRNGKey(0). Default None.

  Returns:
    A tuple (nodes, weights) of shape (num_iters,) each.

  References:
    Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization via Hessian Eigenvalue
    Density", ICML 2019. https://arxiv.org/abs/1901.10159

    Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural Networks Through the Lens of the Hessian",
    2020. https://arxiv.org/abs/1912.07145 ; official code: https://github.com/amirgholami/PyHessian
  """
  flat_matvec, d = _flat_operator(matvec, probe)
  steps = _num_steps(num_iters, d)
  v0 = ravel_pytree(jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), probe))[0]
  key = jax.random.PRNGKey(0) if key is None else key
  alphas, betas = _tridiagonal(flat_matvec, v0 / jnp.linalg.norm(v0), steps, key)
  tridiagonal = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
  nodes, vectors = jnp.linalg.eigh(tridiagonal)
  return nodes, vectors[0] ** 2


def _rademacher_quadrature(matvec, params, key, num_iters):
  flat, unravel = ravel_pytree(jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params))
  probe_key, restart_key = jax.random.split(key)
  probe = jax.random.rademacher(probe_key, flat.shape, jnp.float32)
  return lanczos_quadrature(matvec, unravel(probe), num_iters, restart_key)


def top_eigenvalue(
    matvec: Callable[[Params], Params], params: Params, key: jax.Array, num_iters: int = 30
) -> jax.Array:
  """Largest eigenvalue of the symmetric operator `matvec` (largest Ritz value).

  `params` fixes the tree structure (its values are unused); the start
  vector is Rademacher from `key`. Edge eigenvalues converge first, so a few
  tens of steps usually suffice; with num_iters = d it is exact.

  Args:
    matvec: the symmetric operator v -> H v on trees like `params`.
    params: a tree fixing the structure (values unused).
    key: PRNG key of the Rademacher start vector.
    num_iters: Lanczos steps. Default 30.

  Returns:
    The largest Ritz value, a scalar.

  References:
    Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural Networks Through the Lens of the Hessian",
    2020. https://arxiv.org/abs/1912.07145 ; official code: https://github.com/amirgholami/PyHessian
  """
  nodes, _ = _rademacher_quadrature(matvec, params, key, num_iters)
  return nodes[-1]


def spectral_density(
    matvec: Callable[[Params], Params],
    params: Params,
    key: jax.Array,
    num_probes: int = 1,
    num_iters: int = 100,
    grid: int | jax.Array = 1000,
    sigma: float | None = None,
) -> SpectralDensity:
  """Stochastic Lanczos quadrature estimate of the spectral density.

  density(t) = (1/num_probes) sum_l sum_k w_k^(l) N(t; theta_k^(l), sigma^2),
  probes Rademacher (PyHessian: num_iters 100, one probe). The default sigma
  is PyHessian's kernel: variance 1e-5 * max(1, lambda_max - lambda_min),
  with the extremes the probe-averaged extreme nodes. An int `grid` is that
  many points from the smallest node - pad to the largest + pad, pad = 0.01 + 5 sigma
  (PyHessian pads 0.01 and renormalises the density on the grid; the wider
  pad keeps the Gaussians' mass so the density needs no renormalisation);
  an array is used as given.

  Args:
    matvec: the symmetric operator v -> H v on trees like `params`.
    params: a tree fixing the structure (values unused).
    key: PRNG key of the probes.
    num_probes: Rademacher probes averaged. Default 1.
    num_iters: Lanczos steps per probe. Default 100.
    grid: number of grid points, or the grid itself as an array. Default 1000.
    sigma: std of the Gaussian kernel; None means PyHessian's
      sqrt(1e-5 max(1, lambda_max - lambda_min)). Default None.

  Returns:
    A `SpectralDensity` (grid, density, nodes, weights).

  References:
    Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization via Hessian Eigenvalue
    Density", ICML 2019. https://arxiv.org/abs/1901.10159

    Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural Networks Through the Lens of the Hessian",
    2020. https://arxiv.org/abs/1912.07145 ; official code: https://github.com/amirgholami/PyHessian
  """
  if not isinstance(num_probes, int) or isinstance(num_probes, bool) or num_probes < 1:
    raise ValueError(f"num_probes must be a static int >= 1, got {num_probes!r}")
  if sigma is not None and not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma!r}")
  nodes, weights = jax.lax.map(
      lambda k: _rademacher_quadrature(matvec, params, k, num_iters),
      jax.random.split(key, num_probes))
  if sigma is None:
    sigma = jnp.sqrt(1e-5 * jnp.maximum(1.0, jnp.mean(nodes[:, -1]) - jnp.mean(nodes[:, 0])))
  if isinstance(grid, int):
    pad = 0.01 + 5.0 * sigma
    grid = jnp.linspace(jnp.min(nodes) - pad, jnp.max(nodes) + pad, grid)
  grid = jnp.asarray(grid, jnp.float32)
  kernels = jnp.exp(-0.5 * ((grid[:, None, None] - nodes) / sigma) ** 2) / (
      sigma * jnp.sqrt(2.0 * jnp.pi))
  density = jnp.sum(kernels * weights, axis=(1, 2)) / num_probes
  return SpectralDensity(grid, density, nodes, weights)
