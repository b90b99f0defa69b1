"""diffGrad's friction coefficient: damp a step where the gradient is steady."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ScaleByFrictionState(NamedTuple):
  """State of `scale_by_friction`."""

  prev_grad: optax.Updates  # incoming gradient of the previous step, zeros at t = 1
  inner_state: optax.OptState


def scale_by_friction(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Multiplies the output of `inner` by diffGrad's friction coefficient.

  With g_t the gradient this transform receives and d_t what `inner` makes of
  it, the output is xi_t * d_t with, elementwise,

    xi_t = sigmoid(|g_{t-1} - g_t|),  g_0 = 0,

  so xi_t lies in [0.5, 1): a coordinate whose gradient did not change gets
  half of `inner`'s step, one whose gradient changed a lot nearly all of it.
  The friction is applied at use time only: `inner`'s state (e.g. Adam's
  first moment) never sees xi. The state is (prev_grad, inner_state): one
  extra parameter-sized buffer. diffGrad is `scale_by_friction` around an
  Adam moment transform.

  xi depends on gradient differences in raw units, so it is not scale
  invariant: scaling the loss up pushes xi to 1 (plain `inner`), scaling it
  down pushes xi to 0.5. Whatever precedes this transform in a chain (e.g.
  coupled L2 decay) is part of the gradient it compares.

  Args:
    inner: the direction to damp, typically `optax.scale_by_adam`-like.

  Returns:
    A `GradientTransformationExtraArgs`; extra arguments go to `inner`.

  References:
    Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks", IEEE TNNLS
    2020. https://arxiv.org/abs/1909.11015 ; official code: https://github.com/shivram1987/diffGrad

  Example:
    >>> import optax
    >>> from gradkit.transforms import scale_by_friction
    >>> tx = optax.chain(scale_by_friction(optax.scale_by_adam()), optax.scale(-1e-3))
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return ScaleByFrictionState(
        prev_grad=optax.tree.zeros_like(params), inner_state=inner.init(params)
    )

  def update_fn(updates, state, params=None, **extra_args):
    direction, inner_state = inner.update(
        updates, state.inner_state, params, **extra_args
    )
    damped = jax.tree.map(
        lambda d, g, prev: d * jax.nn.sigmoid(jnp.abs(prev - g)).astype(d.dtype),
        direction,
        updates,
        state.prev_grad,
    )
    prev_grad = optax.tree.cast_like(updates, state.prev_grad)
    return damped, ScaleByFrictionState(prev_grad=prev_grad, inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
