"""Bad input, non-finite gradients and degenerate leaves, for every
registered optimizer (the tables in docs/robustness.md).

Checks already in tests/test_conformance.py (unknown extra arguments, a
negative learning rate, mismatched trees, bf16 steps and the bf16 state-dtype
policy) and tests/test_registry.py (unknown names) are not repeated here.
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
from conftest import Regression

import gradkit
from gradkit.registry import get_factory
from trajectories import extra_update_args

NAMES = gradkit.names()


def _parameters(name: str) -> dict:
  return inspect.signature(get_factory(name)).parameters


MATRIX_METHODS = [n for n in NAMES if "param_labels" in _parameters(n)]
# Blocks small enough that the 8-bit optimizers quantize this file's (6, 3)
# kernel (by default leaves under 4096 elements keep float32 state).
QUANTIZED_SIZES = {"min_size": 8, "block_size": 8}


def _sizes(name: str) -> dict:
  return QUANTIZED_SIZES if "min_size" in _parameters(name) else {}

# One invalid value per hyperparameter name; every factory that takes the
# name must reject it with a ValueError that names it (the user's argument,
# as a word: not an internal name such as a primitive's `every` for trp's
# `period`, nor `adam_eps` for `eps`). Every argument of every registered
# factory is here or in NO_INVALID_VALUE.
INVALID_HYPERPARAMETERS = {
    "learning_rate": -1.0,
    "weight_decay": -0.1,
    "b1": 1.5,
    "b2": 1.5,
    "b3": 1.5,
    "beta": 1.5,
    "adam_b1": 1.5,
    "adam_b2": 1.5,
    "eps": -1.0,
    "adam_eps": -1.0,
    "adam_learning_rate": -1.0,
    "adam_weight_decay": -1.0,
    "momentum": -0.5,
    "rank": 0,
    "update_proj_gap": 0,
    "update_gap": 0,
    "update_interval": 0,
    "ns_steps": 0,
    "num_iterations": 0,
    "num_perturbations": 0,
    "num_probes": 0,
    "natural_history": 0,
    "block_size": 0,
    "fraction": 1.5,
    "density": 1.5,
    "damping": -1.0,
    "trust_coefficient": -1.0,
    "lr_ratio": -1.0,
    "threshold_scale": -1.0,
    "inactive_lr_scale": -1.0,
    "clip_threshold": -1.0,
    "eps_root": -1.0,
    "period": 0,
    "progressive_iter": -1,
    "limit_growth": False,
    "lambda_rank": -1.0,
    "nuclear_weight": -1.0,
    "gamma": -1.0,
    "gamma_init": -1.0,
    "gamma_min": -1.0,
    "max_tries": 0,
    "cg_max_iters": 0,
    "cg_tol": -1.0,
    "hessian_power": -1.0,
    "spatial_average_block": 0,
    "delta": -1.0,
    "wd_ratio": -1.0,
    "dampening": 1.5,
    "energy": 1.5,
    "max_fraction": 1.5,
    "threshold": -1.0,
    "min_size": -1,
    "num_grads": 0,
    "scale": -1.0,
    "proj_params_lr_scale": -1.0,
    "axis": 5,
    "mu_dtype": np.int8,
    "ns_coefficients": (3.4445, -4.775),
    "ns_coeffs": (3.4445, -4.775),
    "proj_type": "bogus",
    "proj_side": "bogus",
    "distribution": "bogus",
    "version": "bogus",
    "block_order": "bogus",
    "coord_choice": "bogus",
    "granularity": "bogus",
    "projector": "bogus",
    "momentum_mode": "bogus",
    "hessian": "bogus",
    "inactive_update_rule": "bogus",
    "limiter": "bogus",
}
# Arguments with no invalid value to check at build time, and why.
NO_INVALID_VALUE = {
    **dict.fromkeys(("mask", "trust_ratio_mask", "weight_decay_mask", "param_labels"),
                    "a tree or a callable of the params: checked at init (test_unknown_label_...)"),
    "keep_fp32": "None, a callable or a bool tree of the params: read at init",
    "seed": "any int; a non-int fails at init naming it (PRNG key seed must be an integer)",
    "min_dim": "any int is a threshold (leaves with min(m, n) > min_dim get the penalty)",
    **dict.fromkeys(("nesterov", "adam_nesterov", "rectify", "proximal", "scale_front",
                     "bias_correction", "conv_window_average", "normalize_by_max",
                     "reset_statistics", "decoupled_weight_decay"), "a flag"),
}
INVALID_CASES = [(n, k) for n in NAMES for k in _parameters(n) if k in INVALID_HYPERPARAMETERS]


def test_every_factory_argument_has_an_invalid_value_or_a_reason():
  unlisted = sorted({k for n in NAMES for k in _parameters(n)}
                    - set(INVALID_HYPERPARAMETERS) - set(NO_INVALID_VALUE))
  assert not unlisted, f"add these to INVALID_HYPERPARAMETERS or NO_INVALID_VALUE: {unlisted}"


@pytest.mark.parametrize(("name", "hyperparameter"), INVALID_CASES)
def test_invalid_hyperparameter_is_rejected_at_build_time(name, hyperparameter):
  value = INVALID_HYPERPARAMETERS[hyperparameter]
  with pytest.raises(ValueError, match=rf"\b{hyperparameter}\b"):
    gradkit.create(name, **{hyperparameter: value})


def _init_and_trace(tx, params, grads, extra=None):
  state = tx.init(params)
  jax.eval_shape(lambda s: tx.update(grads, s, params, **(extra or {})), state)


@pytest.mark.parametrize("name", MATRIX_METHODS)
def test_vector_labelled_matrix_is_rejected_with_its_path(name, regression):
  tx = gradkit.create(name, param_labels={"w": "matrix", "b": "matrix"})
  with pytest.raises(ValueError, match=r"acts on matrices.*\['b'\].*\(3,\)"):
    _init_and_trace(tx, regression.params, regression.grad(regression.params))


@pytest.mark.parametrize("name", MATRIX_METHODS)
def test_unknown_label_is_rejected(name, regression):
  tx = gradkit.create(name, param_labels={"w": "matrix", "b": "bias"})
  with pytest.raises(ValueError, match=r"param_labels use \['bias'\]"):
    _init_and_trace(tx, regression.params, regression.grad(regression.params))


NEEDS_EXTRA = [n for n in NAMES if extra_update_args(gradkit.create(n), Regression())]


@pytest.mark.parametrize("name", NEEDS_EXTRA)
def test_missing_extra_argument_is_named(name, regression):
  tx = gradkit.create(name)
  extra = extra_update_args(tx, regression)
  grads = regression.grad(regression.params)
  for missing in extra:
    given = {k: v for k, v in extra.items() if k != missing}
    with pytest.raises((TypeError, ValueError), match=rf"\b{missing}\b"):
      _init_and_trace(tx, regression.params, grads, given)


class DegenerateLeaves(Regression):
  """conftest's regression plus a scalar and zero-size leaves in the tree."""

  def __init__(self):
    super().__init__()
    self.params = {**self.params, "s": jnp.float32(0.5), "v": jnp.zeros((0,)),
                   "z": jnp.zeros((0, 3)), "zt": jnp.zeros((3, 0))}

  def loss(self, params):
    empty = sum(jnp.sum(params[k]) for k in ("v", "z", "zt"))
    return super().loss(params) + (params["s"] - 2.0) ** 2 + empty


