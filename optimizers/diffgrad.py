"""diffGrad (Dubey et al., IEEE TNNLS 2020): Adam damped by gradient friction."""

from __future__ import annotations

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, checked_rate, recipe
from gradkit.registry import register
from gradkit.transforms.friction import scale_by_friction
from gradkit.transforms.moments import scale_by_adam_eps_before_correction


@register("diffgrad")
def diffgrad(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    decoupled_weight_decay: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """diffGrad: Adam whose step is scaled by xi = sigmoid(|g_{t-1} - g_t|).

  Follows the fixed official implementation (diffGrad_v2.py):

    g <- g + wd * p                          (coupled L2, as in the paper's code)
    m, v <- Adam moments of g
    xi = sigmoid(|g_prev - g|);  g_prev <- g
    p <- p - lr * sqrt(1 - b2^t) / (1 - b1^t) * xi * m / (sqrt(v) + eps)

  Weight decay is COUPLED by default, as in the official code (`grad.add_(wd,
  p)` before the moments, so the friction difference sees it too:
  optax.add_decayed_weights placed first, with `mask`).
  `decoupled_weight_decay=True` gives the AdamW form instead: the moments and
  the friction see the raw gradient and p <- p - lr (u + wd p) (the shared
  recipe tail's decay). eps is added to sqrt(v) before bias correction (see
  `gradkit.transforms.scale_by_adam_eps_before_correction`). Every step lies
  between 0.5x and 1x the corresponding Adam step, coordinate-wise.

  Args:
    learning_rate: step size, float or optax schedule. Default 1e-3.
    b1: Adam's first-moment decay rate. Default 0.9.
    b2: Adam's second-moment decay rate. Default 0.999.
    eps: added to sqrt(v) before bias correction. Default 1e-8.
    weight_decay: L2 coefficient (float or schedule), coupled unless
      `decoupled_weight_decay`. Default 0.0.
    mask: tree or callable selecting the leaves that get weight decay. Default None (every leaf).
    decoupled_weight_decay: True decays the weights outside the adaptive
      step (AdamW-style); False adds wd * p to the gradient, as the official
      code does (static bool). Default False.

  References:
    Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks", IEEE TNNLS
    2020. https://arxiv.org/abs/1909.11015 ; official code: https://github.com/shivram1987/diffGrad

  Example:
    >>> import gradkit
    >>> tx = gradkit.optimizers.diffgrad(learning_rate=1e-3)
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("eps", eps)
  if not isinstance(decoupled_weight_decay, bool):
    raise ValueError(
        f"decoupled_weight_decay must be a bool, got {decoupled_weight_decay!r}")
  direction = scale_by_friction(scale_by_adam_eps_before_correction(b1, b2, eps))
  if decoupled_weight_decay:
    return recipe(direction, learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)
  return recipe(
      optax.add_decayed_weights(checked_rate("weight_decay", weight_decay), mask), direction,
      learning_rate=learning_rate)
