"""Runs every script in examples/ with few steps and checks what it claims.

Scripts are loaded from their files and their `main(steps=...)` called in
this process (sharing one jax import); `custom_rule.py` also runs as a user
types it, `python examples/custom_rule.py --steps N`, in a subprocess whose
printed numbers are checked.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import gradkit

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
CHANCE_LOSS = math.log(10.0)  # cross-entropy of a uniform guess over the 10 digits


def _load(name: str):
  spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Linen's dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_every_example_is_tested_and_listed():
  scripts = sorted(p.stem for p in EXAMPLES.glob("*.py"))
  here = pathlib.Path(__file__).read_text()
  readme = (EXAMPLES / "README.md").read_text()
  for name in scripts:
    assert re.search(rf"^def test_{name}(_\w+)?\(", here, re.M), f"examples/{name}.py has no test"
    assert f"{name}.py" in readme, f"examples/{name}.py is not in examples/README.md"
    module = _load(name)
    assert module.__doc__ and module.__doc__.strip(), f"examples/{name}.py has no docstring"
    assert "steps" in module.main.__code__.co_varnames


def test_nnx_muon():
  result = _load("nnx_muon").main(steps=40)
  routing = result["routing"]
  assert routing["hidden1/kernel"] == routing["hidden2/kernel"] == "matrix"  # Muon
  assert routing["head/kernel"] == "head"  # AdamW
  assert all(routing[f"{layer}/bias"] == "vector" for layer in ("hidden1", "hidden2", "head"))
  assert abs(result["initial_loss"] - CHANCE_LOSS) < 0.5  # an untrained network
  assert result["train_loss"] < 0.25 * result["initial_loss"]
  assert result["test_accuracy"] > 0.8  # chance is 0.1


def test_linen_sophia():
  result = _load("linen_sophia").main(steps=40)
  assert "obj_fn" in result["apply_gradients_error"]  # why apply_gradients cannot be used
  assert result["steps"] == 40  # state.replace(step=...) kept TrainState's counter
  assert result["train_loss"] < 0.25 * result["initial_loss"]
  assert result["test_accuracy"] > 0.8


def test_custom_rule_runs_as_a_script():
  steps, lr = 30, 0.01
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user has
  run = subprocess.run([sys.executable, "examples/custom_rule.py", "--steps", str(steps)],
                       cwd=EXAMPLES.parent, env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  out = run.stdout
  norm0, n = re.search(r"\|\|W_0\|\| = ([\d.]+), (\d+) weights", out).groups()
  norm0, n = float(norm0), int(n)
  runs = {name: (float(a), float(b), float(g)) for name, a, b, g in re.findall(
      r"(\w+)\s+loss ([\d.]+) -> ([\d.]+)\s+\|\|W\|\| / \|\|W_0\|\| = ([\d.]+)", out)}
  assert set(runs) == {"lion_p", "lion"}, out
  # Projected steps are orthogonal to the weights: ||W_T||^2 <= ||W_0||^2 + T lr^2 n
  # (sign entries, |d_i| <= 1), up to float32 rounding and the 3-decimal print.
  bound = math.sqrt(1 + steps * lr ** 2 * n / norm0 ** 2)
  start, end, growth = runs["lion_p"]
  assert growth <= bound * (1 + 1e-4) + 1e-3, (growth, bound)
  assert end < 0.1 * start
  assert runs["lion"][2] > 2 * bound  # without the projection the norm grows


def test_galore_8bit():
  module = _load("galore_8bit")
  result = module.main(steps=30)
  eight, full = result["galore_8bit"], result["galore (32-bit)"]
  assert eight["bytes"] < full["bytes"]  # the subspace moments are uint8 codes
  assert result["quantized(galore) bytes"] <= full["bytes"]
  for run in (eight, full):
    assert run["loss"] < 0.5 * result["initial_loss"]

  # The rebuilt optimizer is GaLore: its first update equals galore's (8-bit
  # state enters from step 2), and its state holds uint8 codes.
  params = module.init_mlp(1)
  x = jax.random.normal(jax.random.key(2), (32, 64))
  y = jnp.arange(32) % 10
  grads = jax.grad(module.loss_fn)(params, x, y)
  hparams = dict(learning_rate=1e-3, rank=16, update_proj_gap=10)
  txs = module.galore_8bit(**hparams), gradkit.create("galore", **hparams)
  (u8, s8), (u32, _) = (jax.jit(tx.update)(grads, tx.init(params), params) for tx in txs)
  # Same float32 operations; 4 ulp of slack for a different fusion order.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=4 * 2.0 ** -23, atol=1e-12),
               u8, u32)
  codes = [leaf for leaf in jax.tree.leaves(s8) if leaf.dtype == jnp.uint8]
  # mu and nu of the (16, 256) and (256, 16) subspaces of the first two
  # kernels (4096 elements, quantized); the last kernel's (256, 10) and the
  # biases are under bitsandbytes' min_8bit_size and stay float32.
  assert len(codes) == 4


def test_mezo_finetune():
  result = _load("mezo_finetune").main(steps=200)
  assert result["shifted_loss"] > 3 * result["pretrained_loss"]  # the task really shifted
  for name in ("mezo", "mezo_step"):
    assert result[name] < 0.85 * result["shifted_loss"], (name, result)
  # Same seed, same directions: the in-place step differs only by float32
  # drift of theta + eps z - 2 eps z + eps z (~1e-7 relative per step, so
  # ~2e-5 over 200 steps summed without cancellation); 1e-3 of the loss
  # leaves room for the SPSA difference quotient amplifying it (measured 1e-7).
  assert abs(result["mezo"] - result["mezo_step"]) <= 1e-3 * result["shifted_loss"]


def test_bilevel_hyper_cleaning():
  result = _load("bilevel_hyper_cleaning").main(steps=20)
  # Every weight starts at sigmoid(0) = 0.5; the hypergradient must push the
  # corrupted examples' weights down and the clean ones' up.
  assert result["corrupted_weight"] < 0.5 - 0.2
  assert result["clean_weight"] > 0.5 + 0.2
  assert result["cleaned_accuracy"] > result["uniform_accuracy"] + 0.1
