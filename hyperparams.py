"""`optax.inject_hyperparams` that finds a factory's static options by itself.

`optax.inject_hyperparams` turns every number it is given (and every numeric
default) into an array in the state, and takes every callable for a
schedule. gradkit's ranks, periods, step counts, seeds, block sizes, label
trees and per-layer rules cannot be arrays: under plain optax they have to
be listed in `static_args`, or the factory rejects them (`rank must be an
int >= 1, got Array(4, ...)`). `gradkit.inject_hyperparams` lists them
itself, argument by argument, from the value given (or the default) and the
factory's signature:

- injected (in `state.hyperparams`, schedulable): a float (or a number
  given for a float-valued argument: an int `learning_rate=1` is taken as
  1.0); any number or callable given to an argument annotated as a schedule
  (`optax.ScalarOrSchedule`: `learning_rate`, `weight_decay`,
  `adam_learning_rate`); a callable given to a numeric argument with a
  number default (`b1=schedule`, as optax); an `optax.StatefulSchedule`; a
  jax or numpy array, as given;
- static (passed to the factory as given): ints (ranks, periods,
  iteration counts, seeds, sizes: each sets a shape or a loop, so none is
  schedulable; `sophia`'s `update_interval` and `approx_newton`'s
  `max_tries` included), bools, strings, None, tuples, lists, dicts and
  other pytrees (`param_labels`, `mask` trees, `ns_coefficients`),
  callables given to any other argument (`param_labels` / `mask`
  callables, per-layer `rank` / `scale` rules, `keep_fp32`), and a float
  given to an argument whose default is None and that is not a schedule
  (gradkit's convention for static floats: `frugal`'s `density`, `sara`'s
  `max_fraction`).

To inject a value the rule keeps static, pass it as a jax array
(`jnp.asarray(10)`), which works only where the factory accepts a traced
value; to keep an injected one static, list it in `static_args`.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import typing
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradkit.registry import get_factory

# Annotation parts that say "a number" (a callable given there is a schedule).
_NUMBER_ANNOTATIONS = frozenset({
    "float", "int", "None", "ArrayLike", "jax.typing.ArrayLike", "jax.Array", "Array",
    "chex.Numeric", "Numeric", "numbers.Real",
})


def _annotation_text(annotation: Any) -> str:
  return annotation if isinstance(annotation, str) else repr(annotation)


def _takes_schedule(annotation: Any) -> bool:
  """Whether an annotation names `optax.ScalarOrSchedule` / `optax.Schedule`."""
  if annotation is inspect.Parameter.empty:
    return False
  if isinstance(annotation, str):
    return "Schedule" in annotation
  if annotation in (optax.ScalarOrSchedule, optax.Schedule):
    return True
  return optax.Schedule in typing.get_args(annotation)


def _numeric_annotation(annotation: Any) -> bool:
  """Whether an annotation names only numbers (or is absent)."""
  if annotation is inspect.Parameter.empty:
    return True
  if isinstance(annotation, str):
    return all(part.strip() in _NUMBER_ANNOTATIONS for part in annotation.split("|"))
  return "Callable" not in _annotation_text(annotation)


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _kind(parameter: inspect.Parameter, value: Any) -> str:
  """"static", "inject", or "float" (an int to inject as a float) for one argument."""
  if value is None or isinstance(value, bool | np.bool_ | str):
    return "static"
  if isinstance(value, optax.schedules.StatefulSchedule):
    return "inject"
  if isinstance(value, jax.Array | np.ndarray):
    return "inject" if np.issubdtype(value.dtype, np.number) else "static"
  schedule = _takes_schedule(parameter.annotation)
  float_default = _is_number(parameter.default) and not isinstance(
      parameter.default, numbers.Integral)
  if callable(value):
    numeric = _is_number(parameter.default) and _numeric_annotation(parameter.annotation)
    return "inject" if schedule or numeric else "static"
  if _is_number(value):
    if isinstance(value, numbers.Integral):
      return "float" if schedule or float_default else "static"
    return "inject" if schedule or parameter.default is not None else "static"
  return "static"


def _bind(
    signature: inspect.Signature, static_args: set[str], args: tuple, kwargs: dict
) -> tuple[inspect.BoundArguments, set[str]]:
  """The call's arguments (defaults applied, ints for floats cast) and its static names."""
  bound = signature.bind(*args, **kwargs)
  bound.apply_defaults()
  static = set(static_args)
  for name, value in bound.arguments.items():
    parameter = signature.parameters[name]
    if name in static or parameter.kind in (inspect.Parameter.VAR_POSITIONAL,
                                            inspect.Parameter.VAR_KEYWORD):
      continue
    kind = _kind(parameter, value)
    if kind == "static":
      static.add(name)
    elif kind == "float":
      bound.arguments[name] = float(value)
  return bound, static


