"""Fully first-order penalty method for bilevel optimisation.

Kwon, Kwon, Wright, Nowak, "On Penalty Methods for Nonconvex Bilevel
Optimization and First-Order Stochastic Approximation" (ICLR 2024); the
F2SA/F2BA double-loop template (repo TrueNobility303/F2BA). The penalty
hyper-objective ψ_σ(x) = min_y f(x, y) + (g(x, y) − min_z g(x, z))/σ is
O(σ)-close to F(x) = f(x, y*(x)) together with its gradient
∇ψ_σ(x) = ∇ₓf(x, y_σ) + [∇ₓg(x, y_σ) − ∇ₓg(x, z)]/σ,
y_σ = argmin_y σf + g, z = argmin_z g. Per outer step: T warm-started
(projected) gradient steps on y (objective σf + g) and on z (objective g),
then one (projected) step on x along ∇ψ_σ. Gradients only: no Hessians, no
linear solves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.implicit.bilevel_solver import BilevelSolver, at_step, gradient_steps, make_solver
from gradkit.implicit.hypergradient import check_bilevel_objectives

Tree = Any


class PenaltyState(NamedTuple):
  """y ≈ argmin σf + g, z ≈ argmin g (both like y); inner_error = max of their gradient norms."""

  x: Tree
  y: Tree
  z: Tree
  count: jax.Array
  hypergradient: Tree
  inner_error: jax.Array


def penalty_method(
    outer_fn: Callable[..., jax.Array],
    inner_fn: Callable[..., jax.Array],
    *,
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    inner_learning_rate: float = 1e-2,
    sigma: optax.ScalarOrSchedule = 1e-2,
    inner_steps: int = 10,
    project_x: Callable[[Tree], Tree] | None = None,
    project_y: Callable[[Tree], Tree] | None = None,
) -> BilevelSolver:
  """Penalty (F2SA-style) solver for min_x f(x, y*(x)); f, g both (x, y, *args).

  The paper gives rates, not constants; the defaults are a small-step
  starting point. σ sets the bias (O(σ)) and, with the 1/σ factor, how
  accurate the inner loops must be: lower it together with
  `inner_learning_rate` ≲ 1/(σL_f + L_g) and more `inner_steps`.

  Args:
    outer_fn: f(x, y, *args), scalar.
    inner_fn: g(x, y, *args), scalar.
    learning_rate: outer step, float or schedule of the outer step. Default 1e-2.
    inner_learning_rate: step of the y and z loops. Default 1e-2.
    sigma: penalty weight σ > 0 on f (float or schedule; F2SA's λ = 1/σ). Default 1e-2.
    inner_steps: T steps of each inner loop per outer step. Default 10.
    project_x: projection onto the outer feasible set (default: none).
    project_y: projection onto the inner feasible set (default: none).

  References:
    Kwon, Kwon, Wright & Nowak, "On Penalty Methods for Nonconvex Bilevel Optimization and
    First-Order Stochastic Approximation", ICLR 2024. https://arxiv.org/abs/2309.01753
  """
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_positive("inner_learning_rate", inner_learning_rate)
  _checks.check_positive("sigma", sigma)
  if inner_steps < 1:
    raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
  project_x = project_x or (lambda v: v)

  def init(x0, y0, *args):
    check_bilevel_objectives(outer_fn, inner_fn, x0, y0, *args)
    return PenaltyState(x0, y0, y0, jnp.asarray(0, jnp.int32), optax.tree.zeros_like(x0),
                        jnp.asarray(jnp.inf, jnp.float32))

  def update(state, *args):
    x, count = state.x, state.count
    s = at_step(sigma, count)
    def penalised(v):
      return s * outer_fn(x, v, *args) + inner_fn(x, v, *args)
    y = gradient_steps(penalised, state.y, inner_learning_rate, inner_steps, project_y)
    z = gradient_steps(lambda v: inner_fn(x, v, *args), state.z, inner_learning_rate,
                       inner_steps, project_y)
    def grad_x(fn, v):
      return jax.grad(fn)(x, v, *args)
    gap = optax.tree.sub(grad_x(inner_fn, y), grad_x(inner_fn, z))
    h = optax.tree.add_scale(grad_x(outer_fn, y), 1.0 / s, gap)
    x = project_x(optax.tree.add_scale(x, -at_step(learning_rate, count), h))
    inner_error = jnp.maximum(optax.tree.norm(jax.grad(penalised)(y)),
                              optax.tree.norm(jax.grad(inner_fn, argnums=1)(state.x, z, *args)))
    return PenaltyState(x, y, z, count + 1, h, inner_error)

  return make_solver(init, update)
