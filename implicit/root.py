"""Implicit differentiation of a solver through its optimality condition.

If x*(θ) satisfies F(x*(θ), θ) = 0, the implicit function theorem gives
∂x*(θ) = −[∂₁F(x*, θ)]⁻¹ ∂₂F(x*, θ): the derivative needs only the solution and
one matrix-free linear solve, never the solver's iterations (Blondel et al.,
"Efficient and Modular Implicit Differentiation", NeurIPS 2022). These two
decorators attach that rule to any `solver(init, *theta)`; the variables to
differentiate must be explicit arguments `theta`, never closed over.

Reverse mode only (the rule is a `jax.custom_vjp`): `jax.grad`/`jax.jacrev`
work, `jax.jvp`/`jax.jacfwd` raise a TypeError. The gradient with respect to
`init` is zero by design.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradkit.implicit import _backend
from gradkit.implicit.linear_solve import LinearSolver, linear_solver


def _resolve(solve: str | LinearSolver) -> LinearSolver:
  return linear_solver(solve) if isinstance(solve, str) else solve


def implicit_root(
    optimality_fn: Callable[..., Any],
    *,
    solve: str | LinearSolver = "normal_cg",
    has_aux: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Decorates `solver(init, *theta)` so its output is differentiated implicitly.

  Args:
    optimality_fn: F(x, *theta), zero at the solution; same extra arguments as
      the solver.
    solve: a linear-solver name (see `linear_solver`) or `solve(matvec, b)`;
      "normal_cg" works for any nonsingular ∂₁F, "cg" when F is a gradient. Default "normal_cg".
    has_aux: the solver returns (solution, aux); aux is not differentiated. Default False.

  References:
    Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022.
    https://arxiv.org/abs/2105.15183 ; official code: https://github.com/google/jaxopt

  Example:
    >>> import jax, jax.numpy as jnp
    >>> @implicit_root(lambda x, t: x - t**2)
    ... def square(init, t):
    ...   return t**2
    >>> float(jax.grad(square, argnums=1)(0.0, 3.0))
    6.0
  """
  return _backend.custom_root(optimality_fn, has_aux=has_aux, solve=_resolve(solve))


def implicit_fixed_point(
    fixed_point_fn: Callable[..., Any],
    *,
    solve: str | LinearSolver = "normal_cg",
    has_aux: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """As `implicit_root` with F(x, θ) = T(x, θ) − x for a fixed-point map T = `fixed_point_fn`.

  ∂₁F = ∂₁T − I is not symmetric in general: use "normal_cg" or "gmres".

  Args:
    fixed_point_fn: T(x, *theta), equal to x at the solution; same extra
      arguments as the solver.
    solve: a linear-solver name (see `linear_solver`) or `solve(matvec, b)`.
      Default "normal_cg".
    has_aux: the solver returns (solution, aux); aux is not differentiated.
      Default False.

  Returns:
    A decorator for `solver(init, *theta)`.

  References:
    Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022.
    https://arxiv.org/abs/2105.15183 ; official code: https://github.com/google/jaxopt
  """
  return _backend.custom_fixed_point(fixed_point_fn, has_aux=has_aux, solve=_resolve(solve))
