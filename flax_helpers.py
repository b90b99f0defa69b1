"""Flax helpers for the optimizers that need the loss (`obj_fn=`, `sampled_obj_fn=`).

- `TrainState`: a Linen `flax.training.train_state.TrainState` whose
  `apply_gradients` also forwards update keywords (`obj_fn=...`) to
  `tx.update`.
- `nnx_param_function`: a function of an NNX model turned into a function of
  its `nnx.Param` state (what `nnx.Optimizer` hands `tx.update`), the model's
  other state (BatchNorm statistics, RNG counts) held fixed.
- `linen_param_function`: the same for a Linen `apply_fn` and its non-param
  variable collections (`batch_stats`).

Importing this module imports flax; `import gradkit` does not.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Literal

import optax
from flax import nnx
from flax.training import train_state

Params = Any


class TrainState(train_state.TrainState):
  """Flax Linen's `TrainState`, with `apply_gradients` forwarding `obj_fn=` and co. to `tx.update`.

  `apply_gradients(grads=..., **kwargs)` splits `kwargs`: names of the
  dataclass's fields (`step`, `params`, a subclass's `batch_stats`, ...) are
  `replace`d into the new state as in flax; every other name is an update
  keyword, passed as `tx.update(grads, opt_state, params, **those)`. Without
  update keywords it is flax's `apply_gradients` itself (bit-identical). A
  misspelt field name therefore reaches `tx.update`, which may ignore it.
  `create` and every other method are flax's.

  Attributes:
    step: the number of `apply_gradients` calls so far (flax's field).
    apply_fn: the model's apply function (flax's field).
    params: the parameters `tx` updates (flax's field).
    tx: the optax/gradkit transformation (flax's static field).
    opt_state: `tx`'s state (flax's field).

  Example:
    >>> state = TrainState.create(apply_fn=model.apply, params=params,
    ...                           tx=gradkit.create("sophia"))
    >>> state = state.apply_gradients(grads=grads, obj_fn=loss_of_params)
  """

  def apply_gradients(self, *, grads: Any, **kwargs: Any) -> TrainState:
    """Step + 1, new params and opt_state; fields replaced, other kwargs passed to `tx.update`.

    Args:
      grads: gradients with the structure of `params`, as in flax.
      **kwargs: dataclass fields to `replace` (as in flax) and update keywords
        for `tx.update` (`obj_fn=`, `sampled_obj_fn=`, ...).

    Returns:
      The updated state, holding the same `tx`.
    """
    fields = {f.name for f in dataclasses.fields(self)}
    update_kwargs = {k: v for k, v in kwargs.items() if k not in fields}
    if not update_kwargs:
      return super().apply_gradients(grads=grads, **kwargs)
    replaced = {k: v for k, v in kwargs.items() if k in fields}
    tx = replaced.pop("tx", self.tx)
    with_kwargs = optax.GradientTransformationExtraArgs(
        self.tx.init,
        functools.partial(optax.with_extra_args_support(self.tx).update, **update_kwargs))
    staged = self.replace(tx=with_kwargs)
    return super(TrainState, staged).apply_gradients(grads=grads, **replaced).replace(tx=tx)


def nnx_param_function(
    model: nnx.Module,
    fn: Callable[..., Any],
    *,
    mode: Literal["train", "eval", "current"],
    wrt: Any = nnx.Param,
) -> Callable[..., Any]:
  """`fn(model, ...)` as a function of the model's `wrt` state, the rest held fixed.

  Returns `of_params(params, *args, **kwargs) = fn(copy, *args, **kwargs)`
  where `copy` is `model` rebuilt from `params` (the `wrt` state as plain
  arrays: what `nnx.Optimizer(model, tx, wrt=nnx.Param)` passes to
  `tx.update`) and a snapshot, taken now, of every other variable (BatchNorm's
  `batch_stats`, RNG keys and counts), as plain arrays. Each call builds a
  fresh copy, so the probes of Sophia, MeZO, ... never write into `model`'s
  running statistics, and all of them see the same RNG state (the same
  dropout mask). Call it inside the jitted step, after nothing has changed
  the model that the objective should see.

  `mode` sets the copy's mode: "train" (`copy.train()`: BatchNorm normalises
  by the batch's own statistics, dropout on; the loss the gradient saw when
  the step runs in train mode), "eval" (`copy.eval()`: running averages,
  dropout off) or "current" (the model's attributes as they are).

  For `obj_fn`: `nnx_param_function(model, lambda m: loss(m, x, y),
  mode="train")`; for `sampled_obj_fn`:
  `sampled_cross_entropy(nnx_param_function(model, lambda m: m(x),
  mode="train"))`.

  Args:
    model: the NNX model whose parameters the optimizer updates.
    fn: (model, *args, **kwargs) -> value, e.g. the loss on the current batch.
    mode: "train", "eval" or "current"; no default, so the choice is explicit.
    wrt: the filter of the optimized state, as in `nnx.Optimizer`. Default
      `nnx.Param`.

  Returns:
    `of_params(params, *args, **kwargs)`.

  Example:
    >>> obj_fn = nnx_param_function(model, lambda m: ce(m(x), y), mode="train")
    >>> optimizer.update(model, grads, obj_fn=obj_fn)
  """
  if mode not in ("train", "eval", "current"):
    raise ValueError(f"mode must be 'train', 'eval' or 'current', got {mode!r}")
  graphdef, _, rest = nnx.split(model, wrt, ...)
  # Plain arrays: each merge then builds fresh variables instead of putting
  # the model's own ones (which a forward pass would mutate) into the copy.
  rest = nnx.as_pure(rest)

  def of_params(params: Params, *args, **kwargs):
    copy = nnx.merge(graphdef, params, rest)
    if mode == "train":
      copy.train()
    elif mode == "eval":
      copy.eval()
    return fn(copy, *args, **kwargs)

  return of_params


def linen_param_function(
    apply_fn: Callable[..., Any],
    variables: Mapping[str, Any],
    fn: Callable[[Any], Any] | None,
    *args: Any,
    mutable: Any = False,
    **kwargs: Any,
) -> Callable[[Params], Any]:
  """`fn(apply_fn({**variables, "params": params}, *args, ...))` as a function of `params`.

  `variables` holds the non-param collections (`{"batch_stats":
  state.batch_stats}`), held fixed at their current values. Train or eval
  mode is the model's own argument, passed in `args`/`kwargs`
  (`train=True`, `use_running_average=False`, `rngs={"dropout": key}`).
  With `mutable` (e.g. `["batch_stats"]`, needed by BatchNorm in train mode)
  `apply_fn` returns `(outputs, mutated)`; the mutated collections are
  discarded, so the optimizer's probes never change the state's statistics
  (update them from the gradient's own forward pass, as usual).

  Args:
    apply_fn: the module's `apply` (`state.apply_fn`).
    variables: the collections other than "params", e.g. `{"batch_stats": ...}`.
    fn: outputs -> value (the loss of the logits on the current labels), or
      None for the outputs themselves (logits, for `sampled_cross_entropy`).
    *args: positional arguments of `apply_fn` after the variables (the batch).
    mutable: `apply_fn`'s `mutable`. Default False.
    **kwargs: other keyword arguments of `apply_fn`.

  Returns:
    `of_params(params)`.

  Example:
    >>> obj_fn = linen_param_function(
    ...     state.apply_fn, {"batch_stats": state.batch_stats},
    ...     lambda logits: ce(logits, y), x, train=True, mutable=["batch_stats"])
    >>> state = state.apply_gradients(grads=grads, obj_fn=obj_fn)
  """

  def of_params(params: Params):
    outputs = apply_fn({**variables, "params": params}, *args, mutable=mutable, **kwargs)
    if mutable is not False:
      outputs = outputs[0]
    return outputs if fn is None else fn(outputs)

  return of_params
