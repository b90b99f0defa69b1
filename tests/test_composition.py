"""Every registered optimizer inside every wrapper users compose it with.

For each name of `gradkit.names()` one jitted program runs the optimizer
plain and inside each wrapper of `WRAPPERS` on a (64, 32) least-squares
problem, and each composed run is compared with an oracle computed without
that wrapper:

- `chain`: `optax.chain(optax.clip_by_global_norm(1e9), tx)`: the clip never
  fires, so the run equals the plain one.
- `partition`: `gradkit.partition({"opt": tx, "sgd": optax.sgd(0.1)})` with the
  kernel on "opt": the kernel equals `tx` run by hand on `{"w": w}` alone (its
  objective the full-tree loss with the current bias), the bias plain SGD.
- `masked`: `gradkit.masked(tx, {"w": True, "b": False})`: the kernel as by
  hand, the bias receives its raw gradient (optax's pass-through).
- `multi_steps`: `optax.MultiSteps(tx, every_k_schedule=2)` fed 0 and 2 g
  at each parameter point: their running mean is g exactly (the sum or the
  last would be 2 g), so every second call equals one plain step.
- `nnx`: `nnx.Optimizer(model, tx, wrt=nnx.Param)` on an NNX module holding
  the same arrays (objectives through `gradkit.flax_helpers.nnx_param_function`).
- `linen`: `gradkit.flax_helpers.TrainState.apply_gradients(grads=..., **extra)`.
- `quantized`: `gradkit.transforms.quantized(tx)`: its first step equals the
  plain one (the float32 state enters only from step 2), and its
  parameter-shaped float state (or the 8-bit state of an 8-bit recipe)
  shrinks to <= 0.27x, unless its plan names why each such leaf is kept.

`optax.inject_hyperparams` and `gradkit.inject_hyperparams` run over the
registry in tests/test_conformance.py and tests/test_hyperparams.py,
`optax.apply_if_finite` in tests/test_faults.py, meshes in
tests/test_sharding.py. docs/guides/composition.md's registry table is
rendered from this suite (`python tests/test_composition.py`
prints it; `test_docs_table_is_current` keeps it current).
"""

from __future__ import annotations

import inspect
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Regression
from flax import nnx

import gradkit
from gradkit.registry import get_factory
from gradkit.flax_helpers import TrainState, nnx_param_function
from gradkit.transforms import NothingQuantizedWarning, quantization_plan, quantized
from gradkit.transforms.quantized_state import QUANTIZED as QUANTIZED_DECISION
from trajectories import extra_update_args

NAMES = gradkit.names()
STEPS = 2
WRAPPERS = ("chain", "partition", "masked", "multi_steps", "nnx", "linen", "quantized")
# M-FAC's default 1024-gradient window costs a 1024 x 1024 factorisation per
# step; 16 gradients exercise the same state in each wrapper.
HPARAMS = {"mfac": {"num_grads": 16}}
# The comparisons run in float64. Composed and plain programs run the same
# operations, but XLA may fuse (and so round) them differently, and some
# methods amplify rounding by orders of magnitude on this problem: zeroth-order
# steps divide a loss difference by 2 eps = 2e-3 (one ulp of L ~ 5e3 moves a
# float32 step by ~0.25 |z| lr); COSMOS's eigenbasis of a one-step gradient
# covariance (rank <= 32 in 64 dimensions: degenerate eigenvalues) turned a
# rounding difference into 3.7e-9 of the movement in float64, ~3e7 eps; inexact
# float32 inputs (1 ulp) moved Natural GaLore by 0.22, M-FAC by 3e-2 and
# GaLore by 7e-4 of their movement. In float64 the same amplifications stay
# below 1e-10 of the movement, COSMOS's below 1e-7 (3e7 eps64, 25x margin).
TOLERANCE = 1e-10
TOLERANCE_OVERRIDE = {"cosmos": 1e-7}
QUANTIZED = {"min_size": 1024, "block_size": 256}


class _Linear(nnx.Module):

  def __init__(self, w, b):
    self.w = nnx.Param(w)
    self.b = nnx.Param(b)


def _as_dict(model) -> dict:
  return {"w": model.w[...], "b": model.b[...]}


def _on_kernel(fn, b):
  """`fn` of the full tree as a function of `{"w": w}`, the bias held at `b`."""
  return lambda sub, *args: fn({"w": sub["w"], "b": b}, *args)


