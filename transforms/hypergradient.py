"""Online learning-rate adaptation by hypergradient descent.

Baydin et al., "Online Learning Rate Adaptation with Hypergradient Descent"
(ICLR 2018): the derivative of the current loss with respect to the previous
step's learning rate is −⟨g_t, u_{t−1}⟩, so
  η_t = clip(η_{t−1} + β ⟨g_t, u_{t−1}⟩, lo, hi),  update_t = −η_t u_t,
where u_t is the base direction (the raw gradient for HD-SGD, Adam's
m̂/(√v̂ + ε) for Adam-HD) and g_t the raw gradient. FedHyper (Wang et al.,
ICLR 2024) applies the idea to federated parameter changes, with its own
momentum, bounds and hypergradient step: its global (FedHyper-G/GM),
server-set local (SL) and client-side local (CL) rules are in
`gradkit.transforms.fedhyper`, not here.

Lives in `transforms/` rather than `implicit/`: it is an ordinary optax
transformation that takes plain gradient trees and needs no inner problem, so
it sits with the other primitives that end a chain (as
`optax.scale_by_learning_rate` does).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks


class ScaleByHypergradientLrState(NamedTuple):
  """learning_rate: η_{t−1}, a scalar in the params' dtype (float32 at least);
  previous_direction: u_{t−1} (zeros before the first step)."""

  learning_rate: jax.Array
  previous_direction: Any
  direction_state: optax.OptState


def scale_by_hypergradient_lr(
    initial_lr: float = 1e-3,
    hyper_lr: float = 1e-3,
    direction: optax.GradientTransformation | None = None,
    lr_bounds: tuple[float, float] = (0.0, float("inf")),
) -> optax.GradientTransformationExtraArgs:
  """Scales `direction`'s output by −η, with η learned online by hypergradient descent.

  Args:
    initial_lr: η₀. Default 1e-3.
    hyper_lr: β, the hypergradient step (units of lr / gradient²); the paper
      uses 1e-3 for SGD-HD and 1e-7 for Adam-HD. Default 1e-3.
    direction: the base transformation giving u_t from raw gradients (e.g.
      `optax.scale_by_adam()`, any gradkit direction); None means u_t = g_t
      (HD-SGD). Extra keyword arguments of `update` are passed on to it. Default None.
    lr_bounds: (lo, hi) clip of η. The paper does not clip; the default
      lo = 0 only keeps η from turning negative (as FedHyper clips).

  Returns:
    A transformation to use as the last element of a chain (it applies the
    sign and the learning rate).

  References:
    Baydin et al., "Online Learning Rate Adaptation with Hypergradient Descent", ICLR 2018.
    https://arxiv.org/abs/1703.04782 ; official code:
    https://github.com/gbaydin/hypergradient-descent

  Example:
    >>> import optax
    >>> tx = scale_by_hypergradient_lr(1e-3, 1e-7, direction=optax.scale_by_adam())
  """
  _checks.check_non_negative("initial_lr", initial_lr)
  _checks.check_non_negative("hyper_lr", hyper_lr)
  lo, hi = lr_bounds
  if not lo <= hi:
    raise ValueError(f"lr_bounds must satisfy lo <= hi, got {lr_bounds}")
  base = optax.with_extra_args_support(direction or optax.identity())

  def init_fn(params):
    # η follows the params' dtype: in float32, 1e-3 is off by 5e-8 relative.
    dtype = jnp.result_type(jnp.float32, *(jnp.result_type(p) for p in jax.tree.leaves(params)))
    return ScaleByHypergradientLrState(
        jnp.asarray(initial_lr, dtype), optax.tree.zeros_like(params), base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    u, direction_state = base.update(updates, state.direction_state, params, **extra_args)
    hypergradient = optax.tree.vdot(updates, state.previous_direction)
    lr = jnp.clip(state.learning_rate + hyper_lr * hypergradient, lo, hi)
    lr = lr.astype(state.learning_rate.dtype)
    scaled = jax.tree.map(lambda d: (-lr * d).astype(d.dtype), u)
    return scaled, ScaleByHypergradientLrState(lr, u, direction_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
