"""Name -> factory registry behind `gradkit.create` and `gradkit.names`."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import optax

Factory = Callable[..., optax.GradientTransformation]

_FACTORIES: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
  """Decorator that registers an optimizer factory under `name`."""

  def decorator(factory: Factory) -> Factory:
    if name in _FACTORIES and _FACTORIES[name] is not factory:
      raise ValueError(f"optimizer name {name!r} is already registered")
    _FACTORIES[name] = factory
    return factory

  return decorator


def names() -> list[str]:
  """Sorted names of every registered optimizer."""
  return sorted(_FACTORIES)


def get_factory(name: str) -> Factory:
  """The factory registered as `name`; unknown names list the nearest ones."""
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

  Example:
    >>> import gradkit
    >>> tx = gradkit.create("lion", learning_rate=1e-4, weight_decay=0.1)
  """
  return get_factory(name)(**hparams)