def _runs(name: str, problem: Regression, steps: int) -> dict:
  """Final params of the plain run, each composed run and its oracle (one program)."""
  hparams = HPARAMS.get(name, {})
  tx = gradkit.create(name, **hparams)
  extra = extra_update_args(tx, problem)
  loss_grad = jax.grad(problem.loss)

  def plain(p0):
    out, state = [], tx.init(p0)
    p = p0
    for _ in range(steps):
      u, state = tx.update(loss_grad(p), state, p, **extra)
      p = optax.apply_updates(p, u)
      out.append(p)
    return out

  def run(wrapped, p0, feed=None, num_steps=steps):
    state, p = wrapped.init(p0), p0
    for _ in range(num_steps):
      g = loss_grad(p)
      for factor in (feed or (1.0,)):
        u, state = wrapped.update(jax.tree.map(lambda x: factor * x, g), state, p, **extra)
        p = optax.apply_updates(p, u)
    return p

  def run_steps(wrapped, p0, num_steps):
    return run(wrapped, p0, num_steps=num_steps)

  def by_hand(p0, bias_step):
    """`tx` on the kernel alone (full-tree objectives), `bias_step(g_b)` on the bias."""
    state, p = tx.init({"w": p0["w"]}), p0
    for _ in range(steps):
      g = loss_grad(p)
      sub_extra = {k: _on_kernel(f, p["b"]) for k, f in extra.items()}
      u, state = tx.update({"w": g["w"]}, state, {"w": p["w"]}, **sub_extra)
      p = {"w": p["w"] + u["w"], "b": p["b"] + bias_step(g["b"])}
    return p

  def nnx_run(p0):
    model = _Linear(p0["w"], p0["b"])
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for _ in range(steps):
      grads = nnx.grad(lambda m: problem.loss(_as_dict(m)))(model)
      kw = {k: nnx_param_function(model, lambda m, *a, f=f: f(_as_dict(m), *a), mode="current")
            for k, f in extra.items()}
      optimizer.update(model, grads, **kw)
    return _as_dict(model)

  def linen_run(p0):
    state = TrainState.create(apply_fn=None, params=p0, tx=tx)
    for _ in range(steps):
      state = state.apply_gradients(grads=loss_grad(state.params), **extra)
    return state.params

  qtx = _quantized(name)
  wrappers = {
      "quantized_step1": lambda p0: run_steps(qtx, p0, 1),
      "quantized": lambda p0: run_steps(qtx, p0, steps),
      "chain": lambda p0: run(optax.chain(optax.clip_by_global_norm(1e9), tx), p0),
      "partition": lambda p0: run(
          gradkit.partition({"opt": tx, "sgd": optax.sgd(0.1)}, {"w": "opt", "b": "sgd"}), p0),
      "masked": lambda p0: run(gradkit.masked(tx, {"w": True, "b": False}), p0),
      "multi_steps": lambda p0: run(optax.MultiSteps(tx, every_k_schedule=2), p0, (0.0, 2.0)),
      "nnx": nnx_run,
      "linen": linen_run,
  }

  @jax.jit
  def everything(p0):
    results = {"plain": plain(p0), "loss_start": problem.loss(p0),
               "by_hand_sgd": by_hand(p0, lambda g: -0.1 * g),
               "by_hand_pass": by_hand(p0, lambda g: g)}
    for wrapper, fn in wrappers.items():
      results[wrapper] = fn(p0)
    results["loss_plain"] = problem.loss(results["plain"][-1])
    results["loss_quantized"] = problem.loss(results["quantized"])
    return results

  return everything(problem.params)


_CACHE: dict[str, dict] = {}


def _problem() -> Regression:
  """The (64, 32) regression in float64 (call under `jax.enable_x64()`)."""
  problem = Regression(d_in=64, d_out=32)
  problem.x, problem.y = (jnp.asarray(a, jnp.float64) for a in (problem.x, problem.y))
  problem.params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), problem.params)
  return problem


def _results(name: str) -> dict:
  """All runs of `name`, computed once per worker for the parametrised wrappers."""
  if name not in _CACHE:
    with jax.enable_x64():
      problem = _problem()
      _CACHE[name] = {"start": jax.device_get(problem.params),
                      **jax.device_get(_runs(name, problem, STEPS))}
  return _CACHE[name]


def _assert_close(got, want, start, name, what):
  for key in ("w", "b"):
    moved = np.max(np.abs(np.asarray(want[key]) - np.asarray(start[key])))
    err = np.max(np.abs(np.asarray(got[key]) - np.asarray(want[key])))
    assert err <= TOLERANCE_OVERRIDE.get(name, TOLERANCE) * moved + 1e-30, (
        f"{name} in {what}: {key} differs by {err:.3g} (moved {moved:.3g})")