def static_argnames(
    factory: Callable[..., optax.GradientTransformation], *args: Any, **kwargs: Any
) -> tuple[str, ...]:
  """The arguments `inject_hyperparams` keeps static for this call of `factory`.

  Args:
    factory: an optimizer factory.
    *args: positional arguments of the call.
    **kwargs: keyword arguments of the call.

  Returns:
    The sorted names of the static arguments (given or defaulted), by the
    rule of the module docstring.

  Example:
    >>> import gradkit
    >>> from gradkit.hyperparams import static_argnames
    >>> static_argnames(gradkit.optimizers.galore, rank=4)
    ('mask', 'param_labels', 'proj_type', 'rank', 'update_proj_gap')
  """
  return tuple(sorted(_bind(inspect.signature(factory), set(), args, kwargs)[1]))


def inject_hyperparams(
    factory_or_name: str | Callable[..., optax.GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: jnp.dtype | None = None,
) -> Callable[..., optax.GradientTransformationExtraArgs]:
  """`optax.inject_hyperparams` with gradkit's static options found by itself.

  Each argument of a call (given or defaulted) is static or injected by
  the rule of the module docstring: floats and schedules are injected into
  `state.hyperparams` (`learning_rate`, betas, eps, `weight_decay`, ...),
  ints, bools, strings, None, label trees and rules stay static, so
  `gradkit.inject_hyperparams("galore")(learning_rate=1e-3, rank=4)` works
  where `optax.inject_hyperparams(galore)(rank=4)` needs
  `static_args=("rank",)`. The result is optax's: an
  `optax.GradientTransformationExtraArgs` whose state is an
  `optax.InjectStatefulHyperparamsState`.

  Args:
    factory_or_name: a registered name (`gradkit.names()`) or a factory.
    static_args: names kept static besides those the rule finds (a string
      or an iterable of strings), as optax's. Default ().
    hyperparam_dtype: the dtype of the injected floats, as optax's (None:
      the parameters' highest float dtype). Default None.

  Returns:
    A callable taking the factory's arguments and returning the optimizer.

  Raises:
    ValueError: an unknown name (with the nearest registered names), or a
      `static_args` entry that is not a parameter of the factory.

  Example:
    >>> import jax.numpy as jnp
    >>> import gradkit
    >>> tx = gradkit.inject_hyperparams("galore")(learning_rate=1e-3, rank=2)
    >>> state = tx.init({"w": jnp.ones((6, 3))})
    >>> sorted(state.hyperparams)
    ['b1', 'b2', 'eps', 'learning_rate', 'scale', 'weight_decay']
  """
  if isinstance(factory_or_name, str):
    factory = get_factory(factory_or_name)
  elif callable(factory_or_name):
    factory = factory_or_name
  else:
    raise TypeError(f"inject_hyperparams takes a registered name or a factory, "
                    f"got {factory_or_name!r}")
  signature = inspect.signature(factory)
  given_static = {static_args} if isinstance(static_args, str) else set(static_args)
  unknown = sorted(given_static - set(signature.parameters))
  if unknown:
    raise ValueError(f"static_args {unknown} are not parameters of "
                     f"{getattr(factory, '__name__', factory)}: {list(signature.parameters)}")

  @functools.wraps(factory)
  def wrapped(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
    bound, static = _bind(signature, given_static, args, kwargs)
    return optax.inject_hyperparams(
        factory, static_args=tuple(sorted(static)), hyperparam_dtype=hyperparam_dtype,
    )(*bound.args, **bound.kwargs)

  return wrapped
