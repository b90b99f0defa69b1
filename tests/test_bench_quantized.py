"""The 8-bit benchmark's cut-short probes agree with adamw8bit up to where they stop."""

import jax
import numpy as np
import pytest

import gradkit
from gradkit.experiments import bench_quantized
from gradkit.transforms.quantized_state import QuantizedState, quantized_view


@pytest.fixture(name="problem")
def _problem():
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(0, 0.02, (96, 64)).astype(np.float32),
            "b": rng.normal(0, 0.02, (64,)).astype(np.float32)}
  grads = jax.tree.map(lambda p: rng.normal(0, 1, p.shape).astype(np.float32), params)
  return params, grads


def _step(tx, params, grads):
  return tx.update(grads, tx.init(params), params)


def _quantized_state(state):
  is_q = lambda x: isinstance(x, QuantizedState)  # noqa: E731
  (found,) = [x for x in jax.tree.leaves(state, is_leaf=is_q) if is_q(x)]
  return found


def test_probe_updates_equal_adamw8bit_first_step_and_keep_the_state(problem):
  params, grads = problem
  full_updates, _ = _step(gradkit.create("adamw8bit", **bench_quantized.HPARAMS), params, grads)
  probe = bench_quantized._adamw_tail(bench_quantized.dequantize_only_adamw8bit())
  updates, state = _step(probe, params, grads)
  jax.tree.map(np.testing.assert_array_equal, updates, full_updates)
  kept = _quantized_state(state)
  assert len(kept.absmax) == 2  # mu and nu of the one 6144-element kernel
  for s in kept.absmax:  # the initial (all-zero) scales
    np.testing.assert_array_equal(s, 0.0)
  assert int(quantized_view(kept).count) == 1


def test_run_reports_breakdown_rows():
  report = bench_quantized.run(0.05, repeats=3, budget_s=1.0, breakdown=True)
  assert "whole-tree path" in report and "dequantize + step only" in report
