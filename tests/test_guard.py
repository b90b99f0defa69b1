"""`gradkit.transforms.guard` over every registered optimizer, with a fault at one step.

Non-finite faults at step 2 of 4: a NaN gradient entry, a +inf and a -inf
gradient entry, a NaN loss (`obj_fn` returning NaN for loss-based methods,
`value=nan` for the others). Under the guard each run must equal the clean
run of 3 steps (the faulted step skipped: parameters and state untouched, so
steps 3 and 4 are the clean steps 2 and 3), with one skip counted; compared
in float64 (see tests/test_composition.py for why).

Finite faults, in float32, where they overflow or underflow: an all-zero, a
x1e-30 and a x1e30 gradient at step 2. The guard skips what turns non-finite
(Adam's second moment overflows at x1e30) and keeps the rest, so these must
not end training: over the 6 steps after the fault every parameter leaf
moves at least half as far as in the clean run over the same steps (path
length, the sum of max |update| per step), and after x1e30 every parameter
is finite (8-bit recipes at blocks of 8, so they quantize the kernel). The
problem is the regression's kernel alone: a bias would get an Adam fallback
in the matrix methods, whose overflow makes the guard skip the x1e30 step
and hide what the matrix rule does with it. On the code before issue 17's
fixes this failed for apollo and apollo_mini after a zero or x1e-30
gradient (Fira's limiter locked: path ratio 3e-9) and for muon after x1e30
(Newton–Schulz's Frobenius norm overflowed to inf, so the update was 0 for
530 steps, while the momentum's norm overflowed: ratio 0).

Moving is not recovering, and this test asks for the former only: a x1e30
gradient kept in a momentum steers Muon's (and Lion's) steps for
~log(1e30) / -log(beta) steps (Muon here: the loss is back to the clean
value after ~3000 steps, before the fix as after it), and methods whose
step is linear in the gradient (sgd, sgd_clip, sgdp, momentum8bit, sgd_sai,
trp) take the x1e30 step itself. No normalisation fixes either; the guard
sees only non-finite values.

Each optimizer's step is compiled once (jitted, the fault passed as data)
and shared by all its runs.
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

# name: (poison of one gradient entry or None, loss factor)
FAULTS = {
    "nan_gradient": (jnp.nan, 1.0),
    "inf_gradient": (jnp.inf, 1.0),
    "-inf_gradient": (-jnp.inf, 1.0),
    "nan_loss": (None, jnp.nan),
}


def _faulted_step(tx, problem, extra):
  """The jitted guarded step (params, state, poison, poisoned, loss_factor) -> (params, state).

  `poison` replaces the first entry of every gradient leaf where `poisoned`.
  `loss_factor` (1, or NaN for a NaN loss) multiplies `obj_fn`, which the
  guard evaluates; methods without `obj_fn` get the step's loss times it as
  `value=` (what a training loop computed). Sophia-G calls its
  `sampled_obj_fn` only at Hessian refreshes, so that is multiplied too.
  """

  @jax.jit
  def step(params, state, poison, poisoned, loss_factor):
    grads = jax.tree.map(
        lambda g: jnp.where(poisoned, g.at[(0,) * g.ndim].set(poison.astype(g.dtype)), g),
        problem.grad(params))
    kw = dict(extra)
    if "obj_fn" in kw:
      kw["obj_fn"] = lambda p: extra["obj_fn"](p) * loss_factor
    else:
      if "sampled_obj_fn" in kw:
        kw["sampled_obj_fn"] = lambda *a: extra["sampled_obj_fn"](*a) * loss_factor
      kw["value"] = problem.loss(params) * loss_factor
    updates, state = tx.update(grads, state, params, **kw)
    return optax.apply_updates(params, updates), state

  return step


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
    step = _faulted_step(tx, problem, extra_update_args(tx, problem))

    def run(steps, poison=None, loss_factor=1.0):
      params, state = problem.params, tx.init(problem.params)
      for i in range(steps):
        faulted = i == FAULT_STEP
        params, state = step(
            params, state, jnp.float64(0.0 if poison is None else poison),
            jnp.bool_(faulted and poison is not None),
            jnp.float64(loss_factor if faulted else 1.0))
      return jax.device_get(params), int(state.num_skipped)

    want, clean_skips = run(STEPS - 1)
    results = {fault: run(STEPS, *args) for fault, args in FAULTS.items()}
  assert clean_skips == 0, f"{name}: the guard skipped a clean step"
  start = jax.device_get(problem.params)
  for fault, (got, skips) in results.items():
    assert skips == 1, f"{name}, {fault}: {skips} steps skipped, expected 1"
    for key in ("w", "b"):
      moved = np.max(np.abs(want[key] - np.asarray(start[key])))
      err = np.max(np.abs(got[key] - want[key]))
      assert err <= TOLERANCE_OVERRIDE.get(name, TOLERANCE) * moved, (
          f"{name}, {fault}: {key} differs from the skipped run by {err:.3g} (moved {moved:.3g})")


def _scaled_step(tx, problem, extra):
  """The jitted guarded step (params, state, factor) -> (params, state, max |update| per leaf)."""

  @jax.jit
  def step(params, state, factor):
    grads = jax.tree.map(lambda g: g * factor.astype(g.dtype), problem.grad(params))
    updates, state = tx.update(grads, state, params, **extra)
    moved = jax.tree.map(lambda u: jnp.max(jnp.abs(u)), updates)
    return optax.apply_updates(params, updates), state, moved

  return step


def _scaled_run(step, tx, problem, steps, factor):
  """(params, skips, path length per leaf over the steps after FAULT_STEP)."""
  params, state = problem.params, tx.init(problem.params)
  path = jax.tree.map(lambda p: 0.0, params)
  for i in range(steps):
    params, state, moved = step(params, state, jnp.float32(factor if i == FAULT_STEP else 1.0))
    if i > FAULT_STEP:
      path = jax.tree.map(lambda a, m: a + float(m), path, moved)
  return jax.device_get(params), int(state.num_skipped), path


class _KernelRegression(Regression):
  """The regression without its bias: one (6, 3) kernel, float32."""

  def __init__(self):
    super().__init__()
    self.params = {"w": self.params["w"]}

  def loss(self, params):
    return super().loss({**params, "b": jnp.zeros(self.y.shape[-1], self.y.dtype)})

  def sampled_loss(self, params, key):
    return super().sampled_loss({**params, "b": jnp.zeros(self.y.shape[-1], self.y.dtype)}, key)


FINITE_FAULTS = {"zero": 0.0, "x1e-30": 1e-30, "x1e30": 1e30}
AFTER = 6  # steps compared after the fault
FRACTION = 0.5  # of the clean run's path length, per leaf
# At their defaults these diverge (sgdp, trp: lr 0.1 on a Hessian of norm
# ~200) or train nothing (sara: no |w| < 2e-3 in this kernel), so their
# clean path would be no yardstick.
CONTINUE_HPARAMS = {"sgdp": {"learning_rate": 1e-3}, "trp": {"learning_rate": 1e-3},
                    "sara": {"threshold": 0.2, "max_fraction": 0.5}}
# (name, fault): the measured reason it still stops. Each must keep failing
# (so that a fix removes it from here).
CONTINUE_EXCEPTIONS = {
    ("adahessian", "x1e30"): (
        "its step m / sqrt(v) is linear in g (v is the Hessian diagonal's), so x1e30 moves the "
        "kernel to ~4e29, where the float32 loss is inf, and the guard's loss check (it gets "
        "obj_fn) skips every later step (path 0)"),
}


@pytest.mark.parametrize("name", NAMES)
def test_training_continues_after_a_zero_tiny_or_huge_gradient(name):
  problem = _KernelRegression()
  tx = guard(gradkit.create(name, **{**_hparams(name), **CONTINUE_HPARAMS.get(name, {})}))
  step = _scaled_step(tx, problem, extra_update_args(tx, problem))
  steps = FAULT_STEP + 1 + AFTER
  _, _, clean = _scaled_run(step, tx, problem, steps, 1.0)
  assert all(v > 0 for v in jax.tree.leaves(clean)), f"{name}: the clean run does not move"
  for fault, factor in FINITE_FAULTS.items():
    params, skips, path = _scaled_run(step, tx, problem, steps, factor)
    ratio = min(jax.tree.leaves(jax.tree.map(lambda a, c: a / c, path, clean)))
    if fault == "x1e30":
      assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params)), (
          f"{name}: non-finite parameters after a x1e30 gradient ({skips} skipped)")
    if (name, fault) in CONTINUE_EXCEPTIONS:
      assert ratio < FRACTION, (
          f"{name}, {fault}: now moves {ratio:.3g} of the clean path; remove its exception")
      continue
    assert ratio >= FRACTION, (
        f"{name}, {fault} gradient at step {FAULT_STEP + 1}: the next {AFTER} steps move "
        f"{ratio:.3g} of the clean run's path ({skips} skipped)")


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
