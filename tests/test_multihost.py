"""Two JAX processes training on one global CPU mesh match a single-process run.

`test_two_processes_match_one` starts three subprocesses of this file: two
workers, each calling `jax.distributed.initialize` (coordinator on a free
localhost port) with `DEVICES_PER_PROCESS` CPU devices of its own, and one
single-process, single-device reference. The workers build one mesh over
all processes' devices, feed each process's own rows of the batch with
`jax.make_array_from_process_local_data`, put both kernels FSDP-style
(`P("batch", None)`) and the rest replicated, and run `STEPS` jitted steps
of each optimizer in `OPTIMIZERS` on the two-layer problem of
tests/test_sharding.py (in float64). Each worker gathers the parameters
with `multihost_utils.process_allgather` and writes them to tmp_path; the
test compares both workers' copies with the reference (docs/multihost.md).

Everything runs in float64 (`jax_enable_x64`), so a different reduction
order moves results by about n u64 (u64 = 1.1e-16, n <= 2048 terms), far
below what a real multi-host bug (a host using only its own rows, hosts
drawing different perturbations) produces; a negative control checks that
such a bug would be caught. The tolerances are derived in `TOLERANCES`.

The children get their own XLA_FLAGS (tests/conftest.py gives the parent 8
devices), with `--xla_backend_optimization_level=0`, which only makes
compilation faster. Every child has a deadline and is killed on failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np

STEPS = 3
DEVICES_PER_PROCESS = 2
NUM_PROCESSES = 2
DEADLINE_S = 180  # safety net only; the test takes ~30 s on 2 busy cores
# One per family: Adam-style, sign, matrix (Newton-Schulz), 8-bit state,
# low-rank (rank 4: see tests/test_sharding.py), second order with obj_fn,
# zeroth order with obj_fn.
OPTIMIZERS = {
    "adamw": {"learning_rate": 1e-3},
    "lion": {"learning_rate": 1e-4},
    "muon": {"learning_rate": 0.02},
    "adamw8bit": {"learning_rate": 1e-3},
    "galore": {"learning_rate": 1e-3, "rank": 4},
    # h refreshed every step and gamma 1, so the second and third steps are
    # not all clipped to +-lr (the Hessian estimate reaches the update).
    "sophia": {"learning_rate": 1e-3, "update_interval": 1, "gamma": 1.0, "b2": 0.9},
    "mezo": {"learning_rate": 1e-3},
}
NEEDS_OBJ_FN = {"sophia", "mezo"}
# Per leaf: max|p_multi - p_ref| <= tol * max|p_ref - p_init| + ATOL.
# float64 methods: every reduction differs by at most n u64 ~ 2048 * 1.1e-16
# = 2.3e-13 relative; normalisations (Adam's 1/sqrt(v), Newton-Schulz,
# Sophia's 1/h) over 3 steps amplify that by well under 1e3, so 1e-9
# (measured <= 5e-13). Discrete steps (Lion's sign, 8-bit codes) could flip
# only for a value within ~1e-13 of a threshold.
# Methods with float32 stages: GaLore projects in float32 (u32 = 6e-8; a
# 128-term float32 sum reorders by at most 128 u32 = 8e-6, through Adam's
# normalisation and back-projection, measured 5e-7); MeZO casts both losses
# to float32 and divides their difference by 2 eps = 2e-3, so one float32
# ulp of the loss (~1.2e-7 at a loss ~1) moves the projected gradient by
# ~6e-5, i.e. ~1e-4 of it relative, per evaluation. 1e-3 covers both
# bounds; a host using only its own rows is off by ~1e-1 (negative control).
TOLERANCES = {"galore": 1e-3, "mezo": 1e-3}
DEFAULT_TOLERANCE = 1e-9
ATOL = 1e-12


def _problem():
  """(params, x, y) of tests/test_sharding.py's TwoLayer, in float64 numpy."""
  rng = np.random.default_rng(0)
  params = {
      "w_in": rng.normal(size=(128, 32)) / 11,
      "w_out": rng.normal(size=(32, 128)) / 6,
      "b": np.zeros((32,)),
      "s": np.float64(1.0),
  }
  x = rng.normal(size=(16, 128))
  y = rng.normal(size=(16, 128))
  return params, x, y


def _loss(params, x, y):
  import jax.numpy as jnp
  h = jnp.tanh(x @ params["w_in"] + params["b"])
  return jnp.mean((h @ params["w_out"] - y) ** 2) + 1e-3 * params["s"] ** 2


def _train(tx, obj_fn_needed, params, x, y):
  import jax
  import optax

  @jax.jit
  def run(params, state, x, y):
    extra = {"obj_fn": lambda p: _loss(p, x, y)} if obj_fn_needed else {}

    def step(carry, _):
      params, state = carry
      updates, state = tx.update(jax.grad(_loss)(params, x, y), state, params, **extra)
      return (optax.apply_updates(params, updates), state), None

    # One call: a second one would compile again for the state's new layout.
    return jax.lax.scan(step, (params, state), length=STEPS)[0]

  state = tx.init(params)  # eager: parameter-shaped state keeps the params' layout
  return run(params, state, x, y)


def _local_rows(sharding, a):
  """This process's contiguous block of `a` along axis 0 under `sharding`."""
  if a.ndim == 0:
    return a
  index = sharding.addressable_devices_indices_map(a.shape).values()
  start = min(i[0].start or 0 for i in index)
  stop = max(a.shape[0] if i[0].stop is None else i[0].stop for i in index)
  return a[start:stop]


def worker(process_id: int, num_processes: int, port: int, out: str) -> None:
  """One process of the run; num_processes == 1 is the unsharded reference."""
  start = time.process_time()
  import jax
  jax.config.update("jax_enable_x64", True)
  print(f"import: {time.process_time() - start:.2f} s CPU", flush=True)
  if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default; explicit
    jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=60)
  from jax.experimental import multihost_utils
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  import gradkit

  params0, x, y = _problem()
  results, info = {}, {}
  if num_processes == 1:
    as_jax = lambda tree: jax.tree.map(jax.numpy.asarray, tree)  # noqa: E731
    for name, hparams in OPTIMIZERS.items():
      tx = gradkit.create(name, **hparams)
      t0 = time.process_time()
      got, _ = _train(tx, name in NEEDS_OBJ_FN, as_jax(params0), as_jax(x), as_jax(y))
      print(f"{name}: {time.process_time() - t0:.2f} s CPU", flush=True)
      results.update({f"{name}/{k}": np.asarray(v) for k, v in got.items()})
    # Negative control: what process 0 alone would compute from its own rows.
    half = x.shape[0] // NUM_PROCESSES
    got, _ = _train(gradkit.create("adamw", **OPTIMIZERS["adamw"]), False, as_jax(params0),
                    as_jax(x[:half]), as_jax(y[:half]))
    results.update({f"adamw_own_rows_only/{k}": np.asarray(v) for k, v in got.items()})
  else:
    assert jax.process_count() == num_processes
    assert jax.local_device_count() == DEVICES_PER_PROCESS
    mesh = jax.make_mesh((jax.device_count(),), ("batch",), axis_types=(AxisType.Auto,))
    rows, replicated = NamedSharding(mesh, P("batch", None)), NamedSharding(mesh, P())
    layout = {k: rows if k.startswith("w_") else replicated for k in params0}

    def put(a, sharding):
      a = np.asarray(a)
      return jax.make_array_from_process_local_data(sharding, _local_rows(sharding, a), a.shape)

    batch = put(x, rows), put(y, rows)
    info["devices"] = jax.device_count()
    info["processes"] = len({d.process_index for d in mesh.devices.flat})
    kernels = {params0[k].shape for k in ("w_in", "w_out")}
    for name, hparams in OPTIMIZERS.items():
      tx = gradkit.create(name, **hparams)
      params = {k: put(v, layout[k]) for k, v in params0.items()}
      t0 = time.process_time()
      got, state = _train(tx, name in NEEDS_OBJ_FN, params, *batch)
      print(f"{name}: {time.process_time() - t0:.2f} s CPU", flush=True)
      info[f"{name}/spans_processes"] = not got["w_in"].is_fully_addressable
      info[f"{name}/kernels_sharded"] = all(
          got[k].sharding.is_equivalent_to(rows, 2) for k in ("w_in", "w_out"))
      info[f"{name}/gathered_state"] = [
          jax.tree_util.keystr(path)
          for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
          if leaf.shape in kernels and not leaf.sharding.is_equivalent_to(rows, 2)]
      gathered = multihost_utils.process_allgather(got, tiled=True)
      results.update({f"{name}/{k}": np.asarray(v) for k, v in gathered.items()})
  np.savez(os.path.join(out, f"params_{num_processes}_{process_id}.npz"), **results)
  np.save(os.path.join(out, f"info_{num_processes}_{process_id}.npy"), info, allow_pickle=True)
  print(f"total: {time.process_time() - start:.2f} s CPU", flush=True)
  if num_processes > 1:
    jax.distributed.shutdown()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _child_env(num_devices: int) -> dict:
  env = dict(os.environ)
  kept = [f for f in env.get("XLA_FLAGS", "").split()
          if not f.startswith(("--xla_force_host_platform_device_count",
                               "--xla_backend_optimization_level"))]
  env["XLA_FLAGS"] = " ".join(kept + [f"--xla_force_host_platform_device_count={num_devices}",
                                      "--xla_backend_optimization_level=0"])
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _run_children(out: str) -> None:
  port = _free_port()
  specs = [(i, NUM_PROCESSES, DEVICES_PER_PROCESS) for i in range(NUM_PROCESSES)]
  specs.append((0, 1, 1))  # the single-process reference, run alongside
  children = []
  try:
    for process_id, num_processes, num_devices in specs:
      log = open(os.path.join(out, f"log_{num_processes}_{process_id}.txt"), "w")
      proc = subprocess.Popen(
          [sys.executable, __file__, str(process_id), str(num_processes), str(port), out],
          env=_child_env(num_devices), stdout=log, stderr=subprocess.STDOUT)
      children.append((proc, log))
    deadline = time.monotonic() + DEADLINE_S
    for proc, log in children:
      try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        pass
    failed = [(proc, log) for proc, log in children if proc.returncode != 0]
    if failed:
      report = []
      for proc, log in failed:
        log.flush()
        with open(log.name) as f:
          report.append(f"{log.name} (rc {proc.returncode}):\n{f.read()[-3000:]}")
      raise AssertionError("a child failed or ran past the deadline:\n" + "\n".join(report))
  finally:
    for proc, log in children:
      if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
      log.close()


def test_two_processes_match_one(tmp_path):
  out = str(tmp_path)
  _run_children(out)
  params0, _, _ = _problem()
  ref = np.load(os.path.join(out, "params_1_0.npz"))
  for process_id in range(NUM_PROCESSES):
    info = np.load(os.path.join(out, f"info_{NUM_PROCESSES}_{process_id}.npy"),
                   allow_pickle=True).item()
    assert info["devices"] == NUM_PROCESSES * DEVICES_PER_PROCESS
    assert info["processes"] == NUM_PROCESSES
    got = np.load(os.path.join(out, f"params_{NUM_PROCESSES}_{process_id}.npz"))
    for name in OPTIMIZERS:
      assert info[f"{name}/spans_processes"], f"{name}: w_in is not a multi-process array"
      assert info[f"{name}/kernels_sharded"], f"{name}: kernels were gathered"
      assert not info[f"{name}/gathered_state"], (
          f"{name}: kernel-shaped state not sharded: {info[f'{name}/gathered_state']}")
      tol = TOLERANCES.get(name, DEFAULT_TOLERANCE)
      for k, p0 in params0.items():
        want, have = ref[f"{name}/{k}"], got[f"{name}/{k}"]
        assert have.dtype == np.float64 and have.shape == np.shape(p0)
        moved = float(np.max(np.abs(want - p0)))
        assert moved > 0, f"{name} {k}: the reference did not move"
        err = float(np.max(np.abs(have - want)))
        assert err <= tol * moved + ATOL, (
            f"process {process_id} {name} {k}: {err:.3g} vs moved {moved:.3g} (tol {tol})")

  # Negative control: had each host trained on its own rows only, the check
  # above would fail by orders of magnitude, for every kernel.
  for k in ("w_in", "w_out"):
    moved = float(np.max(np.abs(ref[f"adamw/{k}"] - params0[k])))
    err = float(np.max(np.abs(ref[f"adamw_own_rows_only/{k}"] - ref[f"adamw/{k}"])))
    assert err > 100 * max(TOLERANCES.values()) * moved, (k, err, moved)


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
