"""Hyperparameters are checked for what float32 can represent (docs/robustness.md).

Optimizers cast hyperparameters to the promotion of each leaf's dtype and
float32, so without x64 a decay rate float32 rounds to 1 never forgets (and
makes 1 - b**t zero), and a positive eps float32 flushes to 0 divides by
zero. Every registered optimizer's decay rates (every float argument whose
default lies in [0.5, 1) and whose name says it is a decay: b1, b2, b3,
beta*, momentum, decay*, rho) and eps-like arguments (names starting with
"eps") are drawn by hypothesis around those edges: building must succeed
exactly when float32 keeps the value away from the edge, and the error names
the argument and float32.
"""

from __future__ import annotations

import inspect
import re

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradkit
from gradkit.registry import get_factory

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
DECAY = re.compile(r"^(b[123]|beta\d*|momentum|decay\w*|rho)$")
FLOAT32_BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))


def _arguments(pattern, accept_default):
  cases = []
  for name in gradkit.names():
    for p in inspect.signature(get_factory(name)).parameters.values():
      default = p.default
      if (pattern(p.name) and isinstance(default, float) and accept_default(default)):
        cases.append((name, p.name))
  return cases


DECAYS = _arguments(DECAY.match, lambda d: 0.5 <= d < 1.0)
EPSILONS = _arguments(lambda n: n.startswith("eps"), lambda d: d > 0.0)


def test_the_registry_has_decay_rates_and_epsilons_to_check():
  assert len(DECAYS) >= 40 and len(EPSILONS) >= 20, (len(DECAYS), len(EPSILONS))


@pytest.mark.parametrize(("name", "argument"), DECAYS)
@SETTINGS
@given(gap=st.floats(min_value=1e-12, max_value=1e-6))
def test_decay_rates_that_float32_rounds_to_one_are_rejected(name, argument, gap):
  value = 1.0 - gap
  if np.float32(value) == 1.0:
    with pytest.raises(ValueError, match=rf"{argument}.*float32"):
      gradkit.create(name, **{argument: value})
  else:
    gradkit.create(name, **{argument: value})
  gradkit.create(name, **{argument: FLOAT32_BELOW_ONE})


@pytest.mark.parametrize(("name", "argument"), EPSILONS)
@SETTINGS
@given(exponent=st.floats(min_value=-60.0, max_value=-30.0))
def test_epsilons_that_float32_flushes_to_zero_are_rejected(name, argument, exponent):
  value = 10.0 ** exponent
  if np.float32(value) == 0.0:
    with pytest.raises(ValueError, match=rf"{argument}.*float32"):
      gradkit.create(name, **{argument: value})
  else:
    gradkit.create(name, **{argument: value})


@pytest.mark.parametrize(("name", "hparams", "message"), [
    ("adahessian", {"update_interval": 2.5}, "update_interval must be an int"),
    ("muon", {"ns_coeffs": (float("nan"), -4.775, 2.0315)}, "ns_coeffs must hold finite"),
    ("muon", {"ns_coefficients": (3.4445, -4.775)}, "ns_coefficients must hold 3 numbers"),
    ("lion", {"mu_dtype": np.int8}, "mu_dtype must be None or a floating dtype"),
])
def test_options_float32_cannot_use_are_rejected_naming_the_argument(name, hparams, message):
  with pytest.raises(ValueError, match=message):
    gradkit.create(name, **hparams)


def test_float_state_dtypes_are_accepted():
  for dtype in (None, jnp.bfloat16, "float16", np.float32):
    gradkit.create("lion", mu_dtype=dtype)
