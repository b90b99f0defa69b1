"""Implicit hypergradient of F(x) = f(x, y*(x)), y*(x) = argmin_y g(x, y).

∇F(x) = ∇ₓf − ∇²ₓᵧg · v with ∇²ᵧᵧg · v = ∇ᵧf, all at (x, y*(x)) (implicit
function theorem; e.g. Ghadimi & Wang 2018, Lorraine et al. 2020). The inner
Hessian enters only through `gradkit.curvature_products.hessian_vector_product`
and the cross term through one VJP, so nothing is ever materialised.
Evaluated at an approximate y it is the usual approximate-implicit
("AID") estimate; `HypergradientInfo` reports how well y and v were solved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from gradkit.implicit._validation import check_objective
from gradkit.implicit.linear_solve import LinearSolver, linear_solver
from gradkit.curvature_products import hessian_vector_product

Tree = Any


class HypergradientInfo(NamedTuple):
  """inner_error: ‖∇ᵧg(x, y)‖ (0 at y*); residual: ‖∇²ᵧᵧg v − ∇ᵧf‖ of the linear solve."""

  inner_error: jax.Array
  residual: jax.Array


def check_bilevel_objectives(
    outer_fn: Callable[..., jax.Array], inner_fn: Callable[..., jax.Array], x: Tree, y: Tree,
    *args: Any,
) -> None:
  """Raises a clear ValueError if f or g do not take (x, y, *args) to a scalar.

  Catches swapped or misshaped outer/inner variables before any solve, naming
  the shapes of both.

  Args:
    outer_fn: f(x, y, *args), expected to return a scalar.
    inner_fn: g(x, y, *args), expected to return a scalar.
    x: the outer variable (a tree).
    y: the inner variable (a tree).
    *args: data passed to both objectives.
  """
  for name, fn in (("outer_fn", outer_fn), ("inner_fn", inner_fn)):
    check_objective(name, fn, x, y, *args, roles=("outer x", "inner y"))


def inner_hessian_product(
    inner_fn: Callable[..., jax.Array], x: Tree, y: Tree, *args: Any
) -> Callable[[Tree], Tree]:
  """v ↦ ∇²ᵧᵧ inner_fn(x, y, *args) · v."""
  def in_y(y_, x_, *a):
    return inner_fn(x_, y_, *a)
  return lambda v: hessian_vector_product(in_y, y, v, x, *args)


def cross_product(
    inner_fn: Callable[..., jax.Array], x: Tree, y: Tree, v: Tree, *args: Any
) -> Tree:
  """∇²ₓᵧ inner_fn(x, y, *args) · v (a tree like x), by one VJP of ∇ᵧ inner_fn."""
  def grad_y(x_):
    return jax.grad(inner_fn, argnums=1)(x_, y, *args)
  return jax.vjp(grad_y, x)[1](v)[0]


def implicit_hypergradient(
    outer_fn: Callable[..., jax.Array],
    inner_fn: Callable[..., jax.Array],
    x: Tree,
    y: Tree,
    *args: Any,
    solve: str | LinearSolver = "cg",
) -> tuple[Tree, HypergradientInfo]:
  """∇ₓ f(x, y*(x)) by the implicit function theorem, at the given y ≈ y*(x).

  Args:
    outer_fn: f(x, y, *args), scalar.
    inner_fn: g(x, y, *args), scalar, strictly convex in y.
    x: outer variables.
    y: inner solution (exact hypergradient only at y = y*(x)).
    *args: data passed to both objectives (not differentiated).
    solve: linear solver for ∇²ᵧᵧg v = ∇ᵧf: a name ("cg", "neumann", ...) or
      `solve(matvec, b)`, e.g. `linear_solver("neumann", neumann_steps=50)`. Default "cg".

  Returns:
    (hypergradient shaped like x, HypergradientInfo).

  References:
    Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022.
    https://arxiv.org/abs/2105.15183 ; official code: https://github.com/google/jaxopt

  Example:
    >>> import jax.numpy as jnp
    >>> f = lambda x, y: 0.5 * jnp.sum((y - 1.0) ** 2)
    >>> g = lambda x, y: 0.5 * jnp.sum((y - x) ** 2)
    >>> hg, info = implicit_hypergradient(f, g, jnp.zeros(2), jnp.zeros(2))
  """
  check_bilevel_objectives(outer_fn, inner_fn, x, y, *args)
  solve = linear_solver(solve) if isinstance(solve, str) else solve
  fx, fy = jax.grad(outer_fn, argnums=(0, 1))(x, y, *args)
  hessian = inner_hessian_product(inner_fn, x, y, *args)
  v = solve(hessian, fy)
  hypergradient = optax.tree.sub(fx, cross_product(inner_fn, x, y, v, *args))
  residual = optax.tree.norm(optax.tree.sub(hessian(v), fy))
  inner_error = optax.tree.norm(jax.grad(inner_fn, argnums=1)(x, y, *args))
  return hypergradient, HypergradientInfo(inner_error, residual)
