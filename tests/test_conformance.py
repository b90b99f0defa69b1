"""One table-driven suite over every registered optimizer (`gradkit.names()`).

Per-method oracle tests live beside each module; this file checks the shared
promises: it fits a small ill-conditioned regression under jit, does not
retrace, works under `optax.inject_hyperparams`, keeps dtypes and state
structure (bf16 included), tolerates unknown extra arguments and rejects bad
input clearly. Fault handling (`optax.apply_if_finite` included) is in
tests/test_faults.py.

Optimizers whose update needs the loss (zeroth-order methods; their update
without it raises an error naming `obj_fn`) get `obj_fn=problem.loss` in every
check (`trajectories.extra_update_args`); all others are still run without extra arguments.
"""

from __future__ import annotations

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.registry import get_factory
from trajectories import extra_update_args

NAMES = gradkit.names()
LEARNING_RATES = (1e-1, 1e-2, 1e-3, 1e-4)
STEPS = 150
# On a 21-parameter problem Adam-Clip's default fraction 0.5 clips at the median
# |g|, which reaches ~0 once the easy half of the coordinates has converged, and
# the method stalls (reproduced with an independent numpy port of the official
# rule); the fit check uses the fraction the paper uses for SGD. LARS multiplies
# the rate by its trust coefficient (1e-3), so the grid's rates barely move it.
# Natural GaLore's Fisher over the last 20 full-batch gradients of a 3 x 3 core
# is nearly singular along the slowly turning gradient, and its inverse turns
# the small gradient-to-gradient differences into the step: the loss stalls
# near its start (also in a float64 numpy port); a one-gradient history fits.
# M-FAC's default damping 1e-5 multiplies directions outside its window of
# (here nearly collinear, full-batch) gradients by 1e5: the loss grows at every
# rate of the grid, also in a float64 numpy port of the reference. With
# damping lambda a step moves by lr / lambda outside the window's span, so
# lambda = 10 at lr 1 is a 0.1-rate step there; a 256-gradient window (the
# default 1024's m x m factorisation costs 64x more per step) fits at it.
# SaRA trains only |w| < 2e-3 by default, none of this fit's weights; the
# override makes every entry trainable.
# Sparse MeZO only moves the entries of each leaf below its magnitude quantile,
# so a weight that must grow past it (this fit from a 0.1-scale start to
# N(0, 1) targets) stops moving; with the default quarter the loss stalls near
# a quarter of its start, 90% of each leaf fits (MeZO itself needs no override).
FIT_OVERRIDES = {
    "adam_clip": {"fraction": 0.1},
    "lars": {"trust_coefficient": 0.1},
    "mfac": {"damping": 10.0, "num_grads": 256},
    "natural_galore": {"natural_history": 1},
    "sara": {"threshold": 10.0, "max_fraction": 1.0},
    "sparse_mezo": {"fraction": 0.9},
}
# M-FAC's step along its window's span grows as the window fills (measured
# final losses 151 at lr 3 and 1e-12 at lr 1 with the override), and the
# window makes each of its steps the costliest of the registry, so it runs
# the rate that fits alone.
FIT_RATES = {"mfac": (1.0,)}
# The 8-bit optimizers keep float32 state for leaves under 4096 elements, so
# on this problem they quantize nothing by default; every check here runs
# them with blocks of 8 (the (6, 3) kernel's state is 3 blocks of uint8
# codes, the last one padded), so their rows test real 8-bit state.
QUANTIZED_SIZES = {"min_size": 8, "block_size": 8}


def _parameters(name: str) -> dict:
  return inspect.signature(get_factory(name)).parameters


def _sizes(name: str) -> dict:
  return QUANTIZED_SIZES if "min_size" in _parameters(name) else {}


def _assert_quantizes(name, state):
  if _sizes(name):
    codes = [x for x in jax.tree.leaves(state) if x.dtype == jnp.uint8]
    assert codes, f"{name}: no uint8 state"


def _losses(name, problem, learning_rates, steps=STEPS):
  """(loss after the first step, after the last) at each rate, from one compiled program.

  The rate reaches the factory as a constant schedule returning the traced
  jit argument (every `learning_rate` accepts a schedule), so the grid's
  rates share one compilation, and the steps run in one `lax.scan`.
  """
  hparams = {**_sizes(name), **FIT_OVERRIDES.get(name, {})}
  factory = get_factory(name)
  extra = extra_update_args(factory(**hparams), problem)

  @jax.jit
  def losses(lr):
    tx = factory(learning_rate=lambda count: lr, **hparams)

    def step(carry, _):
      params, state = carry
      updates, state = tx.update(problem.grad(params), state, params, **extra)
      params = optax.apply_updates(params, updates)
      return (params, state), problem.loss(params)

    _, loss = jax.lax.scan(step, (problem.params, tx.init(problem.params)), length=steps)
    return loss[0], loss[-1]

  return [tuple(float(x) for x in losses(jnp.float32(lr))) for lr in learning_rates]


# A scheduled rate that turns negative or NaN makes the update NaN (the
# recipe tail's `checked_rate`): the loss after the first step is NaN instead
# of an ascent step's. Checked on the fit's compiled program, at no compile cost.
BAD_SCHEDULED_RATES = (-1e-3, float("nan"))


