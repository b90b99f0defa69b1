"""Step-time benchmark: every registered optimizer vs optax and vs a bandwidth copy.

For each optimizer in `gradkit.names()` this times one jitted step,
`updates, state = tx.update(grads, state, params); params = apply_updates(...)`,
with params and state donated, on a tree of at least `--params_millions`
float32 parameters, and reports in one run:

* the step time of optax's own implementation of the same method with the
  same hyperparameters, where optax has one (`OPTAX_COUNTERPARTS`), and the
  ratio gradkit / optax;
* the step time of a "bandwidth copy" that reads params, grads and state and
  writes params and state once, `copy_bytes` bytes in all, and the ratio
  step / copy: near 1 means the step moves no more memory than its state needs.

Measurements of gradkit, optax and the copy are interleaved (their order
rotates every repeat) so drift on a busy machine hits all three alike; times
are medians, ratios are medians of the per-repeat ratios.

Run:
  python experiments/bench_step.py --params_millions=16 --repeats=15 \
      --optimizers=adamw,lion --out=/tmp/bench_step.md
"""

from __future__ import annotations

import functools
import inspect
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import gradkit
from gradkit.registry import get_factory

# gradkit name -> optax factory of the same method. Shared hyperparameters are
# passed to both by name (see `counterpart_hparams`); sgd's momentum is pinned
# because optax.sgd has none by default.
OPTAX_COUNTERPARTS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adamw": optax.adamw,
    "sgd": functools.partial(optax.sgd, momentum=0.9),
    "lion": optax.lion,
    "adabelief": optax.adabelief,
    "adan": optax.adan,
    "lamb": optax.lamb,
    "lars": optax.lars,
}

# gradkit arguments that optax spells differently: gradkit name -> optax names.
_OPTAX_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    # gradkit's adabelief eps enters inside and outside the root, as optax's two.
    "adabelief": {"eps": ("eps", "eps_root")},
    "lars": {"mask": ("weight_decay_mask",)},
}

# gradkit options that select the variant of the rule optax implements.
_GRADKIT_PINS: dict[str, dict[str, Any]] = {
    "adabelief": {"rectify": False},
    "adan": {"proximal": False},
}

# Pairs whose rules still differ at equal hyperparameters (the timing compares
# the same amount of work, not the same numbers).
RULE_DIFFERENCES: dict[str, str] = {
    "adan": "optax.scale_by_adan (0.2.8) weights g_t - g_{t-1} by 1 - b2 where the"
            " official code uses b2 (optax PR #1715)",
}

_MAX_WIDTH = 2048


def make_params(params_millions: float, seed: int = 0) -> dict[str, dict[str, jax.Array]]:
  """Dense layers {kernel: (w, w), bias: (w,)} holding >= `params_millions` * 1e6 floats.

  Kernels are 2048 x 2048 (the largest power of two that fits, for small
  sizes), so matrix-aware methods see realistic 2-D leaves and biases take
  their fallback path.
  """
  target = params_millions * 1e6
  width = min(_MAX_WIDTH, 2 ** max(1, int(math.log2(math.sqrt(target)))))
  rng = np.random.default_rng(seed)
  return {
      f"layer{i}": {
          "kernel": jnp.asarray(rng.normal(0.0, 0.02, (width, width)), jnp.float32),
          "bias": jnp.asarray(rng.normal(0.0, 0.02, (width,)), jnp.float32),
      }
      for i in range(math.ceil(target / width**2))
  }


