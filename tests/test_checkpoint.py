"""Orbax checkpoints of optimizer state, and determinism (docs/robustness.md).

For every registered optimizer: 2 steps, save {params, state} with
orbax-checkpoint, 3 more steps; restoring the checkpoint and running the same
3 steps reproduces them bit for bit (quantized codes, PRNG key data, step
counters included) without retracing the jitted step, and an optimizer built
afresh with the same seed retraces the whole trajectory bit for bit. A
representative optimizer per kind of state continues from the checkpoint in
a fresh Python process, also bit for bit.

The problem is conftest's regression with a (128, 32) kernel: 4096 entries,
so the 8-bit optimizers quantize it (their min_size is 4096).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import Regression

import gradkit
from gradkit.registry import get_factory
from trajectories import extra_update_args

BEFORE, AFTER = 2, 3
# One per kind of state: plain moments, 8-bit codes with absmax, a PRNG key
# with a step counter, random projectors drawn from a key, SVD projectors.
FRESH_PROCESS = ("adamw", "adamw8bit", "mezo", "apollo", "galore")
# M-FAC's default window of 1024 gradients of this 4128-parameter problem is
# 17 MB of state and a 1024 x 1024 factorisation per step; 32 gradients hold
# the same kinds of state (window, ring position, damping) at 1/32 the cost.
HPARAMS = {"mfac": {"num_grads": 32}}
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _problem() -> Regression:
  return Regression(d_in=128, d_out=32)


def _stepper(tx, problem):
  extra = extra_update_args(tx, problem)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    updates, state = tx.update(problem.grad(params), state, params, **extra)
    return optax.apply_updates(params, updates), state

  def run(params, state, steps):
    history = []
    for _ in range(steps):
      params, state = step(params, state)
      history.append((params, state))
    return history

  return run, traces


def _save(path, tree) -> None:
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, tree)


def _restore(path, like):
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))


@pytest.mark.parametrize("name", gradkit.names())
def test_restored_state_continues_bit_for_bit(name, tmp_path):
  problem = _problem()
  tx = gradkit.create(name, **HPARAMS.get(name, {}))
  run, traces = _stepper(tx, problem)
  params, state = run(problem.params, tx.init(problem.params), BEFORE)[-1]
  _save(tmp_path / "ckpt", {"params": params, "state": state})
  expected = run(params, state, AFTER)

  restored = _restore(tmp_path / "ckpt", {"params": params, "state": state})
  chex.assert_trees_all_equal_dtypes(restored["state"], state)
  chex.assert_trees_all_equal(restored["state"], state)
  got = run(restored["params"], restored["state"], AFTER)
  chex.assert_trees_all_equal(got, expected)
  assert len(traces) == 1, f"{name}: restored state retraced the jitted step"

  # An optimizer built afresh with the same seed is the same program (its
  # update traces to the same jaxpr with the same constants) from the same
  # initial state, so the jitted step compiled above replays it.
  fresh = gradkit.create(name, **HPARAMS.get(name, {}))
  fresh_state = fresh.init(problem.params)
  chex.assert_trees_all_equal(fresh_state, tx.init(problem.params))
  _assert_same_program(fresh, tx, problem, fresh_state)
  replay = run(problem.params, fresh_state, BEFORE + AFTER)
  chex.assert_trees_all_equal(replay[-1], expected[-1])


def _assert_same_program(tx_a, tx_b, problem, state) -> None:
  grads = problem.grad(problem.params)
  extra = extra_update_args(tx_a, problem)
  a, b = (jax.make_jaxpr(lambda s, tx=tx: tx.update(grads, s, problem.params, **extra))(state)
          for tx in (tx_a, tx_b))
  assert str(a.jaxpr) == str(b.jaxpr)
  chex.assert_trees_all_equal(a.consts, b.consts)


SEEDED = [n for n in gradkit.names() if "seed" in inspect.signature(get_factory(n)).parameters]


@pytest.mark.parametrize("name", SEEDED)
def test_another_seed_gives_another_trajectory(name):
  """The seed reaches the parameters or the state (so the same-seed check can fail).

  With default settings some seeded methods draw nothing in 2 steps (FRUGAL's
  SVD projector, Sophia's Hessian refresh period), but they carry the key.
  """
  problem = _problem()
  finals = []
  for seed in (0, 1):
    tx = gradkit.create(name, seed=seed)
    run, _ = _stepper(tx, problem)
    finals.append(run(problem.params, tx.init(problem.params), 2)[-1])
  assert not all(np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1]))), name


_CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import jax, numpy as np, optax
    import orbax.checkpoint as ocp
    import gradkit
    from conftest import Regression
    from trajectories import extra_update_args

    root, names, steps = sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    problem = Regression(d_in=128, d_out=32)
    for name in names:
      tx = gradkit.create(name)
      like = {"params": problem.params, "state": jax.eval_shape(tx.init, problem.params)}
      with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(f"{root}/{name}",
                                    jax.tree.map(ocp.utils.to_shape_dtype_struct, like))
      extra = extra_update_args(tx, problem)

      @jax.jit
      def step(params, state):
        updates, state = tx.update(problem.grad(params), state, params, **extra)
        return optax.apply_updates(params, updates), state

      params, state = tree["params"], tree["state"]
      for _ in range(steps):
        params, state = step(params, state)
      leaves = jax.tree.leaves((params, state))
      np.savez(f"{root}/{name}.npz", *[np.asarray(jax.random.key_data(x)
               if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x) for x in leaves])
""")


def test_fresh_process_continues_bit_for_bit(tmp_path):
  problem = _problem()
  expected = {}
  for name in FRESH_PROCESS:
    tx = gradkit.create(name)
    run, _ = _stepper(tx, problem)
    params, state = run(problem.params, tx.init(problem.params), BEFORE)[-1]
    _save(tmp_path / name, {"params": params, "state": state})
    expected[name] = jax.tree.leaves(run(params, state, AFTER)[-1])

  child = subprocess.run(
      [sys.executable, "-c", _CHILD, TESTS_DIR, str(tmp_path), json.dumps(FRESH_PROCESS),
       str(AFTER)], capture_output=True, text=True)
  assert child.returncode == 0, child.stderr[-3000:]
  for name in FRESH_PROCESS:
    with np.load(tmp_path / f"{name}.npz") as got:
      leaves = [got[f"arr_{i}"] for i in range(len(got.files))]
    assert len(leaves) == len(expected[name]), name
    for g, e in zip(leaves, expected[name]):
      np.testing.assert_array_equal(g, np.asarray(e), err_msg=name)
