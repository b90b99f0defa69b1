"""Hyperparameter checks run when a transformation is built.

Values that are schedules, or tracers (as under `optax.inject_hyperparams`
inside `jit`), cannot be inspected and are left alone.

Static options (ints that are shapes, periods or counts) cannot be arrays:
`optax.inject_hyperparams` turns every number it is given, and every numeric
default, into one, so their errors end with `static_option_hint`, which says
to list the option in `static_args` or to use `gradkit.inject_hyperparams`.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import numpy as np


def _concrete(value: Any) -> float | None:
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  return float(np.asarray(value))


def check_non_negative(name: str, value: Any) -> None:
  """Raises ValueError if a concrete `value` is negative or not finite."""
  v = _concrete(value)
  if v is not None and not (np.isfinite(v) and v >= 0.0):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_positive(name: str, value: Any) -> None:
  """Raises ValueError if a concrete `value` is not a finite number > 0."""
  v = _concrete(value)
  if v is not None and not (np.isfinite(v) and v > 0.0):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_static_fraction(name: str, value: Any) -> float:
  """`value` as a float, or a ValueError unless it is a Python number in [0, 1]
  (a static option: it sets state shapes, so no array or schedule).

  Args:
    name: the user's argument name, for the error message.
    value: the value given.
  """
  if not isinstance(value, int | float) or isinstance(value, bool):
    raise ValueError(f"{name} must be a static number in [0, 1], got {value!r}"
                     f"{static_option_hint(value)}")
  check_unit_interval(name, value, closed=True)
  return float(value)


def check_unit_interval(name: str, value: Any, *, closed: bool = False) -> None:
  """Raises ValueError unless 0 <= value < 1 (or <= 1 with `closed`)."""
  v = _concrete(value)
  if v is None:
    return
  ok = 0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0
  if not ok:
    interval = "[0, 1]" if closed else "[0, 1)"
    raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def static_option_hint(value: Any) -> str:
  """The end of a static option's error: how to pass it, if `value` is a jax Array.

  Args:
    value: the value the option received.

  Returns:
    "" for anything but a jax Array or tracer; else a sentence (starting
    with "; ") naming `static_args` and `gradkit.inject_hyperparams`.
  """
  if not isinstance(value, jax.Array | jax.core.Tracer):
    return ""
  return ("; it arrived as a jax Array, as under optax.inject_hyperparams, which turns every "
          "number into one: list this option in static_args, or build the optimizer with "
          "gradkit.inject_hyperparams, which keeps ints, bools, strings, labels and rules static")


def check_static_int(name: str, value: Any, *, minimum: int = 1) -> None:
  """Raises ValueError unless `value` is None (a default) or an int >= `minimum`.

  A jax Array (an int that `optax.inject_hyperparams` injected) is rejected
  with `static_option_hint`.
  """
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(
        f"{name} must be an int >= {minimum}, got {value!r}{static_option_hint(value)}")
