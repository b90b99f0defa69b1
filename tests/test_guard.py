"""`gradkit.transforms.guard` over every registered optimizer, with a fault at one step.

Faults at step 2 of 4: a NaN gradient entry, a +inf gradient entry, a NaN
loss (`obj_fn` returning NaN for loss-based methods, `value=nan` for the
others). Under the guard each run must equal the clean run of 3 steps (the
faulted step skipped: parameters and state untouched, so steps 3 and 4 are
the clean steps 2 and 3), with one skip counted; compared in float64 (see
tests/test_composition.py for why). A x1e30 gradient in float32, which
overflows inside several optimizers (Adam's second moment, 8-bit absmax)
although the gradient itself is finite, must leave every parameter finite.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Regression

import gradkit
from gradkit.registry import get_factory
from gradkit.transforms.guard import guard  # also gradkit.guard
from trajectories import extra_update_args

NAMES = gradkit.names()
HPARAMS = {"mfac": {"num_grads": 8}}
# Blocks small enough that the 8-bit recipes quantize the (6, 3) kernel.
QUANTIZED_SIZES = {"min_size": 8, "block_size": 8}


def _hparams(name: str) -> dict:
  sizes = QUANTIZED_SIZES if "min_size" in inspect.signature(get_factory(name)).parameters else {}
  return {**HPARAMS.get(name, {}), **sizes}
TOLERANCE = 1e-10
TOLERANCE_OVERRIDE = {"cosmos": 1e-7}  # its eigenbasis amplifies rounding ~3e7 x
FAULT_STEP, STEPS = 1, 4


def _poisoned(value):
  return lambda g: jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(value), g)


def _nan_loss(fn):
  return lambda *args: fn(*args) * jnp.nan


def _run(tx, problem, extra, steps, fault=None):
  """(params after `steps` guarded steps, skips), `fault` applied at FAULT_STEP."""
  params, state = problem.params, tx.init(problem.params)
  for i in range(steps):
    grads, kw = problem.grad(params), dict(extra)
    if i == FAULT_STEP and fault is not None:
      grads, kw = fault(grads, kw)
    updates, state = tx.update(grads, state, params, **kw)
    params = optax.apply_updates(params, updates)
  return params, state.num_skipped


def _loss_fault(grads, kw):
  """`obj_fn` returns NaN (the guard evaluates it); otherwise the step's loss `value=` is NaN.

  Sophia-G calls its `sampled_obj_fn` only at Hessian refreshes, so its NaN
  loss reaches the guard as `value=` (what a training loop computed), its
  sampled objective poisoned too.
  """
  if "obj_fn" in kw:
    return grads, {**kw, "obj_fn": _nan_loss(kw["obj_fn"])}
  poisoned = {k: _nan_loss(kw[k]) for k in ("sampled_obj_fn",) if k in kw}
  return grads, {**kw, **poisoned, "value": jnp.nan}


FAULTS = {
    "nan_gradient": lambda g, kw: (_poisoned(jnp.nan)(g), kw),
    "inf_gradient": lambda g, kw: (_poisoned(jnp.inf)(g), kw),
    "nan_loss": _loss_fault,
}


def _float64_problem() -> Regression:
  problem = Regression()
  problem.x, problem.y = (jnp.asarray(a, jnp.float64) for a in (problem.x, problem.y))
  problem.params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), problem.params)
  return problem


@pytest.mark.parametrize("name", NAMES)
def test_a_faulted_step_is_skipped_exactly_and_counted(name):
  with jax.enable_x64():
    problem = _float64_problem()
    tx = guard(gradkit.create(name, **_hparams(name)))
    extra = extra_update_args(tx, problem)

    @jax.jit
    def runs():
      out = {"clean": _run(tx, problem, extra, STEPS - 1)}
      for fault, fn in FAULTS.items():
        out[fault] = _run(tx, problem, extra, STEPS, fn)
      return out

    results = jax.device_get(runs())
  want, clean_skips = results.pop("clean")
  assert clean_skips == 0, f"{name}: the guard skipped a clean step"
  start = jax.device_get(problem.params)
  for fault, (got, skips) in results.items():
    assert skips == 1, f"{name}, {fault}: {skips} steps skipped, expected 1"
    for key in ("w", "b"):
      moved = np.max(np.abs(want[key] - np.asarray(start[key])))
      err = np.max(np.abs(got[key] - want[key]))
      assert err <= TOLERANCE_OVERRIDE.get(name, TOLERANCE) * moved, (
          f"{name}, {fault}: {key} differs from the skipped run by {err:.3g} (moved {moved:.3g})")


@pytest.mark.parametrize("name", NAMES)
def test_a_huge_finite_gradient_leaves_the_parameters_finite(name, regression):
  tx = guard(gradkit.create(name, **_hparams(name)))
  extra = extra_update_args(tx, regression)
  huge = lambda g, kw: (jax.tree.map(lambda x: x * 1e30, g), kw)  # noqa: E731
  params, skips = jax.jit(lambda: _run(tx, regression, extra, STEPS, huge))()
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params)), (
      f"{name}: non-finite parameters after a x1e30 gradient ({int(skips)} skipped)")


def test_guard_options_are_checked():
  with pytest.raises(ValueError, match="check_loss"):
    guard(optax.sgd(0.1), check_loss=1)


def test_a_non_finite_state_is_never_stepped_from_and_the_skips_are_counted():
  params = {"w": jnp.ones(3)}
  tx = guard(optax.adam(0.1))
  state = tx.init(params)
  bad_mu = state.inner_state[0].mu["w"].at[1].set(jnp.nan)
  state = state._replace(inner_state=(state.inner_state[0]._replace(mu={"w": bad_mu}),
                                      *state.inner_state[1:]))
  for _ in range(2):
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    np.testing.assert_array_equal(updates["w"], 0.0)
  assert int(state.consecutive_skipped) == 2 and int(state.num_skipped) == 2
