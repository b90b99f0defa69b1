"""Adan: adaptive Nesterov momentum, with the official proximal weight decay."""

from __future__ import annotations

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register
from gradkit.transforms.moments import scale_by_adan_official


def _proximal_shrink(
    learning_rate: optax.ScalarOrSchedule, weight_decay: optax.ScalarOrSchedule
) -> optax.GradientTransformation:
  """Multiplies the step by 1 / (1 + lr_t wd_t), on the schedules' own count."""

  def factor(count):
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    wd = weight_decay(count) if callable(weight_decay) else weight_decay
    return 1.0 / (1.0 + lr * wd)

  return optax.scale_by_schedule(factor)


@register("adan")
def adan(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    proximal: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Adan with the official defaults and its proximal weight decay.

  Follows the official sail-sg/Adan code: lr 1e-3, betas (0.98, 0.92, 0.99),
  eps 1e-8, weight_decay 0, no_prox=False. Betas are decay rates (the paper's
  beta_i is 1 - b_i). With u the direction of `scale_by_adan_official`, the
  default proximal decay of the paper's Algorithm 1 and the official code is
  p <- (p - lr u) / (1 + lr wd): the recipe tail's step p - lr (u + wd p),
  shrunk by 1 / (1 + lr wd) on decayed leaves. `proximal=False` (official
  `no_prox=True`) is the plain decoupled decay p <- p - lr (u + wd p), the
  form `optax.adan` uses. The official optional global-norm clipping
  (`max_grad_norm`, off by default) is left to `optax.clip_by_global_norm`
  in front.

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-3.
    b1: Decay rate of the gradient EMA m. Default 0.98.
    b2: Decay rate of the gradient-difference EMA v (also its weight in the
      update). Default 0.92.
    b3: Decay rate of the EMA n of squared corrected gradients. Default 0.99.
    eps: Added to sqrt(n_hat). Default 1e-8.
    weight_decay: Weight-decay rate, a scalar or a schedule. Default 0.0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    proximal: Proximal decay p <- (p - lr u) / (1 + lr wd) as the paper and the
      official code (keyword only); False gives optax's decoupled decay.
      Default True.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models, TPAMI 2024. https://arxiv.org/abs/2208.06677
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_unit_interval("b3", b3)
  _checks.check_eps("eps", eps)
  tx = recipe(
      scale_by_adan_official(b1, b2, b3, eps),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )
  if not proximal:
    return tx
  shrink = _proximal_shrink(learning_rate, weight_decay)
  return optax.chain(tx, shrink if mask is None else optax.masked(shrink, mask))