@pytest.mark.parametrize("wrapper", [w for w in WRAPPERS if w != "quantized"])
@pytest.mark.parametrize("name", NAMES)
def test_wrapper_is_neutral_or_matches_its_oracle(name, wrapper):
  results = _results(name)
  start = results["start"]
  got = results[wrapper]
  if wrapper == "partition":
    want = results["by_hand_sgd"]
  elif wrapper == "masked":
    want = results["by_hand_pass"]
  else:
    want = results["plain"][-1]
  _assert_close(got, want, start, name, wrapper)
  # The plain run must move the parameters, or neutrality would be vacuous.
  assert np.max(np.abs(np.asarray(results["plain"][-1]["w"]) - np.asarray(start["w"]))) > 0


def _is_8bit_recipe(name: str) -> bool:
  return "min_size" in inspect.signature(get_factory(name)).parameters


def _quantized(name: str) -> optax.GradientTransformation:
  """`quantized(tx)`; an 8-bit recipe (itself `quantized(...)`) at the same sizes instead.

  Wrapping an 8-bit recipe again quantizes nothing more (its state is left to
  its own wrapper, and `NothingQuantizedWarning` says so).
  """
  if _is_8bit_recipe(name):
    return gradkit.create(name, **HPARAMS.get(name, {}), **QUANTIZED)
  return quantized(gradkit.create(name, **HPARAMS.get(name, {})), **QUANTIZED)


def _float32_states(name: str) -> tuple:
  """(params, plain state, quantized state) of `name` as shapes, in float32."""
  params = Regression(d_in=64, d_out=32).params
  tx = gradkit.create(name, **HPARAMS.get(name, {}))
  return params, jax.eval_shape(tx.init, params), jax.eval_shape(_quantized(name).init, params)


def test_quantized_around_an_8bit_recipe_warns_that_it_adds_nothing():
  params = Regression(d_in=64, d_out=32).params
  with pytest.warns(NothingQuantizedWarning, match="already quantized"):
    quantized(gradkit.create("adamw8bit", **QUANTIZED), **QUANTIZED).init(params)


@pytest.mark.parametrize("name", NAMES)
def test_quantized_stores_parameter_shaped_state_in_8_bits(name):
  params, plain, state = _float32_states(name)
  shapes = {x.shape for x in jax.tree.leaves(params)}
  eligible = [x for x in jax.tree.leaves(plain)
              if jnp.issubdtype(x.dtype, jnp.floating) and x.shape in shapes
              and x.size >= QUANTIZED["min_size"]]
  block = QUANTIZED["block_size"]
  # Codes (1 byte per entry) plus one float32 absmax per block, by hand.
  want = sum(x.size + 4 * -(-x.size // block) for x in eligible)
  assert gradkit.state_nbytes_breakdown(state)["quantized"] == want
  assert want <= 0.27 * sum(x.size * x.dtype.itemsize for x in eligible)
  results = _results(name)
  # Step 1 runs `tx` on the exactly dequantized initial state.
  _assert_close(results["quantized_step1"], results["plain"][0], results["start"], name,
                "quantized, step 1")
  if results["loss_plain"] < results["loss_start"]:
    assert results["loss_quantized"] < results["loss_start"], f"{name}: quantized did not train"


def _quantized_cell(name: str) -> str:
  if _is_8bit_recipe(name):
    return "✓ its own (min_size=, block_size=)"
  params, _, state = _float32_states(name)
  plan = quantization_plan(jax.eval_shape(gradkit.create(name, **HPARAMS.get(name, {})).init,
                                          params), params, min_size=QUANTIZED["min_size"])
  count = sum(e.decision == QUANTIZED_DECISION for e in plan)
  if count:
    return f"✓ {count} leaves 8-bit"
  kept = sorted({e.decision for e in plan if e.shape != ()})
  return "nothing to quantize (" + "; ".join(kept) + ")" if kept else "nothing to quantize"


def render_table() -> str:
  """The registry x wrapper table of docs/guides/composition.md."""
  header = "| optimizer | " + " | ".join(f"`{w}`" for w in WRAPPERS) + " |"
  lines = [header, "| --- " * (len(WRAPPERS) + 1) + "|"]
  for name in NAMES:
    cells = [_quantized_cell(name) if w == "quantized" else "✓" for w in WRAPPERS]
    lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guides" / "composition.md"
BEGIN, END = "<!-- registry table: begin -->\n", "<!-- registry table: end -->\n"


def test_docs_table_is_current():
  text = DOCS.read_text()
  assert BEGIN in text and END in text, "composition.md lacks the generated table markers"
  table = text.split(BEGIN, 1)[1].split(END, 1)[0]
  assert table == render_table(), "run `python tests/test_composition.py` to refresh the table"


if __name__ == "__main__":
  text = DOCS.read_text()
  head, rest = text.split(BEGIN, 1)
  DOCS.write_text(head + BEGIN + render_table() + END + rest.split(END, 1)[1])
  sys.stdout.write(render_table())
