"""BO-REP: bilevel optimisation under unbounded smoothness.

Hao, Gong, Liu, "Bilevel Optimization under Unbounded Smoothness" (ICLR 2024);
official code MingruiLiu-ML-Lab/Bilevel-Optimization-under-Unbounded-Smoothness.
Per outer step t:
  1. periodic lower-level update: if t mod I = 0, N warm-started gradient
     steps y ← y − γ∇ᵧg(x_t, y); otherwise y stays (stale by design);
  2. z ≈ [∇²ᵧᵧg]⁻¹∇ᵧf, either by one warm-started step
     z ← z − ν(∇²ᵧᵧg z − ∇ᵧf) ("linear", the official code) or by a truncated
     Neumann series ("neumann");
  3. ĥ = ∇ₓf − ∇²ₓᵧg z; m ← βm + (1−β)ĥ; x ← x − η m / (1e-10 + ‖m‖).
Initialisation refinement runs T₀ lower-level steps at x₀ before the loop.
The normalised step has length η exactly; convergence needs η to decay, so η
accepts an optax schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.implicit.bilevel_solver import BilevelSolver, at_step, gradient_steps, make_solver
from gradkit.implicit.hypergradient import (
    check_bilevel_objectives,
    cross_product,
    inner_hessian_product,
)
from gradkit.implicit.linear_solve import solve_neumann

Tree = Any


class BoRepState(NamedTuple):
  """x, y: outer/inner variables; z: linear-system estimate (like y); momentum (like x)."""

  x: Tree
  y: Tree
  z: Tree
  momentum: Tree
  count: jax.Array
  hypergradient: Tree
  inner_error: jax.Array


def bo_rep(
    outer_fn: Callable[..., jax.Array],
    inner_fn: Callable[..., jax.Array],
    *,
    learning_rate: optax.ScalarOrSchedule = 5e-2,
    momentum: float = 0.9,
    inner_learning_rate: float = 5e-2,
    linear_system_lr: float = 1e-2,
    period: int = 2,
    inner_steps: int = 10,
    refine_steps: int = 0,
    hypergradient_method: str = "linear",
    neumann_steps: int = 10,
    neumann_scale: float = 1e-2,
) -> BilevelSolver:
  """BO-REP solver for min_x f(x, y*(x)); f = `outer_fn`, g = `inner_fn`, both (x, y, *args).

  Defaults are the official data-cleaning settings (η = γ = 5e-2, β = 0.9,
  ν = 1e-2, I = 2, N = 10). `refine_steps = 0` follows the official code,
  where the refresh at step 0 is the initialisation refinement.

  Args:
    outer_fn: f(x, y, *args), scalar.
    inner_fn: g(x, y, *args), scalar, strongly convex in y.
    learning_rate: η, float or schedule of the outer step. Default 5e-2.
    momentum: β of the upper-level momentum. Default 0.9.
    inner_learning_rate: γ of the lower-level gradient steps. Default 5e-2.
    linear_system_lr: ν of the warm-started linear-system step ("linear"). Default 1e-2.
    period: I, lower-level refresh every I outer steps. Default 2.
    inner_steps: N lower-level steps per refresh. Default 10.
    refine_steps: T₀ lower-level steps at x₀ in `init`. Default 0.
    hypergradient_method: "linear" (persistent z) or "neumann". Default "linear".
    neumann_steps: Q of the Neumann series. Default 10.
    neumann_scale: η_N of the Neumann series. Default 1e-2.

  References:
    Hao, Gong & Liu, "Bilevel Optimization under Unbounded Smoothness: A New Algorithm and
    Convergence Analysis", ICLR 2024. https://arxiv.org/abs/2401.09587 ; official code:
    https://github.com/MingruiLiu-ML-Lab/Bilevel-Optimization-under-Unbounded-Smoothness
  """
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_positive("inner_learning_rate", inner_learning_rate)
  _checks.check_positive("linear_system_lr", linear_system_lr)
  _checks.check_positive("neumann_scale", neumann_scale)
  if period < 1 or inner_steps < 0 or refine_steps < 0 or neumann_steps < 0:
    raise ValueError("period must be >= 1 and inner_steps, refine_steps, neumann_steps >= 0, got "
                     f"{period}, {inner_steps}, {refine_steps}, {neumann_steps}")
  if hypergradient_method not in ("linear", "neumann"):
    raise ValueError(f"hypergradient_method must be 'linear' or 'neumann', "
                     f"got {hypergradient_method!r}")

  def lower_steps(x, y, args, num_steps):
    return gradient_steps(lambda v: inner_fn(x, v, *args), y, inner_learning_rate, num_steps)

  def init(x0, y0, *args):
    check_bilevel_objectives(outer_fn, inner_fn, x0, y0, *args)
    y = lower_steps(x0, y0, args, refine_steps)
    zeros_x = optax.tree.zeros_like(x0)
    return BoRepState(x0, y, optax.tree.zeros_like(y), zeros_x, jnp.asarray(0, jnp.int32),
                      zeros_x, jnp.asarray(jnp.inf, jnp.float32))

  def update(state, *args):
    x, count = state.x, state.count
    y = jax.lax.cond(count % period == 0,
                     lambda v: lower_steps(x, v, args, inner_steps), lambda v: v, state.y)
    fx, fy = jax.grad(outer_fn, argnums=(0, 1))(x, y, *args)
    hessian = inner_hessian_product(inner_fn, x, y, *args)
    if hypergradient_method == "linear":
      z = optax.tree.add_scale(state.z, -linear_system_lr,
                               optax.tree.sub(hessian(state.z), fy))
    else:
      z = solve_neumann(hessian, fy, steps=neumann_steps, scale=neumann_scale)
    h = optax.tree.sub(fx, cross_product(inner_fn, x, y, z, *args))
    m = optax.tree.add_scale(optax.tree.scale(momentum, state.momentum), 1.0 - momentum, h)
    step = at_step(learning_rate, count) / (1e-10 + optax.tree.norm(m))
    x = optax.tree.add_scale(x, -step, m)
    inner_error = optax.tree.norm(jax.grad(inner_fn, argnums=1)(state.x, y, *args))
    return BoRepState(x, y, z, m, count + 1, h, inner_error)

  return make_solver(init, update)
