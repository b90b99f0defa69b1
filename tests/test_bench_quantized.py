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


def test_cut_short_updates_equal_adamw8bit_first_step(problem):
  params, grads = problem
  full_updates, _ = _step(gradkit.create("adamw8bit", **bench_quantized.HPARAMS), params, grads)
  for stage in ("dequantize", "absmax"):
    tx = bench_quantized._adamw_tail(bench_quantized.cut_short_adamw8bit(stage))
    updates, _ = _step(tx, params, grads)
    jax.tree.map(np.testing.assert_array_equal, updates, full_updates)


def test_absmax_stage_scales_equal_requantized_scales(problem):
  params, grads = problem
  _, full_state = _step(gradkit.create("adamw8bit", **bench_quantized.HPARAMS), params, grads)
  probe = bench_quantized._adamw_tail(bench_quantized.cut_short_adamw8bit("absmax"))
  _, probe_state = _step(probe, params, grads)
  want = _quantized_state(full_state).absmax
  got = _quantized_state(probe_state).absmax
  assert len(got) == len(want) == 2  # mu and nu of the one 6144-element kernel
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6)
  # The dequantize stage keeps the initial (all-zero) scales.
  _, kept = _step(bench_quantized._adamw_tail(bench_quantized.cut_short_adamw8bit("dequantize")),
                  params, grads)
  for s in _quantized_state(kept).absmax:
    np.testing.assert_array_equal(s, 0.0)
  assert int(quantized_view(_quantized_state(kept)).count) == 1


def test_unknown_stage_is_rejected():
  with pytest.raises(ValueError, match="stage"):
    bench_quantized.cut_short_adamw8bit("lookup")


def test_run_reports_breakdown_rows():
  report = bench_quantized.run(0.05, repeats=3, budget_s=1.0, breakdown=True)
  assert "cut short: dequantize" in report and "cut short: absmax" in report