@pytest.mark.parametrize("name", NAMES)
def test_fits_ill_conditioned_regression(name, regression):
  initial = float(regression.loss(regression.params))
  rates = FIT_RATES.get(name, LEARNING_RATES)
  losses = _losses(name, regression, rates + BAD_SCHEDULED_RATES)
  finals = [last for _, last in losses[:len(rates)]]
  best = min(f for f in finals if np.isfinite(f))
  assert best < 0.1 * initial, f"{name}: best final loss {best} vs initial {initial} ({finals})"
  for rate, (first, _) in zip(BAD_SCHEDULED_RATES, losses[len(rates):]):
    assert np.isnan(first), f"{name}: scheduled rate {rate} gave a finite step (loss {first})"


# MeZO-style steps divide the difference of two loss values by 2 eps = 2e-3:
# a one-ulp difference in the loss (here L ~ 277, ulp ~ 3e-5), which two
# differently fused programs may produce once their parameters differ by
# rounding, moves the next step by lr * |z| * ulp / (2 eps) ~ 1e-4 of a
# parameter, whatever the machine. Their injected and plain programs are
# compared after the first step, from identical inputs (measured 1e-7 apart),
# which checks the same hyperparameter plumbing.
FINITE_DIFFERENCE = {"mezo", "sparse_mezo"}


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_matches_plain_factory(name, regression):
  factory, sizes = get_factory(name), _sizes(name)
  plain = factory(learning_rate=0.01, **sizes)
  injected = optax.inject_hyperparams(factory, static_args=tuple(sizes))(
      learning_rate=0.01, **sizes)
  extra = extra_update_args(plain, regression)
  update_plain = jax.jit(functools.partial(plain.update, **extra))
  update_injected = jax.jit(functools.partial(injected.update, **extra))
  p_plain, s_plain = regression.params, plain.init(regression.params)
  p_inj, s_inj = regression.params, injected.init(regression.params)
  _assert_quantizes(name, s_inj)
  for _ in range(1 if name in FINITE_DIFFERENCE else 3):
    u, s_plain = update_plain(regression.grad(p_plain), s_plain, p_plain)
    p_plain = optax.apply_updates(p_plain, u)
    u, s_inj = update_injected(regression.grad(p_inj), s_inj, p_inj)
    p_inj = optax.apply_updates(p_inj, u)
  chex.assert_trees_all_close(p_plain, p_inj, rtol=1e-4, atol=1e-6)
  assert float(s_inj.hyperparams["learning_rate"]) == pytest.approx(0.01)


def _small_rank(name: str) -> dict:
  # Ranks clamped to min(m, n) would give subspace state the kernel's shape.
  return {"rank": 2} if "rank" in _parameters(name) else {}


def _check_bf16_state_policy(name, params, state):
  """State mirroring a parameter (same key and shape) is bf16 (or uint8
  codes), other float state bf16 or float32, all of it finite."""
  shapes = {jax.tree_util.keystr((jax.tree_util.DictKey(k),)): p.shape for k, p in params.items()}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    where = jax.tree_util.keystr(path)
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype in (jnp.int32, jnp.uint32, jnp.uint8, jnp.bool_), f"{name} {where}"
      continue
    assert leaf.dtype in (jnp.bfloat16, jnp.float32), f"{name} {where}: {leaf.dtype}"
    assert np.all(np.isfinite(np.asarray(leaf, np.float32))), f"{name} {where}"
    mirrors = any(where.endswith(k) and leaf.shape == s for k, s in shapes.items())
    assert not mirrors or leaf.dtype == jnp.bfloat16, f"{name} {where}: {leaf.dtype}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_jitted_steps_keep_dtypes_and_state_structure_without_retracing(name, dtype, regression):
  """Four jitted steps in `dtype`: updates come out in the parameters' dtype,
  the state keeps its structure and dtypes (bf16 runs: the policy of
  `_check_bf16_state_policy`), everything stays finite, an unknown extra
  keyword argument to `update` is ignored, and the step is traced once (one
  compilation serves every check)."""
  tx = gradkit.create(name, **_small_rank(name), **_sizes(name))
  extra = extra_update_args(tx, regression)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), regression.grad(params), params)
    updates, new_state = tx.update(grads, state, params, **extra)
    tolerated, _ = tx.update(grads, state, params, some_unused_extra_arg=3.0, **extra)
    return optax.apply_updates(params, updates), new_state, updates, tolerated

  params = jax.tree.map(lambda p: p.astype(dtype), regression.params)
  state0 = tx.init(params)
  _assert_quantizes(name, state0)
  new_params, state1, updates, tolerated = step(params, state0)
  chex.assert_trees_all_equal(tolerated, updates)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_dtypes(new_params, params)
  chex.assert_trees_all_equal_structs(state0, state1)
  assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(new_params))
  params, state = new_params, state1
  for _ in range(3):
    params, state, _, _ = step(params, state)
  assert len(traces) == 1
  chex.assert_trees_all_equal_dtypes(state0, state)
  chex.assert_trees_all_equal_dtypes(params, new_params)
  assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(params))
  if dtype == jnp.bfloat16:
    _check_bf16_state_policy(name, params, state)


@pytest.mark.parametrize("name", NAMES)
def test_negative_learning_rate_is_rejected(name):
  with pytest.raises(ValueError, match="learning_rate"):
    gradkit.create(name, learning_rate=-1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_gradient_tree_is_rejected(name, regression):
  tx = gradkit.create(name)
  extra = extra_update_args(tx, regression)
  state = tx.init(regression.params)
  wrong_shape = {"w": jnp.ones((6, 2)), "b": jnp.ones((3,))}
  with pytest.raises(ValueError, match=r"\['w'\].*shape"):
    tx.update(wrong_shape, state, regression.params, **extra)
  missing_leaf = {"w": jnp.ones((6, 3))}
  with pytest.raises(ValueError, match="structures differ"):
    tx.update(missing_leaf, state, regression.params, **extra)
