"""Every registered optimizer under jit on an 8-device mesh (docs/robustness.md).

A two-layer model with a tall (128, 32) and a wide (32, 128) kernel, a bias
and a scalar runs 3 steps three ways: on one device; data-parallel (the
batch sharded over the mesh, parameters replicated); FSDP-style (the batch
and both kernels sharded along their first axis, the rest replicated). The
parameters must agree with the one-device run within the method's tolerance
(relative to how far the parameters moved), and under FSDP every state leaf
with a kernel's shape must be sharded like that kernel, both after `tx.init`
(run eagerly, which keeps the layout of the parameters) and after the jitted
steps. Shardings are only placed on the inputs: XLA's propagation decides the
state's.

The 8 CPU devices come from tests/conftest.py (XLA_FLAGS).
"""

from __future__ import annotations

import copy
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import gradkit
from gradkit.registry import get_factory
from trajectories import extra_update_args

STEPS = 3
# Tolerance on max|p_mesh - p_one| / max|p_one - p_init|, per leaf: float32
# reductions summed in another order (measured <= 2e-4).
DEFAULT_TOLERANCE = 1e-3
# Methods whose step amplifies reduction-order rounding by a factor no
# float32 tolerance can bound across machines. AdaHessian divides by
# |z * Hz|, a sum with cancellation whose relative error grows without limit
# as it nears zero (a fresh clone on another CPU measured 0.041 against the
# float32 bound 0.017). Zeroth-order methods divide a difference of two loss
# values by 2 eps = 2e-3, amplifying the rounding of each ~1e3 (measured
# 1e-2 in float32). Natural GaLore inverts a nearly singular Fisher of the
# projected gradients (measured 1e-2 in float32). They run in float64, where
# the same amplification of a 1.1e-16 rounding measured <= 3e-13 of the
# parameter movement.
FLOAT64 = {"adahessian", "mezo", "sparse_mezo", "natural_galore"}
FLOAT64_TOLERANCE = 1e-8
# Methods whose step is a discontinuous function of sums: approx_newton's
# accept/reject test 8 lam (f - f+) >= |g+|^2 can flip on a reduction-order
# difference (measured: one flipped trial, a whole step apart). For them the
# mesh runs must still descend from the start, and state sharding is checked.
DISCONTINUOUS = {"approx_newton"}
# Sizes given to every factory that takes them. Low-rank methods run at rank
# 4: their default ranks (64-256) are clamped to min(m, n) = 32 here, where the
# subspace state (r, n) coincides with the kernel's shape without being laid
# out like it, and full-rank SVD/eigh bases of near-equal singular values are
# not reproducible across layouts. M-FAC keeps 8 gradients, not 1024, whose
# (1024, 1024) eigendecomposition would dominate the suite's time.
SMALL_SIZES = {"rank": 4, "num_grads": 8}


def _hparams(name: str) -> dict:
  taken = inspect.signature(get_factory(name)).parameters
  return {k: v for k, v in SMALL_SIZES.items() if k in taken}


class TwoLayer:
  """mean ||tanh(x W_in + b) W_out - y||^2 + 1e-3 s^2 on a 16-example batch."""

  def __init__(self, seed: int = 0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    self.params = {
        "w_in": jnp.asarray(rng.normal(size=(128, 32)) / 11, dtype),
        "w_out": jnp.asarray(rng.normal(size=(32, 128)) / 6, dtype),
        "b": jnp.zeros((32,), dtype),
        "s": jnp.asarray(1.0, dtype),
    }
    self.x = jnp.asarray(rng.normal(size=(16, 128)), dtype)
    self.y = jnp.asarray(rng.normal(size=(16, 128)), dtype)

  def loss(self, params):
    h = jnp.tanh(self.x @ params["w_in"] + params["b"])
    return jnp.mean((h @ params["w_out"] - self.y) ** 2) + 1e-3 * params["s"] ** 2

  def grad(self, params):
    return jax.grad(self.loss)(params)

  def sampled_loss(self, params, key):
    """Sophia-G's `sampled_obj_fn`: the loss is a Gaussian NLL of variance 64
    per output (1/128 of a squared error), so targets are pred + 8 N(0, 1)."""
    pred = jnp.tanh(self.x @ params["w_in"] + params["b"]) @ params["w_out"]
    noise = jax.random.normal(key, pred.shape, pred.dtype)
    target = jax.lax.stop_gradient(pred + 8.0 * noise)
    return jnp.mean((pred - target) ** 2) * pred.shape[0] ** 0.5


def _rebound(extra: dict, problem: TwoLayer) -> dict:
  """`extra` with the host problem's bound methods rebound to `problem`, whose
  batch is the jit argument (so obj_fn-style closures see the sharded batch)."""
  return {k: getattr(problem, v.__name__) if inspect.ismethod(v) else v
          for k, v in extra.items()}


def _runs(tx, host: TwoLayer, extra: dict, starts: tuple, x, y) -> list:
  """(params, init state, final state) of STEPS steps from each of `starts`.

  The runs share the batch (x, y) and go side by side through one jitted
  `lax.scan` of the steps: runs on the same mesh share one compilation, and
  the state's layout after a step (which XLA's propagation may choose unlike
  the eager init's) never reaches a second call that would compile again.
  """

  @jax.jit
  def run(runs, x, y):
    problem = copy.copy(host)
    problem.x, problem.y = x, y

    def step(runs, _):
      out = []
      for params, state in runs:
        updates, state = tx.update(problem.grad(params), state, params,
                                   **_rebound(extra, problem))
        out.append((optax.apply_updates(params, updates), state))
      return out, None

    return jax.lax.scan(step, runs, length=STEPS)[0]

  inits = [tx.init(params) for params in starts]
  runs = run(list(zip(starts, inits)), x, y)
  return [(params, init, state) for (params, state), init in zip(runs, inits)]


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((8,), ("batch",), axis_types=(AxisType.Auto,))


@pytest.mark.parametrize("name", gradkit.names())
def test_mesh_runs_match_one_device_and_state_stays_sharded(name, mesh):
  with jax.enable_x64(name in FLOAT64):
    _check_mesh_runs(name, mesh)


def _check_mesh_runs(name, mesh):
  host = TwoLayer(dtype=jnp.float64 if name in FLOAT64 else jnp.float32)
  tx = gradkit.create(name, **_hparams(name))
  extra = extra_update_args(tx, host)
  [(one, _, _)] = _runs(tx, host, extra, (host.params,), host.x, host.y)

  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch", None))
  batch = (jax.device_put(host.x, rows), jax.device_put(host.y, rows))
  layout = {k: rows if k.startswith("w_") else replicated for k in host.params}
  fsdp_params = {k: jax.device_put(v, layout[k]) for k, v in host.params.items()}
  (data_parallel, _, _), (fsdp, fsdp_init, fsdp_state) = _runs(
      tx, host, extra, (jax.device_put(host.params, replicated), fsdp_params), *batch)

  tol = FLOAT64_TOLERANCE if name in FLOAT64 else DEFAULT_TOLERANCE
  for run, got in (("data-parallel", data_parallel), ("fsdp", fsdp)):
    if name in DISCONTINUOUS:
      start = float(host.loss(host.params))
      assert float(host.loss(got)) < start, f"{name} {run}: loss did not decrease"
      continue
    for k, p0 in host.params.items():
      moved = float(jnp.max(jnp.abs(one[k] - p0)))
      err = float(jnp.max(jnp.abs(np.asarray(got[k]) - one[k])))
      assert err <= tol * moved + 1e-7, f"{name} {run} {k}: {err} vs moved {moved}"
  for k in ("w_in", "w_out"):
    assert fsdp[k].sharding.is_equivalent_to(rows, 2), f"{name}: params {k} gathered"

  kernels = {host.params[k].shape for k in ("w_in", "w_out")}
  for when, state in (("after init", fsdp_init), ("after the steps", fsdp_state)):
    gathered = [
        f"{jax.tree_util.keystr(path)} {leaf.shape} {leaf.sharding}"
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
        if leaf.shape in kernels and not leaf.sharding.is_equivalent_to(rows, 2)
    ]
    assert not gathered, f"{name}: parameter-shaped state not sharded {when}: {gathered}"


def test_jitted_init_puts_zero_state_on_one_device(mesh):
  """The pitfall the suite avoids, and the negative control of its check:
  `jax.jit(jnp.zeros_like)` gets no layout from an input it does not read, so
  a jitted `tx.init` leaves zero state on one device; eager `zeros_like`
  (and so eager `tx.init`) keeps the parameter's sharding."""
  rows = NamedSharding(mesh, P("batch", None))
  w = jax.device_put(jnp.ones((128, 32)), rows)
  assert jnp.zeros_like(w).sharding.is_equivalent_to(rows, 2)
  assert not jax.jit(jnp.zeros_like)(w).sharding.is_equivalent_to(rows, 2)
  tx = gradkit.create("adamw")
  assert not jax.jit(tx.init)(w)[1].mu.sharding.is_equivalent_to(rows, 2)
  assert tx.init(w)[1].mu.sharding.is_equivalent_to(rows, 2)
