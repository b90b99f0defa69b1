"""Curvature-vector products of a loss, without forming any matrix.

Every second-order method in gradkit reaches curvature only through these.
The module imports only jax and sits below every layer (transforms,
second_order, implicit), so each can use it without importing another:

- `hessian_vector_product`: H v for H the Hessian of a scalar function of a
  parameter tree, by forward-over-reverse differentiation (Pearlmutter, "Fast
  Exact Multiplication by the Hessian", 1994). Costs about two gradients.
- `gauss_newton_vector_product`: G v for G = Jᵀ H_L J, the Gauss-Newton matrix
  of a loss L of model outputs f(θ) (Schraudolph, "Fast Curvature Matrix-Vector
  Products for Second-Order Gradient Descent", 2002). G is positive
  semi-definite whenever L is convex in the outputs (cross-entropy, squared
  error). For cross-entropy with softmax outputs G equals the Fisher matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Params = Any


def hessian_vector_product(
    fn: Callable[..., jax.Array], params: Params, vector: Params, *args: Any
) -> Params:
  """∇²fn(params, *args) · vector, a tree shaped like `params`.

  `fn(params, *args)` must return a scalar; the Hessian is taken with
  respect to `params` only.
  """
  return jax.jvp(lambda p: jax.grad(fn)(p, *args), (params,), (vector,))[1]


def gauss_newton_vector_product(
    model_fn: Callable[[Params], Any],
    loss_of_outputs: Callable[[Any], jax.Array],
    params: Params,
    vector: Params,
) -> Params:
  """Jᵀ ∇²L J · vector for outputs = model_fn(params), L = loss_of_outputs(outputs).

  J is the Jacobian of `model_fn` at `params`; the Hessian of L is taken with
  respect to the outputs only, so second derivatives of the model never enter.
  """
  outputs, jv = jax.jvp(model_fn, (params,), (vector,))
  hjv = hessian_vector_product(loss_of_outputs, outputs, jv)
  _, pullback = jax.vjp(model_fn, params)
  return pullback(hjv)[0]
