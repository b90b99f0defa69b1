"""Lion: the sign of an interpolated momentum, with decoupled weight decay."""

from __future__ import annotations

from typing import Any

import optax

from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register
from gradkit.transforms.sign_momentum import scale_by_sign_momentum


@register("lion")
def lion(
    learning_rate: optax.ScalarOrSchedule = 1e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Lion (EvoLved Sign Momentum): p <- p - lr * (sign(b1 m + (1-b1) g) + wd p).

  `scale_by_sign_momentum` (optax.scale_by_lion) then gradkit's recipe tail,
  in the order of `optax.lion` and the official optax code. Defaults follow
  the official code (google/automl lion/: b1=0.9, b2=0.99, weight_decay=0.0;
  lr=1e-4 as in its PyTorch version). The paper advises an lr 3-10x smaller
  and a weight decay 3-10x larger than AdamW's, since the sign update has a
  larger norm.

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-4.
    b1: Interpolation weight of the momentum inside the sign. Default 0.9.
    b2: Decay rate of the momentum. Default 0.99.
    weight_decay: Decoupled weight-decay rate, a scalar or a schedule.
      Default 0.0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    mu_dtype: dtype of the momentum; None keeps the parameters' dtype.
      Default None.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023.
    https://arxiv.org/abs/2302.06675
  """
  return recipe(
      scale_by_sign_momentum(b1, b2, mu_dtype),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )
