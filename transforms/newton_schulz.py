"""Newton–Schulz iterations: Muon's quintic orthogonalization, SWAN's whitening.

Both map a matrix G = U S V^T towards its polar factor U V^T without an SVD,
using only matrix products (fast on accelerators, fine in bf16/fp32):

- `newton_schulz_orthogonalize` (Muon; COSMOS's complement step): the
  quintic s -> a s + b s^3 + c s^5 on every singular value, with coefficients
  tuned for speed rather than exact convergence (after 5 steps the singular
  values lie roughly in [0.7, 1.13]).
- `newton_schulz_whiten` (SWAN's GradWhitening, (G G^T)^{-1/2} G): the coupled
  iteration Y <- Y T / 2, Z <- T Z / 2 with T = 3I - Z Y, which converges
  exactly to the inverse square root of the Frobenius-scaled Gram matrix.

Both take their Frobenius norms (sums of squares) of the matrix divided by
its largest absolute entry, so that they neither overflow nor underflow:
the result for c X is the result for X, to rounding, for any c > 0 that
keeps c X finite (1e30 and 1e-30 in float32 included), and an all-zero
matrix maps to zero. For a norm of at least 1 the formula is the official
one; below 1 the eps is relative to the norm. The official
codes' X / (||X||_F + eps) gives 0 once ||X||_F overflows (entries of ~1e19
and more in float32), so one x1e30 gradient froze Muon while its momentum
held it.

References:
  K. Jordan et al., Muon: An optimizer for hidden layers in neural networks
  (2024). C. Ma, W. Gong, M. Scetbon, E. Meeds, SWAN: SGD with Normalization
  and Whitening Enables Stateless LLM Training, ICML 2025 (arXiv 2412.13148).
  N. Higham, Functions of Matrices (2008), Section 6.7 (coupled iteration).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.transforms.matrix_view import stateless_matrix_transform

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def _wide(fn):
  """Runs `fn` on the wide orientation (rows <= cols) so its Gram is small."""

  def wrapped(x, *args):
    if x.shape[0] > x.shape[1]:
      return fn(x.T, *args).T
    return fn(x, *args)

  return wrapped


def _check_steps(steps: int) -> None:
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"ns_steps must be an int >= 1, got {steps!r}")


def _divide_by_norm(x, eps):
  """X / (||X||_F + eps min(1, ||X||_F)), its norms taken of X / max|X_ij| (0 for X = 0).

  Squaring X itself overflows ||X||_F to inf in float32 for entries of
  ~1e19 and more (X / inf = 0) and flushes it to 0 below ~1e-19 (X / eps);
  X / max|X_ij| has largest entry 1, so neither happens. For ||X||_F >= 1
  this is the official X / (||X||_F + eps); below 1 the eps is relative,
  so c X gives the result of X for every c > 0 (to rounding and eps).
  """
  peak = jnp.max(jnp.abs(x), initial=0.0)  # 0 for a zero-size matrix
  unit = x / jnp.where(peak > 0, peak, jnp.ones_like(peak))
  unit_norm = jnp.linalg.norm(unit)
  # ||X|| + eps min(1, ||X||) = peak (||unit|| + eps min(1 / peak, ||unit||)).
  denominator = unit_norm + eps * jnp.minimum(1 / peak, unit_norm)
  return unit / jnp.where(denominator > 0, denominator, jnp.ones_like(denominator))


@_wide
def _quintic(x, coefficients, steps, eps):
  a, b, c = coefficients
  x = _divide_by_norm(x, eps)
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x


def newton_schulz_orthogonalize(
    x: jax.Array,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    steps: int = 5,
    eps: float = 1e-8,
) -> jax.Array:
  """Approximate polar factor of a 2-D `x` by `steps` quintic NS steps.

  X <- X / (||X||_F + eps min(1, ||X||_F)); then `steps` times
  X <- a X + (b A + c A^2) X with A = X X^T, on the orientation whose Gram
  matrix is smaller. The norm is taken of X / max|X_ij|, so it neither
  overflows nor underflows in float32. For ||X||_F >= 1 this is the
  official X / (||X||_F + eps); below 1 the eps is relative, so the result
  is invariant to a positive factor on `x` (to rounding and eps), and an
  all-zero `x` gives zero.

  Args:
    x: a 2-D array.
    coefficients: (a, b, c) of the quintic step. Default MUON_COEFFICIENTS,
      (3.4445, -4.7750, 2.0315).
    steps: number of Newton–Schulz steps. Default 5.
    eps: added to ||X||_F in the pre-scaling, times ||X||_F where that is
      below 1. Default 1e-8.

  Returns:
    An array like `x`, approximately U V^T of its SVD.

  References:
    Jordan et al., "Muon: An optimizer for hidden layers in neural networks", blog post, 2024.
    https://kellerjordan.github.io/posts/muon/ ; official code: https://github.com/KellerJordan/Muon

    Liu et al., "Muon is Scalable for LLM Training", 2025. https://arxiv.org/abs/2502.16982
  """
  return _quintic(x, tuple(coefficients), steps, eps)


@_wide
def _coupled(x, steps, eps):
  # (G G^T)^{-1/2} G is unchanged by a positive factor on G: whiten G / max|G_ij|,
  # with eps min(1, ||A||_F) for the A = G G^T of the original G.
  peak = jnp.max(jnp.abs(x), initial=0.0)  # 0 for a zero-size matrix
  x = x / jnp.where(peak > 0, peak, jnp.ones_like(peak))
  gram = x @ x.T
  unit_norm = jnp.linalg.norm(gram)
  scale = unit_norm + eps * jnp.minimum(1 / peak**2, unit_norm)
  scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
  eye = jnp.eye(gram.shape[0], dtype=x.dtype)
  y, z = gram / scale, eye
  for _ in range(steps):
    t = 3.0 * eye - z @ y
    y, z = 0.5 * y @ t, 0.5 * t @ z
  return z @ x / jnp.sqrt(scale)


def newton_schulz_whiten(x: jax.Array, steps: int = 10, eps: float = 1e-8) -> jax.Array:
  """(G G^T)^{-1/2} G for a 2-D `x` by `steps` coupled Newton–Schulz steps.

  A = G G^T is scaled by ||A||_F + eps min(1, ||A||_F) so its eigenvalues
  lie in (0, 1], computed from G / max|G_ij| (no square overflows or
  underflows; the result is unchanged by a positive factor on G up to
  rounding and eps; for ||A||_F >= 1 this is the official scaling);
  Z_k -> (A / ||A||_F)^{-1/2}. Tall inputs are whitened from the right
  (G (G^T G)^{-1/2}), which gives the same polar factor with a smaller Gram.
  An all-zero G maps to zero.

  Args:
    x: a 2-D array G.
    steps: number of coupled Newton–Schulz steps. Default 10.
    eps: added to ||A||_F in the scaling, times ||A||_F where that is below
      1. Default 1e-8.

  Returns:
    An array like `x`, approximately (G G^T)^{-1/2} G.

  References:
    Ma, Gong, Scetbon & Meeds, "SWAN: SGD with Normalization and Whitening Enables Stateless LLM
    Training", ICML 2025. https://arxiv.org/abs/2412.13148
  """
  return _coupled(x, steps, eps)


def orthogonalize_newton_schulz(
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
  """State-free: every matrix update -> `newton_schulz_orthogonalize` of it.

  Acts on the 2-D view of each leaf (see `gradkit.transforms.matrix_view`);
  vectors and scalars raise a ValueError. Computed in float32 or wider.

  Args:
    coefficients: (a, b, c) of the quintic step. Default MUON_COEFFICIENTS,
      (3.4445, -4.7750, 2.0315).
    ns_steps: number of Newton–Schulz steps. Default 5.
    eps: added to ||X||_F in the pre-scaling (see
      `newton_schulz_orthogonalize`). Default 1e-8.

  Returns:
    A state-free `optax.GradientTransformation`.

  References:
    Jordan et al., "Muon: An optimizer for hidden layers in neural networks", blog post, 2024.
    https://kellerjordan.github.io/posts/muon/ ; official code: https://github.com/KellerJordan/Muon

    Liu et al., "Muon is Scalable for LLM Training", 2025. https://arxiv.org/abs/2502.16982
  """
  _check_steps(ns_steps)
  _checks.check_non_negative("eps", eps)
  _checks.check_finite_numbers("coefficients", coefficients, length=3)
  coefficients = tuple(float(c) for c in coefficients)
  if len(coefficients) != 3:
    raise ValueError(f"coefficients must be (a, b, c), got {coefficients!r}")
  return stateless_matrix_transform(
      lambda m: newton_schulz_orthogonalize(m, coefficients, ns_steps, eps),
      "orthogonalize_newton_schulz")


def whiten_newton_schulz(ns_steps: int = 10, eps: float = 1e-8) -> optax.GradientTransformation:
  """State-free: every matrix update G -> (G G^T)^{-1/2} G (SWAN's GradWhitening).

  Args:
    ns_steps: number of coupled Newton–Schulz steps. Default 10.
    eps: added to ||A||_F in the scaling (see `newton_schulz_whiten`).
      Default 1e-8.

  Returns:
    A state-free `optax.GradientTransformation`.

  References:
    Ma, Gong, Scetbon & Meeds, "SWAN: SGD with Normalization and Whitening Enables Stateless LLM
    Training", ICML 2025. https://arxiv.org/abs/2412.13148
  """
  _check_steps(ns_steps)
  _checks.check_non_negative("eps", eps)
  return stateless_matrix_transform(
      lambda m: newton_schulz_whiten(m, ns_steps, eps), "whiten_newton_schulz")
