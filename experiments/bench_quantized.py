"""8-bit vs 32-bit optimizer state: step time and state bytes in one run.

Times one jitted, donated update+apply of `adamw8bit` against `optax.adamw`
(and gradkit's fp32 `adamw`) with equal hyperparameters on a tree of at
least 64M float32 parameters, interleaved, and prints the time and
`gradkit.state_nbytes` ratios (goal: state about 4x smaller at no more than
1.3x the step time).

  python -m gradkit.experiments.bench_quantized [--params_millions=64 --repeats=7]
"""

from __future__ import annotations

import statistics

import jax
import optax
from absl import app, flags

import gradkit
from gradkit.experiments.bench_step import Stepper, jitted_step, make_params, time_interleaved

HPARAMS = {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-2}


def run(params_millions: float, repeats: int, budget_s: float) -> str:
  """Benchmarks adamw8bit, gradkit adamw and optax.adamw; returns a Markdown report."""
  params = make_params(params_millions)
  grads = make_params(params_millions, seed=1)
  txs = {
      "adamw8bit": gradkit.create("adamw8bit", **HPARAMS),
      "adamw (gradkit fp32)": gradkit.create("adamw", **HPARAMS),
      "optax.adamw": optax.adamw(**HPARAMS),
  }
  steppers, nbytes = {}, {}
  for name, tx in txs.items():
    state = jax.tree.map(jax.numpy.copy, tx.init(params))
    nbytes[name] = gradkit.state_nbytes(state)
    own_params = jax.tree.map(jax.numpy.copy, params)
    steppers[name] = Stepper(jitted_step(tx, {}), own_params, state, grads)
  times = time_interleaved(steppers, repeats, warmup=1, budget_s=budget_s)
  base = "optax.adamw"
  n = sum(p.size for p in jax.tree.leaves(params))
  lines = [
      f"{n / 1e6:.1f}M float32 params on {jax.devices()[0].platform}; medians of"
      f" {len(times[base])} interleaved repeats; ratios vs optax.adamw"
      " (time: median of per-repeat ratios).",
      "",
      "| optimizer | state MB | state ratio | step ms | time ratio |",
      "| --- | ---: | ---: | ---: | ---: |",
  ]
  for name in txs:
    ratio = statistics.median(a / b for a, b in zip(times[name], times[base]))
    lines.append(
        f"| {name} | {nbytes[name] / 1e6:.1f} | {nbytes[name] / nbytes[base]:.3f}"
        f" | {1e3 * statistics.median(times[name]):.1f} | {ratio:.3f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS
  print(run(config.params_millions, config.repeats, config.budget_s))


if __name__ == "__main__":
  flags.DEFINE_float("params_millions", 64.0, "Million float32 parameters (at least).")
  flags.DEFINE_integer("repeats", 7, "Timed steps per optimizer.", lower_bound=1)
  flags.DEFINE_float("budget_s", 60.0, "Seconds of timed steps in all.")
  app.run(main)
