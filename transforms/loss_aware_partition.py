"""`partition`, `multi_transform` and `masked` whose branches' objectives see the full parameters.

optax's `partition`, `multi_transform` and `masked` hand each branch a
parameter tree with `optax.MaskedNode` in place of the leaves it does not own,
and pass the update's extra arguments on unchanged. An optimizer that calls a
function of the parameters (Sophia's `obj_fn`, Sophia-G's `sampled_obj_fn`,
approx_newton's `model_fn`, ...) then calls it on that tree and fails
(`TypeError: unsupported operand type(s) for +: 'LinearizeTracer' and
'MaskedNode'`). The drop-ins here rewrite each such argument `f` into

    lambda branch_params, *args, **kwargs: f(merge(branch_params, params), *args, **kwargs)

where `merge` takes the branch's leaves where they are not `MaskedNode` and the
update's `params` elsewhere, so the objective always sees a full tree: its
value is the full model's loss and its derivatives are those of the branch's
leaves with every other leaf held at its current value.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import jax
import optax

# The update keywords that hold functions of the parameters and are rewritten.
PARAMETER_FUNCTION_ARGS = ("obj_fn", "sampled_obj_fn", "model_fn", "per_example_loss_fn")


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _merge(branch_params: Any, params: Any) -> Any:
  """`branch_params`' leaves where they are not MaskedNode, `params`' subtrees elsewhere."""
  return jax.tree.map(lambda b, p: p if _is_masked(b) else b, branch_params, params,
                      is_leaf=_is_masked)


def _on_full_params(fn: Callable, params: Any) -> Callable:
  def on_branch(branch_params, *args, **kwargs):
    return fn(_merge(branch_params, params), *args, **kwargs)

  return on_branch


def loss_aware(
    inner: optax.GradientTransformation,
    names: Iterable[str] = PARAMETER_FUNCTION_ARGS,
) -> optax.GradientTransformationExtraArgs:
  """`inner` (a partition or mask) with its parameter-function extra args seeing full trees.

  `inner`'s `init` is unchanged. Its `update(updates, state, params, **extra)`
  receives each extra argument named in `names` rewritten as
  `f(merge(branch_params, params), ...)`: the branch's leaves where they are
  not `optax.MaskedNode`, the current `params` elsewhere. Nested wrappers
  compose: an inner merge leaves `MaskedNode` where the outer one fills in.
  Without such an argument, `update` is `inner.update` itself (bit-identical).

  Args:
    inner: an optax transformation that hands its branches masked trees
      (`optax.partition`, `optax.masked`, or a chain holding them).
    names: the update keywords to rewrite. Default `PARAMETER_FUNCTION_ARGS`.

  Returns:
    An `optax.GradientTransformationExtraArgs`. Its update raises a
    `ValueError` naming `params` when a rewritten argument is given without
    `params`.

  Example:
    >>> tx = loss_aware(optax.masked(optax.sgd(0.1), {"w": True, "b": False}))
  """
  names = tuple(names)
  inner = optax.with_extra_args_support(inner)

  def update_fn(updates, state, params=None, **extra_args):
    given = [n for n in names if extra_args.get(n) is not None]
    if given and params is None:
      raise ValueError(
          f"update needs params= (the full parameter tree) to pass {', '.join(given)} to "
          "the branches: they evaluate it on the branch's leaves merged with params")
    for name in given:
      extra_args[name] = _on_full_params(extra_args[name], params)
    return inner.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def partition(
    transforms: Mapping[Hashable, optax.GradientTransformation],
    param_labels: Any | Callable[[Any], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """`optax.partition` whose branches' objectives (`obj_fn=`, ...) see the full parameters.

  Same arguments, state and updates as `optax.partition`; each extra argument
  named in `PARAMETER_FUNCTION_ARGS` reaches a branch as a function of that
  branch's leaves, the other leaves held at the update's `params` (see
  `loss_aware`). A loss-needing optimizer on a subset of the parameters
  (Sophia on the weight matrices, AdamW elsewhere) then works as it would by
  hand on its half.

  Args:
    transforms: label -> transformation, as in `optax.partition`.
    param_labels: a label tree (a prefix of the params) or a function of the
      params returning one, as in `optax.partition`.
    mask_compatible_extra_args: passed to `optax.partition`. Default False.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Example:
    >>> tx = partition({"hessian": gradkit.create("sophia"), "adam": optax.adamw(1e-3)},
    ...                lambda p: jax.tree.map(lambda x: "hessian" if x.ndim == 2 else "adam", p))
    >>> # tx.update(grads, state, params, obj_fn=loss_of_all_params)
  """
  return loss_aware(optax.partition(transforms, param_labels,
                                    mask_compatible_extra_args=mask_compatible_extra_args))


multi_transform = partition


def masked(
    inner: optax.GradientTransformation,
    mask: Any | Callable[[Any], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """`optax.masked` whose inner objective (`obj_fn=`, ...) sees the full parameters.

  Same arguments, state and updates as `optax.masked`; each extra argument
  named in `PARAMETER_FUNCTION_ARGS` reaches `inner` as a function of the
  masked-in leaves, the others held at the update's `params` (see
  `loss_aware`).

  Args:
    inner: the transformation applied to the masked-in leaves.
    mask: a boolean tree (a prefix of the params) or a function of the params
      returning one, as in `optax.masked`.
    mask_compatible_extra_args: passed to `optax.masked`. Default False.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Example:
    >>> tx = masked(gradkit.create("mezo", learning_rate=1e-3), {"w": True, "b": False})
    >>> # tx.update(params, state, params, obj_fn=loss_of_all_params)
  """
  return loss_aware(optax.masked(inner, mask,
                                 mask_compatible_extra_args=mask_compatible_extra_args))