def _runs(tx, problem, *grads_seqs, params=None):
  """For each gradient sequence, [(params, state)] before and after each step,
  from one jitted update (so the runs share its compilation); and the trace count."""
  extra = extra_update_args(tx, problem)
  traces = []

  @jax.jit
  def step(params, state, grads):
    traces.append(1)
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  params = problem.params if params is None else params
  histories = []
  for grads_seq in grads_seqs:
    history = [(params, tx.init(params))]
    for grads in grads_seq:
      history.append(step(*history[-1], grads))
    histories.append(history)
  return histories, len(traces)


def _run(tx, problem, grads_seq, params=None):
  """(params after each step, states after each step, trace count); update jitted."""
  (history,), traces = _runs(tx, problem, grads_seq, params=params)
  return history, traces


# SaRA trains only |w| < 2e-3 by default, none of this problem's weights.
MOVING_OVERRIDES = {"sara": {"threshold": 10.0}}


@pytest.mark.parametrize("name", NAMES)
def test_scalar_and_zero_size_leaves(name):
  problem = DegenerateLeaves()
  tx = gradkit.create(name, learning_rate=1e-2, **MOVING_OVERRIDES.get(name, {}), **_sizes(name))
  history, _ = _run(tx, problem, [problem.grad(problem.params)] * 2)
  final = history[-1][0]
  chex.assert_trees_all_equal_shapes_and_dtypes(final, problem.params)
  for k, p in final.items():
    assert np.all(np.isfinite(p)), f"{name}: leaf {k} not finite"
  for k in ("w", "s"):
    assert not np.array_equal(final[k], problem.params[k]), f"{name}: leaf {k} did not move"


def _with_bad_entry(grads, value):
  return jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(value), grads)


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_gradient_is_visible_or_ignored(name, regression):
  """Without a guard, a NaN gradient entry either makes the update non-finite
  (as in optax's own optimizers) or is not read at all (zeroth-order methods
  use only obj_fn): it is never absorbed silently into a finite update."""
  tx = gradkit.create(name, **_sizes(name))
  update = jax.jit(functools.partial(tx.update, **extra_update_args(tx, regression)))
  params, state = regression.params, tx.init(regression.params)
  grads = regression.grad(params)
  bad_updates, bad_state = update(_with_bad_entry(grads, jnp.nan), state, params)
  if any(not np.all(np.isfinite(u)) for u in jax.tree.leaves(bad_updates)):
    return
  clean_updates, clean_state = update(grads, state, params)
  chex.assert_trees_all_equal((bad_updates, bad_state), (clean_updates, clean_state))


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite_skips_bad_steps_and_continues_exactly(name, regression):
  """NaN and inf steps inside apply_if_finite leave a trajectory identical to
  the one that never saw them (state, counters and keys included)."""
  tx = optax.apply_if_finite(gradkit.create(name, learning_rate=1e-2, **_sizes(name)),
                             max_consecutive_errors=3)
  rng = np.random.default_rng(0)
  clean = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32),
                        regression.params) for _ in range(3)]
  faulty = [clean[0], _with_bad_entry(clean[1], jnp.nan), clean[1],
            _with_bad_entry(clean[2], jnp.inf), _with_bad_entry(clean[2], -jnp.inf), clean[2]]
  (want, got), _ = _runs(tx, regression, clean, faulty)
  (_, good), (skipped, bad) = got[1], got[2]
  chex.assert_trees_all_equal(skipped, got[1][0])  # a zero update
  chex.assert_trees_all_equal(bad.inner_state, good.inner_state)
  assert int(bad.notfinite_count) == 1
  assert int(got[3][1].notfinite_count) == 0  # reset by the next good step
  assert int(got[5][1].notfinite_count) == 2
  chex.assert_trees_all_equal(got[-1][0], want[-1][0])
  chex.assert_trees_all_equal(got[-1][1].inner_state, want[-1][1].inner_state)
  assert int(got[-1][1].total_notfinite) == 3
