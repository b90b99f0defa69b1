"""Curvature matrices of a loss as matrix-free operators v -> M v on parameter trees.

Each builder closes over one fixed objective and point and returns a
function of a tree shaped like the params; the products come from
`gradkit.curvature_products`. Users: the approximate-Hessian Newton
method (`approx_newton`) and the Lanczos spectrum (`lanczos`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gradkit.curvature_products import gauss_newton_vector_product, hessian_vector_product

Params = Any
Operator = Callable[[Params], Params]


def hessian_operator(fn: Callable[..., jax.Array], params: Params, *args: Any) -> Operator:
  """v -> ∇²fn(params, *args) v (Pearlmutter's forward-over-reverse product).

  Args:
    fn: scalar function fn(params, *args).
    params: the point at which the Hessian is taken.
    *args: further arguments of `fn` (not differentiated).

  Returns:
    The linear operator v -> H v on trees like `params`.
  """
  return lambda v: hessian_vector_product(fn, params, v, *args)


def gauss_newton_operator(
    model_fn: Callable[[Params], Any], loss_of_outputs: Callable[[Any], jax.Array], params: Params
) -> Operator:
  """v -> Jᵀ ∇²L J v for L = loss_of_outputs(model_fn(params)) (Schraudolph 2002).

  Args:
    model_fn: params -> model outputs.
    loss_of_outputs: outputs -> scalar loss.
    params: the point at which the Gauss-Newton matrix is taken.

  Returns:
    The linear operator v -> G v on trees like `params`.
  """
  return lambda v: gauss_newton_vector_product(model_fn, loss_of_outputs, params, v)


def empirical_fisher_operator(
    per_example_loss_fn: Callable[[Params], jax.Array], params: Params
) -> Operator:
  """v -> (1/n) Σ_i ∇ℓ_i (∇ℓ_iᵀ v), the empirical Fisher of n per-example losses.

  `per_example_loss_fn(params)` returns the vector (ℓ_1..ℓ_n) whose mean is
  the objective. With J its Jacobian, F v = Jᵀ (J v) / n: one JVP and one VJP,
  no per-example gradient is materialised.

  Args:
    per_example_loss_fn: params -> vector of the n per-example losses.
    params: the point at which the Fisher is taken.

  Returns:
    The linear operator v -> F v on trees like `params`.
  """
  _, pullback = jax.vjp(per_example_loss_fn, params)

  def matvec(v):
    losses, jv = jax.jvp(per_example_loss_fn, (params,), (v,))
    return jax.tree.map(lambda x: x / jnp.size(losses), pullback(jv)[0])

  return matvec
