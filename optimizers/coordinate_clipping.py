"""SGD and Adam with coordinate-wise clipping of the top gradient entries.

Pan & Li, "Toward Understanding Why Adam Converges Faster Than SGD for
Transformers" (OPT 2022, arXiv 2306.00204); official code panyan7/adam-vs-sgd
(torch_optimizer/sgd_clip.py, adam_clip.py, algorithm_list.py).
"""

from __future__ import annotations

import jax
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register
from gradkit.transforms.coordinate_clipping import (
    clip_coordinates_top_fraction,
    scale_by_adam_clipped_first_moment,
)


@register("sgd_clip")
def sgd_clip(
    learning_rate: optax.ScalarOrSchedule = 5e-3,
    momentum: jax.typing.ArrayLike = 0.0,
    fraction: float = 0.1,
    threshold_scale: jax.typing.ArrayLike = 1.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """SGDClip (Pan & Li, 2022): torch SGD on the coordinate-clipped gradient.

  d = clip(g) + wd * p (coupled L2, added after clipping as in the official
  code), b <- momentum * b + d (torch heavy ball, b_1 = d: `optax.trace`),
  p <- p - lr * b. Defaults follow the paper's SGDClip run (lr 5e-3,
  fraction 0.1, the class defaults momentum 0 and weight decay 0); with
  momentum 0 coupled and decoupled decay coincide. `fraction` is best kept
  static (`optax.inject_hyperparams(sgd_clip, static_args=("fraction",))`);
  a traced one costs a full sort (see `clip_coordinates_top_fraction`).

  Args:
    learning_rate: step size (float or schedule). Default 5e-3.
    momentum: heavy-ball coefficient in [0, 1). Default 0.0.
    fraction: share of coordinates clipped, over all leaves together. Default 0.1.
    threshold_scale: multiplies the clipping threshold. Default 1.0.
    weight_decay: L2 coefficient added to the clipped gradient (schedulable). Default 0.0.
    mask: which leaves get weight decay (tree or callable), as in optax. Default None (every leaf).

  References:
    Pan & Li, "Toward Understanding Why Adam Converges Faster Than SGD for Transformers", 2023.
    https://arxiv.org/abs/2306.00204 ; official code: https://github.com/panyan7/adam-vs-sgd

  Example:
    >>> import gradkit, jax.numpy as jnp
    >>> tx = gradkit.optimizers.sgd_clip(learning_rate=1e-2, momentum=0.9)
    >>> state = tx.init({"w": jnp.ones((2, 2))})
  """
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_non_negative("weight_decay", weight_decay)
  # The decay is coupled (it enters the momentum), so it is placed before
  # optax.trace and the recipe's decoupled decay is off.
  direction = [
      clip_coordinates_top_fraction(fraction, threshold_scale),
      optax.add_decayed_weights(weight_decay, mask),
  ]
  # A literal 0 (the default) needs no buffer; an array momentum, as
  # inject_hyperparams passes at init and update alike, keeps optax.trace.
  if not (isinstance(momentum, (int, float)) and momentum == 0):
    direction.append(optax.trace(decay=momentum))
  return recipe(*direction, learning_rate=learning_rate)


@register("adam_clip")
def adam_clip(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    fraction: float = 0.5,
    threshold_scale: jax.typing.ArrayLike = 1.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamClip (Pan & Li, 2022): Adam with a coordinate-clipped first moment.

  The first moment averages clip(g), the second the unclipped g
  (`scale_by_adam_clipped_first_moment`), then decoupled weight decay and
  -lr (AdamW). The official class adds torch's coupled L2 before clipping;
  the paper's runs use no weight decay, where both agree (BUILD_NOTES.md).
  fraction = 0 is exactly `optax.adamw`. `fraction` is best kept static,
  as for `sgd_clip`.

  Args:
    learning_rate: step size (float or schedule). Default 1e-3.
    b1: first-moment decay. Default 0.9.
    b2: second-moment decay. Default 0.999.
    eps: added to sqrt(v_hat), as in `optax.scale_by_adam`. Default 1e-8.
    fraction: share of coordinates clipped, over all leaves together. Default 0.5.
    threshold_scale: multiplies the clipping threshold. Default 1.0.
    weight_decay: decoupled decay coefficient (float or schedule). Default 0.0.
    mask: which leaves get weight decay (tree or callable), as in optax. Default None (every leaf).

  References:
    Pan & Li, "Toward Understanding Why Adam Converges Faster Than SGD for Transformers", 2023.
    https://arxiv.org/abs/2306.00204 ; official code: https://github.com/panyan7/adam-vs-sgd

  Example:
    >>> import gradkit, jax.numpy as jnp
    >>> tx = gradkit.optimizers.adam_clip(learning_rate=3e-3)
    >>> state = tx.init({"w": jnp.ones((2, 2))})
  """
  _checks.check_eps("eps", eps)
  return recipe(
      scale_by_adam_clipped_first_moment(fraction, b1, b2, eps, threshold_scale),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )
