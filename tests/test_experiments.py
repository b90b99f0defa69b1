"""Tests of the experiment runner: data, training loop, result files, CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optax
import pytest

import gradkit
from gradkit.experiments import data, train
from gradkit.experiments.configs import digits_mlp

CONFIG_FILE = Path(digits_mlp.__file__)


def _config(steps: int, optimizers: str):
  config = digits_mlp.get_config()
  config.steps = steps
  config.optimizers = optimizers
  return config


def _num_params(config) -> int:
  widths = (64, *config.hidden_sizes, 10)
  return sum(i * o + o for i, o in zip(widths[:-1], widths[1:]))


def test_split_is_deterministic_and_stratified():
  a, b = data.load_digits(seed=3), data.load_digits(seed=3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  c = data.load_digits(seed=4)
  assert not np.array_equal(a.y_test, c.y_test)
  assert len(a.x_train) + len(a.x_test) == 1797
  assert len(a.x_test) == math.ceil(0.2 * 1797)
  assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
  # Stratified: every class keeps its share of the test split (within one example).
  train_counts, test_counts = np.bincount(a.y_train), np.bincount(a.y_test)
  np.testing.assert_allclose(test_counts, 0.25 * train_counts, atol=1.0)


def test_loader_standardizes_with_train_statistics():
  split = data.load_digits(seed=0)
  std = split.x_train.std(axis=0)
  np.testing.assert_allclose(split.x_train.mean(axis=0), 0.0, atol=1e-5)
  # Each column has unit std, or is constant (blank border pixels) and centred to 0.
  assert np.all((np.abs(std - 1.0) < 1e-4) | (std < 1e-6))
  # The test split is not standardized with its own statistics.
  assert np.abs(split.x_test.mean(axis=0)).max() > 0.05


def test_standardize_uses_train_statistics_only():
  rng = np.random.default_rng(0)
  x_train = rng.normal(3.0, 2.0, size=(50, 4))
  x_train[:, 3] = 7.0  # constant on the training split
  x_test = rng.normal(-1.0, 5.0, size=(20, 4))
  train_a, test_a = data.standardize(x_train, x_test)
  train_b, _ = data.standardize(x_train, 100.0 * x_test + 5.0)
  np.testing.assert_array_equal(train_a, train_b)
  mean = x_train.mean(axis=0)
  scale = np.array([x_train[:, j].std() for j in range(3)] + [1.0])
  np.testing.assert_allclose(test_a, (x_test - mean) / scale, rtol=1e-12)
  np.testing.assert_allclose(train_a[:, 3], 0.0)


def test_batch_indices_cover_each_epoch_once():
  batches = data.batch_indices(10, 5, 4, seed=1)
  assert batches.shape == (4, 5)
  flat = batches.reshape(2, 10)
  for epoch in flat:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(10))
  np.testing.assert_array_equal(batches, data.batch_indices(10, 5, 4, seed=1))
  assert not np.array_equal(batches, data.batch_indices(10, 5, 4, seed=2))
  with pytest.raises(ValueError, match="batch_size"):
    data.batch_indices(10, 11, 4, seed=1)
  with pytest.raises(ValueError, match="steps"):
    data.batch_indices(10, 5, 0, seed=1)


def test_optimizer_names_accepts_string_or_list():
  assert train.optimizer_names("lion, adamw,") == ["lion", "adamw"]
  assert train.optimizer_names(["lion", "adamw"]) == ["lion", "adamw"]
  config = digits_mlp.get_config()
  config.optimizers = ["sgd", "adamw"]  # the field takes a list as well as a string
  assert train.optimizer_names(config.optimizers) == ["sgd", "adamw"]
  with pytest.raises(ValueError, match="repeats"):
    train.optimizer_names("sgd,sgd")
  with pytest.raises(ValueError, match="no optimizer"):
    train.optimizer_names(" , ")


def test_unknown_optimizer_fails_before_training(tmp_path):
  workdir = tmp_path / "wd"
  with pytest.raises(ValueError, match=r"unknown optimizer 'adamx'.*adamw"):
    train.train_and_evaluate(_config(60, "adamw,adamx"), workdir)
  assert not workdir.exists()


def test_train_and_evaluate_writes_results(tmp_path):
  config = _config(60, "adamw,sgd")
  workdir = tmp_path / "wd"
  train.train_and_evaluate(config, workdir)
  for name in ("results.md", "results.csv", "loss_curves.png", "config.json",
               "environment.json"):
    assert (workdir / name).stat().st_size > 0, name
  assert (workdir / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  with open(workdir / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [row["optimizer"] for row in rows] == ["adamw", "sgd"]
  for row in rows:
    values = {k: float(v) for k, v in row.items() if k != "optimizer"}
    assert all(math.isfinite(v) for v in values.values()), row
    assert values["learning_rate"] == config.learning_rates[row["optimizer"]]
    assert values["final_train_loss"] < math.log(10)  # below the uniform prediction
    assert values["test_accuracy"] > 0.5  # chance is 0.1
  n = _num_params(config)
  # adamw: mu and nu in float32 plus an int32 count; sgd: one float32 momentum.
  assert int(rows[0]["state_bytes"]) == 2 * 4 * n + 4
  assert int(rows[1]["state_bytes"]) == 4 * n

  markdown = (workdir / "results.md").read_text()
  assert "| adamw |" in markdown and "| sgd |" in markdown
  assert json.loads((workdir / "config.json").read_text())["steps"] == 60
  env = json.loads((workdir / "environment.json").read_text())
  assert env["gradkit"] == gradkit.__version__ and env["optax"] == optax.__version__


def test_runs_are_reproducible_from_seed():
  split = data.load_digits(seed=0)
  config = _config(3, "adamw")
  first = train.train_one(gradkit.create("adamw"), config, split)
  again = train.train_one(gradkit.create("adamw"), config, split)
  np.testing.assert_array_equal(first.train_losses, again.train_losses)
  assert first.metrics["test_loss"] == again.metrics["test_loss"]
  config.seed = 1
  other = train.train_one(gradkit.create("adamw"), config, split)
  assert not np.array_equal(first.train_losses, other.train_losses)


def test_train_one_passes_obj_fn_to_transformations_that_need_it():
  # optax's Sophia calls obj_fn (params -> loss) for its Hessian estimate.
  split = data.load_digits(seed=0)
  result = train.train_one(optax.contrib.sophia(1e-3), _config(3, "sgd"), split)
  assert np.all(np.isfinite(result.train_losses))
  assert math.isfinite(result.metrics["test_loss"])


def test_command_line(tmp_path):
  # Relative config path, overrides, and the default workdir ./results/<config name>.
  config_arg = os.path.relpath(CONFIG_FILE, tmp_path)
  subprocess.run(
      [sys.executable, "-m", "gradkit.experiments", f"--config={config_arg}",
       "--config.steps=2", "--config.optimizers=sgd", "--config.hidden_sizes=(16,)"],
      cwd=tmp_path, check=True, capture_output=True, text=True,
  )
  workdir = tmp_path / "results" / "digits_mlp"
  with open(workdir / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [row["optimizer"] for row in rows] == ["sgd"]
  assert int(rows[0]["state_bytes"]) == 4 * (64 * 16 + 16 + 16 * 10 + 10)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["steps"] == 2 and saved["hidden_sizes"] == [16]
