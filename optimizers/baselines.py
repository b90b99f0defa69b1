"""optax's own AdamW, Adam and SGD under gradkit's registry, as baselines.

They are registered so experiment configs and the conformance suite can name
them beside gradkit's methods; the recipes are optax's, with gradkit's
shared head (tree check) and tail (decoupled weight decay, learning rate).
"""

from __future__ import annotations

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register


@register("adamw")
def adamw(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamW (Loshchilov & Hutter, 2019): optax.scale_by_adam with decoupled decay.

  p <- p - lr (m_hat / (sqrt(v_hat) + eps) + wd p), optax's Adam moments in
  gradkit's recipe (tree check, decay on the `mask`ed leaves, learning rate).

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-3.
    b1: Decay rate of the first moment. Default 0.9.
    b2: Decay rate of the second moment. Default 0.999.
    eps: Added to sqrt(v_hat) in the denominator. Default 1e-8.
    weight_decay: Decoupled weight-decay rate (multiplied by the learning
      rate), a scalar or a schedule. Default 1e-4.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019. https://arxiv.org/abs/1711.05101
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("eps", eps)
  return recipe(
      optax.scale_by_adam(b1, b2, eps),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )


@register("sgd")
def sgd(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """SGD with heavy-ball momentum (optax.trace) and decoupled weight decay.

  p <- p - lr (m + wd p) with m <- momentum m + g (Nesterov: g + momentum m).
  Plain SGD with momentum predates arXiv (Polyak 1964; Sutskever et al.,
  ICML 2013), so it has no arXiv reference.

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-2.
    momentum: Momentum decay; 0 gives plain SGD. Default 0.9.
    nesterov: Use Nesterov momentum. Default False.
    weight_decay: Decoupled weight-decay rate, a scalar or a schedule.
      Default 0.0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  _checks.check_unit_interval("momentum", momentum)
  return recipe(
      optax.trace(decay=momentum, nesterov=nesterov),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )
