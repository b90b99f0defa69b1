"""Name -> factory registry behind `gradkit.create` and `gradkit.names`.

The built-in optimizers register themselves when their modules are imported;
the packages are lazy, so `names`, `get_factory` and `create` import every
module of `_BUILTIN_PACKAGES` on first use.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import optax

Factory = Callable[..., optax.GradientTransformation]

_FACTORIES: dict[str, Factory] = {}
_BUILTIN_PACKAGES = ("gradkit.optimizers", "gradkit.second_order")
_builtins_loaded = False


def _load_builtins() -> None:
  """Imports every public module of `_BUILTIN_PACKAGES`, registering their optimizers."""
  global _builtins_loaded
  if _builtins_loaded:
    return
  for package_name in _BUILTIN_PACKAGES:
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
      if not info.name.startswith("_"):
        importlib.import_module(f"{package_name}.{info.name}")
  _builtins_loaded = True


def register(name: str) -> Callable[[Factory], Factory]:
  """Decorator that registers an optimizer factory under `name`.

  A factory defined outside gradkit is checked against the built-in names
  too, so a user's registration never shadows a built-in optimizer.

  Args:
    name: the name `gradkit.create` will accept.
  """

  def decorator(factory: Factory) -> Factory:
    if not getattr(factory, "__module__", "").startswith("gradkit."):
      _load_builtins()
    if name in _FACTORIES and _FACTORIES[name] is not factory:
      raise ValueError(f"optimizer name {name!r} is already registered")
    _FACTORIES[name] = factory
    return factory

  return decorator


def names() -> list[str]:
  """Sorted names of every registered optimizer."""
  _load_builtins()
  return sorted(_FACTORIES)


def get_factory(name: str) -> Factory:
  """The factory registered as `name`; unknown names list the nearest ones.

  Args:
    name: a registered name (see `names`).

  Returns:
    The factory, a callable returning an optax transformation.

  Raises:
    ValueError: `name` is not registered.
  """
  _load_builtins()
  try:
    return _FACTORIES[name]
  except KeyError:
    nearest = difflib.get_close_matches(name, _FACTORIES, n=3, cutoff=0.0)
    raise ValueError(
        f"unknown optimizer {name!r}; nearest registered names: {', '.join(nearest)}"
        " (gradkit.names() lists all)"
    ) from None


def create(name: str, **hparams: Any) -> optax.GradientTransformation:
  """Builds the registered optimizer `name` with keyword hyperparameters.

  Args:
    name: a registered name (see `names`).
    **hparams: keyword arguments of the factory; omitted ones take the
      factory's (paper) defaults.

  Returns:
    The optimizer, an `optax.GradientTransformation`.

  Example:
    >>> import gradkit
    >>> tx = gradkit.create("lion", learning_rate=1e-4, weight_decay=0.1)
  """
  return get_factory(name)(**hparams)
