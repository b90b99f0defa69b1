"""Hyperparameter checks run when a transformation is built.

Values that are schedules, or tracers (as under `optax.inject_hyperparams`
inside `jit`), cannot be inspected and are left alone.
"""

from __future__ import annotations

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


def check_unit_interval(name: str, value: Any, *, closed: bool = False) -> None:
  """Raises ValueError unless 0 <= value < 1 (or <= 1 with `closed`)."""
  v = _concrete(value)
  if v is None:
    return
  ok = 0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0
  if not ok:
    interval = "[0, 1]" if closed else "[0, 1)"
    raise ValueError(f"{name} must lie in {interval}, got {value!r}")
