"""LV-HBA: Hessian-free bilevel solver for lower levels with coupled constraints.

Yao, Yu, Zeng, Zhang, "Constrained Bi-Level Optimization: Proximal Lagrangian
Value Function Approach and Hessian-free Algorithm" (ICLR 2024); official code
SUSTech-Optimization/LV-HBA. Problem: min_{x, y} F(x, y) s.t.
y ∈ argmin_y { f(x, y) : g(x, y) ≤ 0 (or = 0) }. The lower-level value is
replaced by the proximal Lagrangian value function
v_γ(x, y, z) = min_θ max_{λ≥0} f(x, θ) + λᵀg(x, θ) + ‖θ − y‖²/(2γ₁) − ‖λ − z‖²/(2γ₂),
whose saddle point (θ, λ) is tracked by one gradient descent–ascent step per
iteration; then x, y take a projected step on F/c_k + f − v_γ, and z a step
towards λ, with c_k = c̲ (k + 1)^p increasing. Per iteration, as in the code:
  d_θ = ∇ᵧf(x, θ) + ∇ᵧ(λᵀg)(x, θ) + (θ − y)/γ₁,  d_λ = −g(x, θ) + (λ − z)/γ₂,
  θ ← θ − η d_θ,  λ ← clip(λ − η d_λ, box);
  d_x = ∇ₓF/c_k + ∇ₓf(x, y) − ∇ₓf(x, θ) − ∇ₓ(λᵀg)(x, θ),
  d_y = ∇ᵧF/c_k + ∇ᵧf(x, y) − (y − θ)/γ₁,
  (x, y) ← Proj_C((x, y) − α(d_x, d_y)),  z ← clip(z + β(λ − z)/γ₂, box).
The box is [0, u] for inequalities and [−u, u] for equalities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.implicit.bilevel_solver import BilevelSolver, make_solver
from gradkit.implicit.hypergradient import check_bilevel_objectives

Tree = Any


class LvHbaState(NamedTuple):
  """theta (like y) and multipliers (one per constraint) track the proximal saddle point;
  center is z, the proximal centre of the multipliers."""

  x: Tree
  y: Tree
  theta: Tree
  multipliers: jax.Array
  center: jax.Array
  count: jax.Array
  hypergradient: Tree
  inner_error: jax.Array


def lv_hba(
    upper_fn: Callable[..., jax.Array],
    lower_fn: Callable[..., jax.Array],
    constraint_fn: Callable[..., jax.Array] | None = None,
    *,
    equality: bool = False,
    learning_rate: float = 0.008,
    center_lr: float = 0.02,
    inner_learning_rate: float = 0.01,
    gamma1: float = 10.0,
    gamma2: float = 10.0,
    penalty_base: float = 0.025,
    penalty_power: float = 0.3,
    multiplier_bound: float = 1000.0,
    initial_multiplier: float = 1.0,
    initial_center: float = -1.0,
    project_xy: Callable[[Tree, Tree], tuple[Tree, Tree]] | None = None,
) -> BilevelSolver:
  """LV-HBA solver; F = `upper_fn`, f = `lower_fn`, g = `constraint_fn`, all (x, y, *args).

  Defaults are the official toy-example settings (α = 0.008, β = 0.02,
  η = 0.01, γ₁ = γ₂ = 10, c_k = 0.025 (k + 1)^0.3, u = 1000, λ₀ = 1, z₀ = −1;
  initial values are clipped into the multiplier box). Convergence is slow:
  the bias decays like 1/c_k.

  Args:
    upper_fn: F(x, y, *args), scalar.
    lower_fn: f(x, y, *args), scalar.
    constraint_fn: g(x, y, *args) -> vector of constraints (None: unconstrained
      lower level, no multipliers). Default None.
    equality: constraints are g = 0 (multipliers free in sign). Default False.
    learning_rate: α of the (x, y) step. Default 0.008.
    center_lr: β of the multiplier-centre step. Default 0.02.
    inner_learning_rate: η of the (θ, λ) descent–ascent step. Default 0.01.
    gamma1: γ₁, proximal weight of θ around y. Default 10.0.
    gamma2: γ₂, proximal weight of λ around z. Default 10.0.
    penalty_base: c̲ of c_k = c̲ (k + 1)^p. Default 0.025.
    penalty_power: p ∈ (0, 1/2). Default 0.3.
    multiplier_bound: u of the multiplier box. Default 1000.0.
    initial_multiplier: λ₀. Default 1.0.
    initial_center: z₀. Default -1.0.
    project_xy: joint projection (x, y) ↦ Proj_C(x, y) (default: none).

  References:
    Yao, Yu, Zeng & Zhang, "Constrained Bi-Level Optimization: Proximal Lagrangian Value Function
    Approach and Hessian-free Algorithm", ICLR 2024. https://arxiv.org/abs/2401.16164 ; official
    code: https://github.com/SUSTech-Optimization/LV-HBA
  """
  for name, value in (("learning_rate", learning_rate), ("center_lr", center_lr),
                      ("inner_learning_rate", inner_learning_rate), ("gamma1", gamma1),
                      ("gamma2", gamma2), ("penalty_base", penalty_base),
                      ("multiplier_bound", multiplier_bound)):
    _checks.check_positive(name, value)
  if not 0.0 < penalty_power < 0.5:
    raise ValueError(f"penalty_power must lie in (0, 1/2), got {penalty_power}")
  if constraint_fn is None:
    def constraint_fn(x, y, *args):
      return jnp.zeros((0,), jnp.float32)
  project_xy = project_xy or (lambda x, y: (x, y))
  lower_bound = -multiplier_bound if equality else 0.0
  def clip(v):
    return jnp.clip(v, lower_bound, multiplier_bound)

  def lagrangian(x, y, multipliers, args):
    return lower_fn(x, y, *args) + jnp.vdot(multipliers, constraint_fn(x, y, *args))

  def init(x0, y0, *args):
    check_bilevel_objectives(upper_fn, lower_fn, x0, y0, *args)
    shape = jax.eval_shape(constraint_fn, x0, y0, *args).shape
    if len(shape) != 1:
      raise ValueError(f"constraint_fn must return a vector, got shape {shape}")
    multipliers = clip(jnp.full(shape, initial_multiplier, jnp.float32))
    center = clip(jnp.full(shape, initial_center, jnp.float32))
    return LvHbaState(x0, y0, y0, multipliers, center, jnp.asarray(0, jnp.int32),
                      optax.tree.zeros_like(x0), jnp.asarray(jnp.inf, jnp.float32))

  def update(state, *args):
    x, y, theta, lam, z = state.x, state.y, state.theta, state.multipliers, state.center
    c = penalty_base * (state.count + 1.0) ** penalty_power
    d_theta = optax.tree.add_scale(jax.grad(lagrangian, argnums=1)(x, theta, lam, args),
                                   1.0 / gamma1, optax.tree.sub(theta, y))
    d_lam = -constraint_fn(x, theta, *args) + (lam - z) / gamma2
    theta = optax.tree.add_scale(theta, -inner_learning_rate, d_theta)
    lam = clip(lam - inner_learning_rate * d_lam)

    upper_x, upper_y = jax.grad(upper_fn, argnums=(0, 1))(x, y, *args)
    lower_x, lower_y = jax.grad(lower_fn, argnums=(0, 1))(x, y, *args)
    d_x = optax.tree.add_scale(
        optax.tree.sub(lower_x, jax.grad(lagrangian)(x, theta, lam, args)), 1.0 / c, upper_x)
    d_y = optax.tree.add_scale(
        optax.tree.add_scale(lower_y, -1.0 / gamma1, optax.tree.sub(y, theta)), 1.0 / c, upper_y)
    new_x, new_y = project_xy(optax.tree.add_scale(x, -learning_rate, d_x),
                              optax.tree.add_scale(y, -learning_rate, d_y))
    z = clip(z + center_lr * (lam - z) / gamma2)
    inner_error = optax.tree.norm(jax.grad(lagrangian, argnums=1)(x, theta, lam, args))
    # The outer direction in the hyper-objective's scale (× c_k), comparable to ∇F.
    return LvHbaState(new_x, new_y, theta, lam, z, state.count + 1, optax.tree.scale(c, d_x),
                      inner_error)

  return make_solver(init, update)
