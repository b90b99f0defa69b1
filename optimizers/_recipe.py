"""The tail every gradkit recipe shares: decoupled weight decay, then -lr."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.optimizers.matrix_labels import matrix_labels
from gradkit.transforms.tree_checks import check_updates_match_params

MaskOrFn = Any | Callable[[optax.Params], Any] | None
LabelsOrFn = Any | Callable[[optax.Params], Any]


def optax_alias(name: str, value: Any, default: Any, alias: str, alias_value: Any) -> Any:
  """The value of the knob gradkit calls `name` and optax calls `alias`.

  A factory taking optax's spelling as a keyword (default None) calls this
  with both: `alias_value` wins when given, `value` otherwise. Both given
  (`value` is not the very `default` object of the signature, as
  `optax.inject_hyperparams` passes it on) is a ValueError naming both.
  """
  if alias_value is None:
    return value
  if value is not default:
    raise ValueError(f"got both {name}= and {alias}= (optax's name for {name}); pass one")
  return alias_value


def _nan_unless_valid(rate: Any) -> jax.Array:
  return jnp.where(jnp.isfinite(rate) & (rate >= 0), rate, jnp.nan)


def checked_rate(name: str, rate: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
  """`rate` checked when the optimizer is built; its unknown values made NaN if invalid.

  A number is checked now (`_checks.check_rate`) and returned as is. A
  schedule's values, and a traced value (as `optax.inject_hyperparams`
  passes a scheduled hyperparameter), exist only inside the step: a
  negative or non-finite one becomes NaN there, so the update is NaN
  (visible; `gradkit.guard` and `optax.apply_if_finite` skip the step)
  instead of an ascent step or a silent stall. Valid values are unchanged.

  Args:
    name: the user's argument name, for the error message.
    rate: a learning rate or weight decay: a number, a schedule or a tracer.

  Returns:
    `rate`, or a schedule / array equal to it where it is valid.
  """
  _checks.check_rate(name, rate)
  if callable(rate):
    return lambda count: _nan_unless_valid(rate(count))
  if isinstance(rate, jax.core.Tracer):
    return _nan_unless_valid(rate)
  return rate


def _tail(
    learning_rate: optax.ScalarOrSchedule, weight_decay: optax.ScalarOrSchedule, mask: MaskOrFn
) -> tuple[optax.GradientTransformation, ...]:
  return (optax.add_decayed_weights(checked_rate("weight_decay", weight_decay), mask),
          optax.scale_by_learning_rate(checked_rate("learning_rate", learning_rate)))


def descend(
    *direction: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  """direction, then decoupled weight decay, then -lr: p <- p - lr * (d + wd * p).

  Decay is optax.add_decayed_weights with `mask` (AdamW/Lion style), the step
  optax.scale_by_learning_rate. Both rates accept schedules; negative
  constants are rejected here, when the optimizer is built, and a negative
  or non-finite scheduled value makes the update NaN (`checked_rate`).
  """
  return optax.chain(*direction, *_tail(learning_rate, weight_decay, _restricted(mask)))


def _restricted(mask: MaskOrFn) -> MaskOrFn:
  """A mask tree usable inside `optax.partition`, whose branches see only their
  own leaves (the others are `optax.MaskedNode`s); callables pass through."""
  if mask is None or callable(mask):
    return mask

  def restrict(params):
    return jax.tree.map(
        lambda m, p: p if isinstance(p, optax.MaskedNode) else m, mask, params)

  return restrict


def recipe(
    *direction: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """`descend(...)` behind the shared tree check: every single-rule recipe.

  The chain is flat: (tree check, *direction, decay, learning rate).
  """
  return optax.chain(
      check_updates_match_params(), *direction, *_tail(learning_rate, weight_decay, mask))


def resolve_labels(param_labels: LabelsOrFn, params: Any, known: Any, method: str) -> Any:
  """The label tree of `params` (`param_labels` itself, or its value on
  `params`), with a ValueError naming every label outside `known`.

  Args:
    param_labels: a label tree, or a callable params -> label tree.
    params: the parameters.
    known: the labels `method` has rules for.
    method: what the error calls the optimizer ("this optimizer", "trp").
  """
  labels = param_labels(params) if callable(param_labels) else param_labels
  unknown = sorted({str(x) for x in jax.tree.leaves(labels)} - set(known))
  if unknown:
    raise ValueError(f"param_labels use {unknown}, but {method} only has rules for "
                     f"{sorted(known)}")
  return labels


def partitioned_recipe(
    branches: Mapping[str, optax.GradientTransformation], param_labels: LabelsOrFn | None = None
) -> optax.GradientTransformationExtraArgs:
  """One `descend` chain per label, behind the shared tree check.

  `param_labels` is a tree of labels matching the params, or a callable
  params -> such a tree (optax.partition semantics); None means
  `matrix_labels`. (Factories default it to None: `optax.inject_hyperparams`
  would take a callable default for a schedule.) A label with no branch
  raises a ValueError naming it when the optimizer is initialised.
  """
  param_labels = matrix_labels if param_labels is None else param_labels

  def labels_of(params):
    return resolve_labels(param_labels, params, branches, "this optimizer")

  return optax.chain(check_updates_match_params(), optax.partition(dict(branches), labels_of))


def matrix_or_fallback(
    matrix: optax.GradientTransformation,
    fallback: optax.GradientTransformation,
    param_labels: LabelsOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """`matrix` on "matrix" leaves, `fallback` on "embedding", "head" and "vector"."""
  return partitioned_recipe(
      {"matrix": matrix, "embedding": fallback, "head": fallback, "vector": fallback},
      param_labels)


def matrix_recipe(
    matrix_rule: optax.GradientTransformation,
    fallback: optax.GradientTransformation,
    *,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule,
    mask: MaskOrFn,
    param_labels: LabelsOrFn | None,
) -> optax.GradientTransformationExtraArgs:
  """`matrix_rule` on "matrix" leaves, `fallback` on the others; same lr and decay.

  For methods whose papers give the fallback leaves the same learning rate
  and weight decay (GaLore, Natural GaLore, FRUGAL).
  """

  def branch(direction):
    return descend(direction, learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)

  return matrix_or_fallback(branch(matrix_rule), branch(fallback), param_labels)
