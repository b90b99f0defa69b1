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
import jax.numpy as jnp
import numpy as np


def _concrete(name: str, value: Any, accepted: str = "a real number") -> float | None:
  """`value` as a float; None for a schedule or a tracer (not inspectable).

  Anything else that is not a real number (None, a string, a sequence, a
  complex number, a bool, an array with more than one element) is a
  TypeError naming `name` and saying what `accepted` values are.
  """
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  real = isinstance(value, numbers.Number | np.generic | np.ndarray | jax.Array) and (
      jnp.issubdtype(jnp.result_type(value), jnp.floating)  # bfloat16 and float8 too
      or jnp.issubdtype(jnp.result_type(value), jnp.integer))
  if not real or np.ndim(value) != 0:
    raise TypeError(f"{name} must be {accepted}, got {value!r} ({type(value).__name__})")
  return float(np.asarray(value))


def _compute_dtype() -> type:
  """The widest float the optimizers compute in: float32, float64 once x64 is enabled.

  Hyperparameters are cast to the promotion of each leaf's dtype and float32,
  so without x64 a value float32 cannot tell from 0 or 1 acts as 0 or 1.
  """
  return np.float64 if jax.config.jax_enable_x64 else np.float32


def _check_not_flushed_to_zero(name: str, value: Any, v: float) -> None:
  dtype = _compute_dtype()
  if v > 0.0 and dtype(v) == 0.0:
    raise ValueError(
        f"{name}={value!r} is 0 in {np.dtype(dtype).name}, the precision optimizers compute "
        f"in (the smallest positive one is {np.finfo(dtype).smallest_subnormal:.3g}): use a "
        "larger value, or float64 parameters with jax_enable_x64")


def check_non_negative(name: str, value: Any) -> None:
  """Raises ValueError if a concrete `value` is negative, not finite, or 0 in float32 but not 0."""
  v = _concrete(name, value)
  if v is not None and not (np.isfinite(v) and v >= 0.0):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
  if v is not None:
    _check_not_flushed_to_zero(name, value, v)


def check_rate(name: str, value: Any) -> None:
  """Raises unless `value` is an `optax.ScalarOrSchedule` >= 0: a finite real number
  (0 in float32 only if 0) or a schedule (any callable; a tracer passes too).

  A wrong type (None, a string, a list, a complex number) is a TypeError, a
  negative or non-finite number a ValueError; both name `name` and say what
  is accepted. A schedule's values exist only inside the step: the recipe
  tail (`optimizers/_recipe.py`) turns a negative or non-finite one into a
  NaN update.
  """
  accepted = "a finite number >= 0 or an optax schedule (a callable count -> value)"
  v = _concrete(name, value, accepted)
  if v is not None and not (np.isfinite(v) and v >= 0.0):
    raise ValueError(f"{name} must be {accepted}, got {value!r}")
  if v is not None:
    _check_not_flushed_to_zero(name, value, v)


_ZERO_BY_ZERO = "an exactly-zero gradient entry divides 0 by 0 (a NaN update)"
# `check_eps`'s `why` for the perturbation scale of SPSA / MeZO estimators.
FINITE_DIFFERENCE = "the finite difference (f(p + eps z) - f(p - eps z)) / (2 eps) divides by 0"


def check_eps(name: str, value: Any, suggested: float = 1e-8, why: str = _ZERO_BY_ZERO) -> None:
  """Raises ValueError unless a concrete `value` is a finite number > 0 (in float32 too).

  For an eps that a division needs: with eps = 0 an exactly-zero gradient
  entry (a dead unit, an unused embedding row) divides 0 by 0, a NaN update.

  Args:
    name: the user's argument name, for the error message.
    value: the value given (a tracer, as under `optax.inject_hyperparams`, passes).
    suggested: the positive value the error suggests (the factory's default).
    why: what goes wrong at 0, for the error message.
  """
  v = _concrete(name, value)
  if v is not None and not (np.isfinite(v) and v > 0.0):
    raise ValueError(
        f"{name} must be a finite number > 0, got {value!r}: with {name} = 0 {why}; use a "
        f"small positive value such as {suggested:g}")
  if v is not None:
    _check_not_flushed_to_zero(name, value, v)


def check_positive(name: str, value: Any) -> None:
  """Raises ValueError if a concrete `value` is not a finite number > 0 (in float32 too)."""
  v = _concrete(name, value)
  if v is not None and not (np.isfinite(v) and v > 0.0):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
  if v is not None:
    _check_not_flushed_to_zero(name, value, v)


def check_finite_numbers(name: str, values: Any, *, length: int) -> None:
  """Raises ValueError unless `values` holds `length` numbers, each finite where concrete.

  Args:
    name: the user's argument name, for the error message.
    values: a sequence (tuple, list, array) of numbers or tracers.
    length: how many numbers it must hold.
  """
  try:
    items = list(values)
  except TypeError:
    items = None
  if items is None or len(items) != length:
    raise ValueError(f"{name} must hold {length} numbers, got {values!r}")
  for v in items:
    c = _concrete(name, v, "a sequence of real numbers")
    if c is not None and not np.isfinite(c):
      raise ValueError(f"{name} must hold finite numbers, got {values!r}")


def check_float_dtype(name: str, dtype: Any) -> None:
  """Raises ValueError unless `dtype` is None (keep the parameters' dtype) or a float dtype.

  Args:
    name: the user's argument name, for the error message.
    dtype: the dtype given (None, a jnp/np dtype or its name).
  """
  if dtype is None:
    return
  try:
    ok = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
  except TypeError:
    ok = False
  if not ok:
    raise ValueError(f"{name} must be None or a floating dtype (e.g. jnp.bfloat16), got "
                     f"{dtype!r}: an integer state would truncate the moments to 0")


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
  """Raises ValueError unless 0 <= value < 1 (or <= 1 with `closed`), also in float32.

  A decay rate below 1 that float32 rounds to 1 (0.99999999) would never
  forget and make `1 - b**t` zero: without x64 it is rejected, naming the
  largest float32 below 1.
  """
  v = _concrete(name, value)
  if v is None:
    return
  ok = 0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0
  if not ok:
    interval = "[0, 1]" if closed else "[0, 1)"
    raise ValueError(f"{name} must lie in {interval}, got {value!r}")
  dtype = _compute_dtype()
  if not closed and dtype(v) == 1.0:
    below_one = np.nextafter(dtype(1.0), dtype(0.0))
    raise ValueError(
        f"{name}={value!r} is 1.0 in {np.dtype(dtype).name}, the precision optimizers "
        f"compute in: use at most {float(below_one)!r}, or float64 parameters with "
        "jax_enable_x64")
  _check_not_flushed_to_zero(name, value, v)


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
