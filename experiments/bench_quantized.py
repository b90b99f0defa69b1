"""8-bit vs 32-bit optimizer state: step time and state bytes in one run.

Times one jitted, donated update+apply of `adamw8bit` against `optax.adamw`
(and gradkit's fp32 `adamw`) with equal hyperparameters on a tree of at
least 64M float32 parameters, interleaved, and prints the time and
`gradkit.state_nbytes` ratios (goal: state about 4x smaller at no more than
1.3x the step time). `--breakdown` adds two rows that show where the time
goes: adamw8bit on the whole-tree path (`quantized(..., elementwise=False)`,
which on XLA:CPU materializes every moment to take its block absmax), and a
probe that stops before requantizing (dequantize + Adam + apply, old codes
kept: the floor of any 8-bit step).

  python -m gradkit.experiments.bench_quantized [--params_millions=64 --repeats=7 --breakdown]
"""

from __future__ import annotations

import statistics

import jax
import optax
from absl import app, flags

import gradkit
from gradkit.experiments.bench_step import Stepper, jitted_step, make_params, time_interleaved
from gradkit.optimizers.eight_bit import BLOCK_SIZE, MIN_SIZE
from gradkit.transforms.quantization import dequantize_blockwise, dynamic_map
from gradkit.transforms.quantized_state import (
    QuantizedArray,
    QuantizedState,
    quantized,
    quantized_view,
)

HPARAMS = {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-2}


def dequantize_only_adamw8bit() -> optax.GradientTransformation:
  """adamw8bit's step stopped before requantizing (a timing probe, not an optimizer).

  Dequantizes mu (signed map) and nu (unsigned map), runs optax.scale_by_adam
  and returns the old codes and scales unchanged.
  """
  state_layout = quantized(optax.scale_by_adam(), BLOCK_SIZE, MIN_SIZE)
  adam = optax.scale_by_adam(HPARAMS["b1"], HPARAMS["b2"], HPARAMS["eps"])
  is_quantized = lambda x: isinstance(x, QuantizedArray)  # noqa: E731

  def dequantize(signed: bool):
    def restore(x):
      if not is_quantized(x):
        return x
      return dequantize_blockwise(
          x.codes, x.absmax, dynamic_map(signed), x.codes.shape, block_size=BLOCK_SIZE
      )
    return lambda tree: jax.tree.map(restore, tree, is_leaf=is_quantized)

  def update_fn(updates, state, params=None):
    del params
    view = quantized_view(state)
    full = view._replace(mu=dequantize(True)(view.mu), nu=dequantize(False)(view.nu))
    updates, new = adam.update(updates, full)
    return updates, QuantizedState(state.inner._replace(count=new.count), state.absmax)

  return optax.GradientTransformation(state_layout.init, update_fn)


def _adamw_tail(direction: optax.GradientTransformation) -> optax.GradientTransformation:
  return optax.chain(
      direction,
      optax.add_decayed_weights(HPARAMS["weight_decay"]),
      optax.scale_by_learning_rate(HPARAMS["learning_rate"]),
  )


def run(params_millions: float, repeats: int, budget_s: float, breakdown: bool = False) -> str:
  """Benchmarks adamw8bit, gradkit adamw and optax.adamw; returns a Markdown report."""
  params = make_params(params_millions)
  grads = make_params(params_millions, seed=1)
  txs = {
      "adamw8bit": gradkit.create("adamw8bit", **HPARAMS),
      "adamw (gradkit fp32)": gradkit.create("adamw", **HPARAMS),
      "optax.adamw": optax.adamw(**HPARAMS),
  }
  if breakdown:
    adam = optax.scale_by_adam(HPARAMS["b1"], HPARAMS["b2"], HPARAMS["eps"])
    txs["adamw8bit, whole-tree path"] = _adamw_tail(quantized(adam, BLOCK_SIZE, MIN_SIZE))
    txs["probe: dequantize + step only"] = _adamw_tail(dequantize_only_adamw8bit())
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
  print(run(config.params_millions, config.repeats, config.budget_s, config.breakdown))


if __name__ == "__main__":
  flags.DEFINE_float("params_millions", 64.0, "Million float32 parameters (at least).")
  flags.DEFINE_integer("repeats", 7, "Timed steps per optimizer.", lower_bound=1)
  flags.DEFINE_float("budget_s", 60.0, "Seconds of timed steps in all.")
  flags.DEFINE_bool("breakdown", False, "Also time the whole-tree path and a dequantize probe.")
  app.run(main)
