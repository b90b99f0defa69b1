"""Matrix-free linear solvers for the implicit-function-theorem system.

Every solver here follows one protocol, `solve(matvec, b) -> x` with
`matvec(v) = A v` on trees, the protocol of jaxopt's `linear_solve` (Blondel
et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022), so
any of them can be handed to `implicit_root`, `inner_solver` or
`implicit_hypergradient`.

- "cg": conjugate gradients; A symmetric positive definite (the Hessian of a
  strictly convex inner objective). Cheapest and best conditioned there.
- "normal_cg": CG on AᵀA x = Aᵀb; any nonsingular A (fixed points, KKT), at
  the price of a squared condition number.
- "gmres": restarted GMRES; any nonsingular A.
- "neumann": the truncated Neumann series x ≈ η Σ_{k=0}^{K} (I − ηA)^k b used
  by BO-REP and AID-style hypergradients (Lorraine et al., 2020); converges
  for symmetric A with spectrum in (0, 2/η). Needs K matvecs, no inner products.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import optax

from gradkit import _checks
from gradkit.implicit import _backend

Tree = Any
LinearSolver = Callable[[Callable[[Tree], Tree], Tree], Tree]

METHODS = ("cg", "normal_cg", "gmres", "neumann")


def solve_neumann(
    matvec: Callable[[Tree], Tree], b: Tree, *, steps: int = 20, scale: float = 0.1
) -> Tree:
  """η Σ_{k=0}^{steps} (I − ηA)^k b with η = `scale`, by `steps` matvecs.

  Args:
    matvec: v ↦ A v.
    b: right-hand side tree.
    steps: K, the highest power kept (K = 0 gives η b). Default 20.
    scale: η; choose η < 2 / λ_max(A) for convergence. Default 0.1.
  """

  def body(_, carry):
    term, total = carry
    term = optax.tree.sub(term, optax.tree.scale(scale, matvec(term)))
    return term, optax.tree.add(total, term)

  _, total = jax.lax.fori_loop(0, steps, body, (b, b))
  return optax.tree.scale(scale, total)


def linear_solver(
    method: str = "cg",
    *,
    tol: float = 1e-6,
    maxiter: int | None = None,
    ridge: float | None = None,
    neumann_steps: int = 20,
    neumann_scale: float = 0.1,
) -> LinearSolver:
  """A `solve(matvec, b)` function for `method` in ("cg", "normal_cg", "gmres", "neumann").

  Args:
    method: which solver (see the module docstring). Default "cg".
    tol: relative residual tolerance of the Krylov solvers. Default 1e-6.
    maxiter: iteration cap of the Krylov solvers (None: the size of b, CG's
      exact-arithmetic bound; GMRES: its own default).
    ridge: adds ridge·v to every matvec (regularises singular inner Hessians). Default None.
    neumann_steps: K for "neumann". Default 20.
    neumann_scale: η for "neumann". Default 0.1.

  Example:
    >>> solve = linear_solver("gmres", tol=1e-8)
  """
  if method not in METHODS:
    raise ValueError(f"unknown linear solver {method!r}; choose one of {METHODS}")
  _checks.check_positive("tol", tol)
  if ridge is not None:
    _checks.check_non_negative("ridge", ridge)
  if maxiter is not None and maxiter < 1:
    raise ValueError(f"maxiter must be >= 1, got {maxiter}")
  if method == "neumann":
    if neumann_steps < 0:
      raise ValueError(f"neumann_steps must be >= 0, got {neumann_steps}")
    _checks.check_positive("neumann_scale", neumann_scale)
    solve = functools.partial(solve_neumann, steps=neumann_steps, scale=neumann_scale)
    if ridge is None:
      return solve
    return lambda matvec, b: solve(lambda v: optax.tree.add_scale(matvec(v), ridge, v), b)
  krylov = {"cg": _backend.solve_cg, "normal_cg": _backend.solve_normal_cg,
            "gmres": _backend.solve_gmres}[method]
  return functools.partial(krylov, tol=tol, maxiter=maxiter, ridge=ridge)
