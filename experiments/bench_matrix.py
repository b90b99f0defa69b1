"""Memory and step time of the matrix-aware optimizers on a LLaMA-60M-like tree.

Prints, from one run on `models.llama_like_params()` (58.1M float32 params,
d_model 512, 8 layers, FFN 1376, vocab 32000):

* a memory table: `gradkit.state_nbytes` of each method's state (from
  `jax.eval_shape`, nothing allocated), its ratio to AdamW's, and the bytes
  owned by the "matrix"-labelled leaves alone;
* a step-time table: one jitted, donated update+apply of each method with
  its defaults, interleaved with `optax.adamw` in every repeat, and the
  median of the per-repeat ratios;
* the cost of the shared heavy kernels on the tree's 56 "matrix" leaves:
  one Newton–Schulz orthogonalization (Muon's 5 steps, every step) and
  whitening (SWAN's 10 steps), and one SVD projector refresh, also amortized
  over GaLore's default period of 200 steps.

  python -m gradkit.experiments.bench_matrix [--repeats=5 --optimizers=muon,galore]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

import gradkit
from gradkit.experiments.bench_step import Stepper, jitted_step, time_interleaved
from gradkit.experiments.models import llama_like_params, materialize
from gradkit.optimizers.matrix_labels import matrix_labels
from gradkit.transforms import low_rank, newton_schulz
from gradkit.transforms.matrix_view import as_matrix

MATRIX_METHODS = ("swan", "sinkgd", "scale", "galore", "natural_galore", "apollo",
                  "apollo_mini", "frugal", "frugal_block", "frugal_coord", "cosmos", "muon")
SVD_PERIOD = 200


def without_label(params: Any, label: str) -> Any:
  """`params` with every leaf labelled `label` by `matrix_labels` removed."""
  labels = matrix_labels(params)
  return jax.tree.map(lambda p, lab: None if lab == label else p, params, labels)


def state_bytes(name: str, params: Any) -> int:
  """Bytes of `name`'s default state on `params` (abstract: nothing is allocated)."""
  return gradkit.state_nbytes(jax.eval_shape(gradkit.create(name).init, params))


def matrix_state_bytes(name: str, params: Any) -> int:
  """Bytes of `name`'s state that the "matrix"-labelled leaves own."""
  return state_bytes(name, params) - state_bytes(name, without_label(params, "matrix"))


def memory_table(names: list[str], params: Any) -> str:
  base = state_bytes("adamw", params)
  n = sum(p.size for p in jax.tree.leaves(params))
  lines = [
      f"Optimizer state on the LLaMA-60M-like tree ({n / 1e6:.1f}M float32 params).",
      "",
      "| optimizer | state MB | vs adamw | bytes/param | matrix-leaf state MB |",
      "| --- | ---: | ---: | ---: | ---: |",
  ]
  for name in ["adamw", *names]:
    total = state_bytes(name, params)
    lines.append(f"| {name} | {total / 1e6:.1f} | {total / base:.3f} | {total / n:.2f}"
                 f" | {matrix_state_bytes(name, params) / 1e6:.1f} |")
  return "\n".join(lines) + "\n"


def step_table(names: list[str], params: Any, grads: Any, repeats: int, budget_s: float) -> str:
  baseline = optax.adamw(1e-3)
  lines = [
      f"Step time on {jax.devices()[0].platform}; each method interleaved with optax.adamw"
      f" (medians of <= {repeats} repeats; ratio = median of per-repeat ratios).",
      "",
      "| optimizer | step ms | optax.adamw ms | ratio |",
      "| --- | ---: | ---: | ---: |",
  ]
  for name in names:
    tx = gradkit.create(name)
    steppers = {
        key: Stepper(jitted_step(t, {}), jax.tree.map(jnp.copy, params),
                     jax.tree.map(jnp.copy, t.init(params)), grads)
        for key, t in (("method", tx), ("adamw", baseline))
    }
    times = time_interleaved(steppers, repeats, warmup=2, budget_s=budget_s)
    ratio = statistics.median(a / b for a, b in zip(times["method"], times["adamw"]))
    lines.append(f"| {name} | {1e3 * statistics.median(times['method']):.1f}"
                 f" | {1e3 * statistics.median(times['adamw']):.1f} | {ratio:.2f} |")
  return "\n".join(lines) + "\n"


def _time(fn: Callable[[Any], Any], arg: Any, repeats: int) -> float:
  jax.block_until_ready(fn(arg))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(arg))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def kernel_table(params: Any, grads: Any, repeats: int) -> str:
  labels = matrix_labels(params)
  matrices = [as_matrix(g) for g, lab in zip(jax.tree.leaves(grads), jax.tree.leaves(labels))
              if lab == "matrix"]
  key = jax.random.key(0)
  kernels = {
      "Newton–Schulz orthogonalize (5 quintic steps)":
          lambda ms: [newton_schulz.newton_schulz_orthogonalize(m) for m in ms],
      "Newton–Schulz whiten (10 coupled steps)":
          lambda ms: [newton_schulz.newton_schulz_whiten(m) for m in ms],
      "SVD projector refresh (rank 128, std side)":
          lambda ms: [low_rank.make_projector(m, key, 128, "std", "svd") for m in ms],
  }
  adamw = optax.adamw(1e-3)
  adamw_step = Stepper(jitted_step(adamw, {}), jax.tree.map(jnp.copy, params),
                       adamw.init(params), grads)
  adamw_step()
  base = statistics.median(adamw_step() for _ in range(repeats))
  lines = [
      f"Heavy kernels on the {len(matrices)} matrix leaves (one call each, median of"
      f" {repeats}); optax.adamw step = {1e3 * base:.1f} ms.",
      "",
      "| kernel | ms per call | vs adamw step | amortized ms per step |",
      "| --- | ---: | ---: | ---: |",
  ]
  for title, kernel in kernels.items():
    seconds = _time(jax.jit(kernel), matrices, repeats)
    period = SVD_PERIOD if "SVD" in title else 1
    lines.append(f"| {title} | {1e3 * seconds:.1f} | {seconds / base:.2f}"
                 f" | {1e3 * seconds / period:.2f} (period {period}) |")
  return "\n".join(lines) + "\n"


def _define_flags() -> None:
  flags.DEFINE_integer("repeats", 5, "Timed repeats per measurement.", lower_bound=1)
  flags.DEFINE_float("budget_s", 30.0, "Seconds of timed steps per optimizer.")
  flags.DEFINE_list("optimizers", list(MATRIX_METHODS), "Registered names to benchmark.")
  flags.DEFINE_string("out", None, "Also write the Markdown report to this file.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS
  shapes = llama_like_params()
  report = memory_table(config.optimizers, shapes)
  print(report, flush=True)
  params, grads = materialize(shapes, seed=0), materialize(shapes, seed=1)
  for part in (kernel_table(params, grads, config.repeats),
               step_table(config.optimizers, params, grads, config.repeats, config.budget_s)):
    print(part, flush=True)
    report += "\n" + part
  if config.out:
    with open(config.out, "w") as f:
      f.write(report)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
