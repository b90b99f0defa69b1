"""Checks of experiments/bench_step.py that involve no timing.

The bandwidth copy must move exactly 2*params + grads + 2*state bytes (counted
by hand and by XLA's own cost analysis), and every optax counterpart must be
built with gradkit's hyperparameters (one jitted trajectory of each pair
agrees, also away from the defaults).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradkit
from gradkit.experiments import bench_step
from gradkit.registry import get_factory


def _tree(seed: int = 0) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  return {
      "w": jnp.asarray(rng.normal(size=(32, 64)), jnp.float32),
      "b": jnp.asarray(rng.normal(size=(64,)), jnp.float32),
  }


_PARAM_BYTES = (32 * 64 + 64) * 4


def test_copy_bytes_is_the_minimal_step_traffic():
  # adamw's state: an int32 count and two float32 moments shaped like params.
  state_bytes = 4 + 2 * _PARAM_BYTES
  expected = 2 * _PARAM_BYTES + _PARAM_BYTES + 2 * state_bytes
  state = gradkit.create("adamw").init(_tree())
  assert gradkit.state_nbytes(state) == state_bytes
  assert bench_step.copy_bytes(_PARAM_BYTES, _PARAM_BYTES, state_bytes) == expected


@pytest.mark.parametrize("name", ["adamw", "sgd", "lion"])
def test_bandwidth_copy_moves_exactly_copy_bytes(name):
  params, grads = _tree(0), _tree(1)
  state_shapes = jax.eval_shape(gradkit.create(name).init, params)
  buffers = bench_step.state_buffers(state_shapes)
  expected = bench_step.copy_bytes(
      _PARAM_BYTES, _PARAM_BYTES, gradkit.state_nbytes(state_shapes))

  def nbytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

  outputs = jax.eval_shape(bench_step.bandwidth_copy, params, buffers, grads)
  assert nbytes((params, buffers, grads)) + nbytes(outputs) == expected

  # XLA's count also sees whether a buffer was elided or read twice; it adds
  # a few bytes of bookkeeping per output buffer, far below one array's bytes.
  compiled = jax.jit(bench_step.bandwidth_copy, donate_argnums=(0, 1)).lower(
      params, buffers, grads).compile()
  accessed = compiled.cost_analysis()["bytes accessed"]
  n_outputs = len(jax.tree.leaves(outputs))
  assert expected <= accessed <= expected + 16 * n_outputs


def test_state_buffers_keep_bytes_of_non_numeric_leaves():
  shapes = {"key": jax.eval_shape(lambda: jax.random.key(0)), "m": jnp.zeros((3,), jnp.int8)}
  buffers = bench_step.state_buffers(shapes)
  # A threefry key is two uint32 words; its buffer is 8 uint8s.
  assert [(b.shape, b.dtype) for b in buffers] == [((8,), jnp.uint8), ((3,), jnp.int8)]


def _perturbed_hparams(name: str) -> dict[str, float]:
  """Every float default of gradkit's `name` moved, so a dropped one shows."""
  overrides = {"learning_rate": 0.05, "weight_decay": 0.05}
  for key, p in inspect.signature(get_factory(name)).parameters.items():
    if key not in overrides and isinstance(p.default, float) and p.default != 0.0:
      overrides[key] = 0.8 * p.default
  return overrides


_SAME_RULE = sorted(set(bench_step.OPTAX_COUNTERPARTS) - set(bench_step.RULE_DIFFERENCES))


def _trajectories(name: str, overrides: dict[str, float]):
  pair = bench_step.build_pair(name, **overrides)
  grads = [_tree(seed) for seed in (1, 2, 3)]
  out = []
  for tx in pair:
    params, updates = _tree(0), []
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in grads:
      u, state = step(g, state, params)
      params = jax.tree.map(lambda p, d: p + d, params, u)
      updates.append(u)
    out.append(updates)
  return out


@pytest.mark.parametrize("perturbed", [False, True])
@pytest.mark.parametrize("name", _SAME_RULE)
def test_counterpart_pairs_take_equal_steps(name, perturbed):
  overrides = _perturbed_hparams(name) if perturbed else {}
  ours, theirs = _trajectories(name, overrides)
  for u_ours, u_theirs in zip(ours, theirs):
    for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_theirs)):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(bench_step.RULE_DIFFERENCES))
def test_rule_differences_are_still_real(name):
  ours, theirs = _trajectories(name, {})
  gap = max(float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(ours[-1]), jax.tree.leaves(theirs[-1])))
  assert gap > 1e-5


def test_counterpart_hparams_forward_defaults_renames_and_pins():
  gk, ox = bench_step.counterpart_hparams("adabelief", b1=0.8)
  assert gk == {"rectify": False, "weight_decay": 0.0, "b1": 0.8}
  assert ox == {"learning_rate": 1e-3, "b1": 0.8, "b2": 0.999, "eps": 1e-16, "eps_root": 1e-16}
  gk, ox = bench_step.counterpart_hparams("lars", mask={"w": True, "b": False})
  assert ox["weight_decay_mask"] == {"w": True, "b": False}
  assert "mask" not in ox and "trust_ratio_mask" not in ox


def test_time_interleaved_rotates_order_and_respects_budget():
  calls = []

  def stepper(key):
    def call():
      calls.append(key)
      return 1.0
    return call

  steppers = {key: stepper(key) for key in "abc"}
  times = bench_step.time_interleaved(steppers, repeats=5, warmup=2, budget_s=100.0)
  assert calls[:6] == list("aabbcc")
  assert calls[6:] == list("abcbcacababcbca")
  assert {k: len(v) for k, v in times.items()} == {"a": 5, "b": 5, "c": 5}

  calls.clear()
  # One round takes 3 s: a 7 s budget leaves 2 repeats, raised to the minimum 3.
  times = bench_step.time_interleaved(steppers, repeats=5, warmup=1, budget_s=7.0)
  assert len(calls) == 3 + 3 * 3


def test_make_params_holds_at_least_the_requested_count():
  params = bench_step.make_params(0.05)
  sizes = [p.size for p in jax.tree.leaves(params)]
  kernels = [p for p in jax.tree.leaves(params) if p.ndim == 2]
  assert 50_000 <= sum(sizes) < 50_000 + kernels[0].size + kernels[0].shape[0]
  assert all(k.shape == kernels[0].shape for k in kernels)
