"""The runner: a config's workload, its candidates, the tuning protocol, the reports.

As in Flax's examples, `train_and_evaluate(config, workdir)` takes no flags;
`python -m gradkit.experiments` (experiments/__main__.py) wraps it with absl.

Supervised workloads (`workloads.WORKLOADS`) compare registered optimizers
by name with one generic trainer (`optimizer_run`), so a newly registered
optimizer is runnable from a config without touching this file. Other
comparisons register a builder with `register_comparison(name)` returning a
`tuning.Comparison` around their own run function (as `bilevel_comparison`
does for the solvers of `bilevel_tasks`); sweep, seeds and reports are shared.

Reproducibility: the data are fixed by config.data_seed; a run's initial
parameters, minibatch order and any optimizer `seed` by its run seed.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import gradkit
from gradkit.experiments import bilevel_tasks, data, report, tuning, workloads
from gradkit.registry import get_factory
from gradkit.second_order.sophia import sampled_cross_entropy

ComparisonBuilder = Callable[[ml_collections.ConfigDict], tuning.Comparison]
COMPARISONS: dict[str, ComparisonBuilder] = {}
SCHEDULES = ("constant", "warmup_cosine")


def register_comparison(name: str) -> Callable[[ComparisonBuilder], ComparisonBuilder]:
  """Registers `builder(config) -> tuning.Comparison` as config.workload = `name`."""

  def decorator(builder: ComparisonBuilder) -> ComparisonBuilder:
    if name in COMPARISONS:
      raise ValueError(f"workload {name!r} is already registered")
    COMPARISONS[name] = builder
    return builder

  return decorator


def candidate_names(value: str | Sequence[str], field: str = "optimizers") -> list[str]:
  """`"lion, adamw"` or `["lion", "adamw"]` -> `["lion", "adamw"]` (config.`field`)."""
  items = value.split(",") if isinstance(value, str) else value
  names = [name.strip() for name in items if name.strip()]
  if not names:
    raise ValueError(f"config.{field} names nothing")
  if len(set(names)) != len(names):
    raise ValueError(f"config.{field} repeats a name: {names}")
  return names


def default_learning_rate(name: str) -> float:
  """The `learning_rate` default of the factory registered as `name`."""
  default = inspect.signature(get_factory(name)).parameters["learning_rate"].default
  if default is inspect.Parameter.empty:  # most of optax's, e.g. "optax.adam"
    raise ValueError(f"{name} has no default learning rate: set config.learning_rates.{name}")
  return default


def factory_hparams(config: ml_collections.ConfigDict, name: str, seed: int) -> dict[str, Any]:
  """config.hparams[name], plus `seed=seed` for factories that take a seed not set there."""
  hparams = config.hparams.get(name, None)  # get: "optax.adam" is config.hparams.optax.adam
  hparams = {} if hparams is None else hparams.to_dict()
  if "seed" in inspect.signature(get_factory(name)).parameters:
    hparams.setdefault("seed", seed)
  return hparams


def schedule_multiplier(
    kind: str, count: jax.Array, total_steps: jax.Array, warmup_steps: jax.Array
) -> jax.Array:
  """Learning-rate multiplier at step `count` (0-based), in jnp so the step compiles once.

  "constant": 1. "warmup_cosine": linear warm-up to 1 over `warmup_steps`,
  then cosine decay to 0 at `total_steps` (Loshchilov & Hutter, 2017).
  """
  if kind == "constant":
    return jnp.ones((), jnp.float32)
  if kind != "warmup_cosine":
    raise ValueError(f"unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}")
  count = count.astype(jnp.float32)
  warmup = jnp.maximum(warmup_steps, 1.0)
  progress = jnp.clip((count - warmup) / jnp.maximum(total_steps - warmup, 1.0), 0.0, 1.0)
  return jnp.minimum((count + 1.0) / warmup, 1.0) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross entropy over every position with an integer label."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def optimizer_run(workload: workloads.Workload, config: ml_collections.ConfigDict) -> tuning.RunFn:
  """The generic trainer of `workload` as a RunFn over registered optimizer names.

  One training step is one jitted function of (params, optimizer state,
  learning rate, step count, batch indices): the optimizer is rebuilt inside
  it from a traced learning rate (every factory accepts one, as under
  optax.inject_hyperparams), so a candidate compiles once for all rates and
  seeds and its state holds nothing but the optimizer's own. `tx.update`
  receives `obj_fn` (params -> loss on the current batch) and
  `sampled_obj_fn` (the loss on labels sampled from the model, for Sophia-G),
  so methods that need them (zeroth-order, second-order) run too; the others
  ignore them.
  Validation loss and accuracy are measured at step 0 and every
  config.eval_every steps; a run stops early once the validation loss is not
  finite. Times exclude compilation and evaluation.
  """
  if config.schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {config.schedule!r}; known: {', '.join(SCHEDULES)}")
  if config.eval_every < 1:
    raise ValueError(f"eval_every must be >= 1, got {config.eval_every}")
  graphdef, _, _ = nnx.split(workload.init_model(0), nnx.Param, ...)
  train_set, validation, test = (
      None if s is None else data.Dataset(jnp.asarray(s.x), jnp.asarray(s.y))
      for s in workload.splits)

  def loss_of(params, rest, x, y):
    return cross_entropy(nnx.merge(graphdef, params, rest)(x), y)

  @jax.jit
  def evaluate(params, rest, x, y):
    logits = nnx.merge(graphdef, params, rest)(x)
    return cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, axis=-1) == y)

  compiled: dict[tuple[str, str], tuple[Any, float]] = {}

  def run(candidate, learning_rate, seed, steps, progress):
    hparams = factory_hparams(config, candidate, seed)

    def make_tx(lr):
      return optax.with_extra_args_support(
          gradkit.create(candidate, learning_rate=lr, **hparams))

    _, params, rest = nnx.split(workload.init_model(seed), nnx.Param, ...)
    opt_state = make_tx(learning_rate).init(params)
    state_bytes = gradkit.state_nbytes(opt_state)

    def step(params, rest, opt_state, lr, count, total, x_all, y_all, rows):
      x, y = x_all[rows], y_all[rows]

      def obj_fn(p):
        return loss_of(p, rest, x, y)

      loss, grads = jax.value_and_grad(obj_fn)(params)
      warmup = config.warmup_fraction * total.astype(jnp.float32)
      tx = make_tx(lr * schedule_multiplier(config.schedule, count, total, warmup))
      sampled_obj_fn = sampled_cross_entropy(lambda p: nnx.merge(graphdef, p, rest)(x))
      updates, opt_state = tx.update(
          grads, opt_state, params, obj_fn=obj_fn, sampled_obj_fn=sampled_obj_fn)
      return optax.apply_updates(params, updates), opt_state, loss

    batches = data.batch_indices(len(train_set.x), config.batch_size, steps, seed)
    scalar = {"lr": jnp.float32(learning_rate), "total": jnp.int32(steps)}
    key = (candidate, repr(sorted(hparams.items())))
    if key not in compiled:
      start = time.perf_counter()
      executable = jax.jit(step).lower(
          params, rest, opt_state, scalar["lr"], jnp.int32(0), scalar["total"],
          train_set.x, train_set.y, batches[0]).compile()
      compiled[key] = executable, time.perf_counter() - start
    executable, compile_s = compiled[key]

    eval_steps = sorted({0, *range(config.eval_every, steps, config.eval_every), steps})
    curves = {"loss": [], "accuracy": [], "train_loss": []}
    seconds, elapsed, batch_losses, done = [], 0.0, [], 0

    def record():
      loss, accuracy = jax.device_get(evaluate(params, rest, validation.x, validation.y))
      curves["loss"].append(float(loss))
      curves["accuracy"].append(float(accuracy))
      curves["train_loss"].append(
          float(np.mean(jax.device_get(batch_losses))) if batch_losses else math.nan)
      seconds.append(elapsed)
      return math.isfinite(float(loss))

    finite = record()
    for target_step in eval_steps[1:]:
      if not finite:
        break
      batch_losses = []
      start = time.perf_counter()
      for i in range(done, target_step):
        params, opt_state, loss = executable(
            params, rest, opt_state, scalar["lr"], jnp.int32(i), scalar["total"],
            train_set.x, train_set.y, batches[i])
        batch_losses.append(loss)
      jax.block_until_ready(params)
      elapsed += time.perf_counter() - start
      progress(target_step - done)
      done = target_step
      finite = record()

    missing = len(eval_steps) - len(seconds)
    scalars = {
        "ms_per_step": 1e3 * elapsed / done if done else math.nan,
        "compile_s": compile_s,
        "state_bytes": state_bytes,
    }
    if test is not None:
      test_loss, test_accuracy = jax.device_get(evaluate(params, rest, test.x, test.y))
      scalars.update(test_loss=float(test_loss), test_accuracy=float(test_accuracy))
    return tuning.RunRecord(
        candidate, learning_rate, seed, np.asarray(eval_steps),
        np.asarray(seconds + [math.nan] * missing),
        {k: np.asarray(v + [math.nan] * missing) for k, v in curves.items()}, scalars)

  return run


def optimizer_comparison(config: ml_collections.ConfigDict) -> tuning.Comparison:
  """Registered optimizers config.optimizers on the supervised config.workload.

  Learning rates: config.learning_rates[name], else the factory's default,
  swept over config.tuning.factors times it, or over
  config.tuning.learning_rates[name] where given. Every optimizer is built
  once first, so an unknown name or invalid hyperparameter fails at once.
  """
  names = candidate_names(config.optimizers)
  grids = {}
  for name in names:
    base = config.learning_rates.get(name, None)
    base = default_learning_rate(name) if base is None else base
    gradkit.create(name, learning_rate=base, **factory_hparams(config, name, 0))
    grids[name] = tuning.learning_rate_grid(
        base, config.tuning.factors, config.tuning.learning_rates.get(name, None))
  workload = workloads.WORKLOADS[config.workload](config)
  objectives = {m: tuning.Objective(m, up) for m, up in workloads.OBJECTIVES.items()}
  objectives["train_loss"] = tuning.Objective("train_loss", False)
  return tuning.Comparison(tuple(names), grids, optimizer_run(workload, config), objectives,
                           workload.metric, workload.target, workload.best_loss)


COMPARISONS.update(dict.fromkeys(workloads.WORKLOADS, optimizer_comparison))


def bilevel_comparison(config: ml_collections.ConfigDict) -> tuning.Comparison:
  """Bilevel solvers config.solvers on the task bilevel_tasks.TASKS[config.workload].

  A run is `task(solver, seed, steps=steps, **config.task)`; its curve (the
  outer objective at the solver's iterates, one value per step) is the
  "outer_objective" curve and its other numbers are scalars (the accurate
  final objective as exact_outer_objective). Solvers have no shared learning
  rate, so nothing is swept. The tasks' seconds include compilation.
  """
  names = candidate_names(config.solvers, "solvers")
  unknown = sorted(set(names) - set(bilevel_tasks.SOLVERS))
  if unknown:
    raise ValueError(f"unknown solvers {unknown}; known: {', '.join(bilevel_tasks.SOLVERS)}")
  task = bilevel_tasks.TASKS[config.workload]

  def run(candidate, learning_rate, seed, steps, progress):
    out = task(candidate, seed, steps=steps, **config.task.to_dict())
    scalars = {("exact_" + k if k == "outer_objective" else k): float(v)
               for k, v in out.items() if k not in ("curve", "seconds")}
    return tuning.record_from_curves(candidate, seed, {"outer_objective": out["curve"]},
                                     out["seconds"], scalars)

  return tuning.Comparison(
      tuple(names), dict.fromkeys(names, (None,)), run,
      {"outer_objective": tuning.Objective("outer_objective", False)}, "outer_objective",
      candidate_label="solver")


COMPARISONS.update(dict.fromkeys(bilevel_tasks.TASKS, bilevel_comparison))


def comparison_for(config: ml_collections.ConfigDict) -> tuning.Comparison:
  """The comparison registered as config.workload, built from `config`."""
  if config.workload not in COMPARISONS:
    raise ValueError(f"unknown workload {config.workload!r}; known: {', '.join(COMPARISONS)}")
  return COMPARISONS[config.workload](config)


def _objective(comparison: tuning.Comparison, metric: str) -> tuning.Objective:
  if metric not in comparison.objectives:
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(comparison.objectives)}")
  return comparison.objectives[metric]


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, *, progress_bar: bool = True
) -> list[dict[str, Any]]:
  """Runs the config's comparison under its tuning protocol and writes the reports.

  config.metric / config.target (None: the workload's) set the reported
  metric and the time-to-target threshold; config.tuning.metric (None: the
  reported metric) chooses learning rates. Writes report.write_results'
  files into `workdir` and returns the table rows.
  """
  comparison = comparison_for(config)
  metric = config.metric or comparison.metric
  objective = _objective(comparison, metric)
  target = config.target
  if target is None and metric == comparison.metric:
    target = comparison.target
  protocol = tuning.TuningProtocol(
      steps=config.steps, seeds=tuple(config.seeds),
      sweep_steps=config.tuning.steps or config.steps, sweep_seed=config.tuning.seed,
      selection=_objective(comparison, config.tuning.metric or metric))
  results = tuning.run_protocol(comparison, protocol, progress_bar=progress_bar)
  rows = [tuning.summarize(name, result, objective, target, comparison.best_loss)
          for name, result in results.items()]
  report.write_results(
      Path(workdir), rows, results, objective=objective, target=target,
      best_loss=comparison.best_loss, candidate_label=comparison.candidate_label,
      config=config.to_dict())
  return rows
