"""Trains one workload with each optimizer in a config and writes the results.

As in Flax's examples, `train_and_evaluate(config, workdir)` takes no flags;
`python -m gradkit.experiments` (experiments/__main__.py) wraps it with absl.
Every optimizer starts from the same initial parameters and sees the same
minibatches, both fixed by `config.seed`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import gradkit
from gradkit.experiments import data, models, report
from gradkit.registry import get_factory


class RunResult(NamedTuple):
  """What one optimizer's run measured; `metrics` holds report.COLUMNS' numbers."""

  metrics: dict[str, float]
  train_losses: np.ndarray  # minibatch loss at every step


def optimizer_names(value: str | Sequence[str]) -> list[str]:
  """`"lion, adamw"` or `["lion", "adamw"]` -> `["lion", "adamw"]`."""
  items = value.split(",") if isinstance(value, str) else value
  names = [name.strip() for name in items if name.strip()]
  if not names:
    raise ValueError("config.optimizers names no optimizer")
  if len(set(names)) != len(names):
    raise ValueError(f"config.optimizers repeats a name: {names}")
  return names


def build_optimizers(
    config: ml_collections.ConfigDict,
) -> dict[str, tuple[Any, optax.GradientTransformation]]:
  """name -> (learning rate, transformation) for every name in config.optimizers.

  Built before any training, so an unknown name (gradkit's error lists the
  nearest registered ones) or an invalid hyperparameter fails at once. The
  learning rate is config.learning_rates[name], else the factory's default.
  """
  built = {}
  for name in optimizer_names(config.optimizers):
    hparams = config.hparams[name].to_dict() if name in config.hparams else {}
    if name in config.learning_rates:
      hparams["learning_rate"] = config.learning_rates[name]
    tx = gradkit.create(name, **hparams)
    default_lr = inspect.signature(get_factory(name)).parameters["learning_rate"].default
    built[name] = (hparams.get("learning_rate", default_lr), tx)
  return built


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit  # compiled once per model structure and data shape, shared by all runs
def _evaluate(model: models.MLP, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  logits = model(x)
  return _cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, axis=-1) == y)


def train_one(
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    split: data.Split,
    *,
    desc: str = "",
) -> RunResult:
  """Trains the config's MLP with `tx` for config.steps steps and evaluates it.

  The step is one jitted function of the whole (model, optimizer) state.
  `tx.update` also receives `obj_fn` (params -> loss on the current batch),
  so transformations that need the loss (Sophia-style) work as well;
  others ignore it. Step time excludes compilation and the first step.
  """
  num_classes = int(split.y_train.max()) + 1
  features = (split.x_train.shape[1], *config.hidden_sizes, num_classes)
  model = models.MLP(features, rngs=nnx.Rngs(config.seed))
  optimizer = nnx.Optimizer(model, optax.with_extra_args_support(tx), wrt=nnx.Param)
  state_bytes = gradkit.state_nbytes(optimizer.opt_state)
  graphdef, state = nnx.split((model, optimizer))

  def train_step(state, x, y, batch):
    model, optimizer = nnx.merge(graphdef, state)
    model_def = nnx.graphdef(model)
    x, y = x[batch], y[batch]

    def loss_fn(model):
      return _cross_entropy(model(x), y)

    def obj_fn(params):
      return loss_fn(nnx.merge(model_def, params))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads, obj_fn=obj_fn)
    return nnx.state((model, optimizer)), loss

  x_train, y_train = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
  batches = data.batch_indices(len(split.x_train), config.batch_size, config.steps, config.seed)
  start = time.perf_counter()
  step = jax.jit(train_step).lower(state, x_train, y_train, batches[0]).compile()
  compile_s = time.perf_counter() - start

  losses = []
  with tqdm(total=config.steps, desc=desc, unit="step") as bar:
    for i, batch in enumerate(batches):
      if i == 1:
        jax.block_until_ready(state)
        start = time.perf_counter()
      state, loss = step(state, x_train, y_train, batch)
      losses.append(loss)
      bar.update()
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start
    model, _ = nnx.merge(graphdef, state)
    train_loss, _ = _evaluate(model, x_train, y_train)
    test_loss, test_accuracy = _evaluate(model, split.x_test, split.y_test)
    bar.set_postfix(test_accuracy=f"{float(test_accuracy):.3f}")

  metrics = {
      "final_train_loss": float(train_loss),
      "test_loss": float(test_loss),
      "test_accuracy": float(test_accuracy),
      "ms_per_step": 1e3 * elapsed / (config.steps - 1) if config.steps > 1 else float("nan"),
      "compile_s": compile_s,
      "state_bytes": state_bytes,
  }
  return RunResult(metrics, np.asarray(jax.device_get(losses)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict]:
  """Runs every optimizer in `config` and writes the results into `workdir`.

  Writes results.md and results.csv (one row per optimizer, report.COLUMNS),
  loss_curves.png, config.json and environment.json. Returns the rows.
  """
  optimizers = build_optimizers(config)
  split = data.load_digits(config.seed, config.test_fraction)
  rows, curves = [], {}
  for name, (learning_rate, tx) in optimizers.items():
    result = train_one(tx, config, split, desc=name)
    rows.append({"optimizer": name, "learning_rate": learning_rate, **result.metrics})
    curves[name] = result.train_losses

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  environment = report.environment()
  report.write_tables(rows, workdir, environment)
  report.plot_loss_curves(curves, workdir / "loss_curves.png", smoothing=config.plot_smoothing)
  report.write_json(config.to_dict(), workdir / "config.json")
  report.write_json(environment, workdir / "environment.json")
  return rows
