"""The tail every gradkit recipe shares: decoupled weight decay, then -lr."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from gradkit import _checks
from gradkit.transforms.tree_checks import check_updates_match_params

MaskOrFn = Any | Callable[[optax.Params], Any] | None


def recipe(
    *direction: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """Chains `direction` between the shared head and tail of a recipe.

  p <- p - lr * (d + wd * p), with d the output of `direction`: decoupled
  weight decay (AdamW/Lion style, optax.add_decayed_weights with `mask`) and
  optax.scale_by_learning_rate. Both rates accept schedules; negative
  constants are rejected here, when the optimizer is built.
  """
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_non_negative("weight_decay", weight_decay)
  return optax.chain(
      check_updates_match_params(),
      *direction,
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