def counterpart_hparams(name: str, **overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """Keyword arguments (gradkit, optax) that build `name` with equal hyperparameters.

  Every argument of the gradkit factory that the optax factory also takes
  (under `_OPTAX_NAMES`' spelling) is given to optax with gradkit's value: its
  default or `overrides`. `None` is not passed: gradkit's None masks and
  dtypes mean what optax's own defaults mean. Where optax has no decoupled
  `weight_decay` (adabelief, sgd), gradkit's is set to 0.
  """
  optax_args = inspect.signature(OPTAX_COUNTERPARTS[name]).parameters
  gradkit_args = inspect.signature(get_factory(name)).parameters
  gradkit_kwargs = {**_GRADKIT_PINS.get(name, {}), **overrides}
  if "weight_decay" in gradkit_args and "weight_decay" not in optax_args:
    gradkit_kwargs["weight_decay"] = 0.0
  values = {k: p.default for k, p in gradkit_args.items() if p.default is not p.empty}
  values.update(gradkit_kwargs)
  renamed = _OPTAX_NAMES.get(name, {})
  optax_kwargs = {
      optax_name: value
      for key, value in values.items() if value is not None
      for optax_name in renamed.get(key, (key,)) if optax_name in optax_args
  }
  return gradkit_kwargs, optax_kwargs


def build_pair(
    name: str, **overrides: Any
) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """(gradkit, optax) transformations of `name` with equal hyperparameters."""
  gradkit_kwargs, optax_kwargs = counterpart_hparams(name, **overrides)
  return gradkit.create(name, **gradkit_kwargs), OPTAX_COUNTERPARTS[name](**optax_kwargs)


def copy_bytes(params_nbytes: int, grads_nbytes: int, state_nbytes: int) -> int:
  """Least memory traffic of a step: read params, grads, state; write params, state."""
  return 2 * params_nbytes + grads_nbytes + 2 * state_nbytes


def state_buffers(state_shapes: Any) -> list[jax.Array]:
  """One buffer per state leaf with the leaf's bytes, for the bandwidth copy.

  Numeric and boolean leaves keep their shape and dtype; others (e.g. PRNG
  keys) become uint8 buffers of the same byte count.
  """
  buffers = []
  for leaf in jax.tree.leaves(state_shapes):
    if jnp.issubdtype(leaf.dtype, jnp.number) or jnp.issubdtype(leaf.dtype, jnp.bool_):
      buffers.append(jnp.zeros(leaf.shape, leaf.dtype))
    else:
      buffers.append(jnp.zeros((math.prod(leaf.shape) * leaf.dtype.itemsize,), jnp.uint8))
  return buffers


def _touch(x: jax.Array) -> jax.Array:
  # An elementwise op XLA cannot elide; negation and +1 never drift into
  # denormals however often they are repeated.
  if jnp.issubdtype(x.dtype, jnp.bool_):
    return ~x
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return -x
  return x + 1


def bandwidth_copy(params: Any, state: list[jax.Array], grads: Any) -> tuple[Any, list[jax.Array]]:
  """Reads params, grads and state once and writes params and state once."""
  params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
  return params, [_touch(s) for s in state]


def quadratic_loss(params: Any) -> jax.Array:
  """0.5 ||params||^2: the `obj_fn` given to optimizers that need the loss."""
  return 0.5 * sum(jnp.vdot(p, p) for p in jax.tree.leaves(params))


def _extra_args(tx: optax.GradientTransformation, params: Any, grads: Any) -> dict[str, Any]:
  """{} if `tx.update` runs without extra arguments, else {"obj_fn": quadratic_loss}."""
  state = jax.eval_shape(tx.init, params)
  try:
    jax.eval_shape(lambda s: tx.update(grads, s, params), state)
    return {}
  except (TypeError, ValueError) as error:
    if "obj_fn" not in str(error):
      raise
  jax.eval_shape(lambda s: tx.update(grads, s, params, obj_fn=quadratic_loss), state)
  return {"obj_fn": quadratic_loss}


def jitted_step(tx: optax.GradientTransformation, extra_args: dict[str, Any]) -> Callable:
  """jit of (params, state, grads) -> (params, state), params and state donated."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params, **extra_args)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


class Stepper:
  """Holds the donated buffers of one compiled function; each call times one step."""

  def __init__(self, fn: Callable, params: Any, state: Any, grads: Any):
    self.fn = fn.lower(params, state, grads).compile()
    self.params, self.state, self.grads = params, state, grads

  def __call__(self) -> float:
    start = time.perf_counter()
    self.params, self.state = self.fn(self.params, self.state, self.grads)
    jax.block_until_ready((self.params, self.state))
    return time.perf_counter() - start


_MIN_REPEATS = 3


def time_interleaved(
    steppers: dict[str, Callable[[], float]], repeats: int, warmup: int, budget_s: float
) -> dict[str, list[float]]:
  """Seconds per call of each stepper, one call of each per repeat in rotating order.

  The last warm-up call estimates a round; repeats drop (to no fewer than 3)
  so the timed rounds fit in `budget_s`, keeping slow methods from dominating.
  """
  round_s = 0.0
  for stepper in steppers.values():
    for _ in range(warmup - 1):
      stepper()
    round_s += stepper()
  repeats = min(repeats, max(_MIN_REPEATS, int(budget_s / round_s)))
  times: dict[str, list[float]] = {key: [] for key in steppers}
  keys = list(steppers)
  for r in range(repeats):
    shift = r % len(keys)
    for key in keys[shift:] + keys[:shift]:
      times[key].append(steppers[key]())
  return times


class Row(NamedTuple):
  optimizer: str
  repeats: int
  state_mb: float
  step_ms: float
  optax_ms: float | None
  ratio_optax: float | None
  copy_ms: float
  ratio_copy: float


def _paired_median_ratio(a: list[float], b: list[float]) -> float:
  return statistics.median(x / y for x, y in zip(a, b))


def _copy_of(tree: Any) -> Any:
  return jax.tree.map(jnp.copy, tree)


def bench_one(
    name: str, params: Any, grads: Any, repeats: int, warmup: int, budget_s: float
) -> Row:
  """Times gradkit's `name`, its optax counterpart (if any) and the bandwidth copy."""
  if name in OPTAX_COUNTERPARTS:
    tx, optax_tx = build_pair(name)
  else:
    tx, optax_tx = gradkit.create(name), None
  # Every stepper gets buffers of its own, one per leaf: donation deletes them,
  # and an `init` may return a leaf twice or alias the params it was given.
  state = _copy_of(tx.init(params))
  nbytes = gradkit.state_nbytes(state)
  steppers = {
      "gradkit": Stepper(jitted_step(tx, _extra_args(tx, params, grads)),
                          _copy_of(params), state, grads),
      "copy": Stepper(jax.jit(bandwidth_copy, donate_argnums=(0, 1)), _copy_of(params),
                       state_buffers(jax.eval_shape(tx.init, params)), grads),
  }
  if optax_tx is not None:
    steppers["optax"] = Stepper(jitted_step(optax_tx, _extra_args(optax_tx, params, grads)),
                                 _copy_of(params), _copy_of(optax_tx.init(params)), grads)
  times = time_interleaved(steppers, repeats, warmup, budget_s)
  step, copy = times["gradkit"], times["copy"]
  optax_times = times.get("optax")
  return Row(
      optimizer=name,
      repeats=len(step),
      state_mb=nbytes / 1e6,
      step_ms=1e3 * statistics.median(step),
      optax_ms=None if optax_times is None else 1e3 * statistics.median(optax_times),
      ratio_optax=None if optax_times is None else _paired_median_ratio(step, optax_times),
      copy_ms=1e3 * statistics.median(copy),
      ratio_copy=_paired_median_ratio(step, copy),
  )


def format_row(row: Row | tuple[str, str]) -> str:
  """One Markdown table line; a (name, error) tuple is an optimizer that failed."""
  if not isinstance(row, Row):
    return f"| {row[0]} | failed: {row[1]} | | | | | |"
  optax_ms = "—" if row.optax_ms is None else f"{row.optax_ms:.2f}"
  ratio = "—" if row.ratio_optax is None else f"{row.ratio_optax:.3f}"
  return (
      f"| {row.optimizer} ({row.repeats}) | {row.state_mb:.1f} | {row.step_ms:.2f}"
      f" | {optax_ms} | {ratio} | {row.copy_ms:.2f} | {row.ratio_copy:.3f} |"
  )


def format_table(rows: list[Row | tuple[str, str]], title: str) -> str:
  """Markdown report: `title`, then one line per row."""
  header = [
      title,
      "",
      "| optimizer | state MB | step ms | optax ms | ratio vs optax | copy ms | ratio vs copy |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  return "\n".join(header + [format_row(row) for row in rows]) + "\n"


def run(
    names: list[str], params_millions: float, repeats: int, warmup: int, budget_s: float
) -> str:
  """Benchmarks `names` and returns the Markdown report."""
  params = make_params(params_millions)
  grads = make_params(params_millions, seed=1)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  rows: list[Row | tuple[str, str]] = []
  for name in names:
    try:
      rows.append(bench_one(name, params, grads, repeats, warmup, budget_s))
    except Exception as error:  # noqa: BLE001 - one broken optimizer must not end the run
      rows.append((name, f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"))
    print(format_row(rows[-1]), file=sys.stderr, flush=True)
  device = jax.devices()[0]
  title = (
      f"Step time on {device.platform} ({device.device_kind}), {n_params / 1e6:.2f}M float32"
      f" params; medians of (n) interleaved repeats, n <= {repeats}; copy = bandwidth copy"
      " of 2*params + grads + 2*state bytes; ratios are medians of per-repeat ratios."
  )
  return format_table(rows, title)


def _define_flags() -> None:
  # Defined only when run as a script, so importing this module (as the tests
  # do) never clashes with flags of the other experiment entry points.
  flags.DEFINE_float(
      "params_millions", 16.0, "Benchmark on at least this many million float32 parameters.",
      lower_bound=1e-3)
  flags.DEFINE_integer(
      "repeats", 21, "Timed steps per function (medians are reported).", lower_bound=1)
  flags.DEFINE_integer(
      "warmup", 1, "Untimed steps per function after compiling.", lower_bound=1)
  flags.DEFINE_float(
      "budget_s", 20.0, "Seconds of timed steps per optimizer; slow ones get fewer repeats.")
  flags.DEFINE_list(
      "optimizers", None, "Registered names to benchmark; default: all of gradkit.names().")
  flags.DEFINE_string("out", None, "Also write the Markdown table to this file.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS
  names = config.optimizers or gradkit.names()
  for name in names:  # a misspelt name fails now, not minutes into the run
    get_factory(name)
  report = run(names, config.params_millions, config.repeats, config.warmup,
               config.budget_s)
  print(report)
  if config.out:
    with open(config.out, "w") as f:
      f.write(report)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
