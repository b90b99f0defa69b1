"""Every registered optimizer under jit on an 8-device (4, 2) mesh (docs/robustness.md).

A two-layer model with a tall (128, 32) and a wide (32, 128) kernel, a bias
and a scalar runs 3 steps in four layouts of the parameters, the batch split
over all 8 devices in each:

- data-parallel: the parameters replicated;
- FSDP over rows: both kernels split 8 ways along their first axis;
- FSDP over columns: both kernels split 8 ways along their second axis;
- 2-D: both kernels split 4 ways along rows and 2 ways along columns.

The bias and the scalar are replicated. Each layout's parameters must agree
with a one-device run from the same initial state (moved to one device)
within the method's tolerance (relative to how far the parameters moved),
and every state leaf with a kernel's shape must be sharded like that kernel,
both after `tx.init` (run eagerly, which keeps the layout of the
parameters) and after the jitted steps. Shardings are only placed on the
inputs: XLA's propagation decides the state's.

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
from gradkit.transforms.quantized_state import QuantizedState, ShardLayoutWarning
from trajectories import extra_update_args

STEPS = 3
# Every run is float64. A sharded run sums its reductions in another order
# than the one-device run, a rounding of ~1e-16 relative, which a method's
# step amplifies: AdaHessian divides by |z * Hz|, a sum with cancellation;
# zeroth-order methods divide a loss difference by 2 eps = 2e-3; Natural
# GaLore and M-FAC invert nearly singular Fisher / Gram matrices; an 8-bit
# state flips a code when a moment within an ulp of a code's midpoint
# rounds the other way (about 1e-5 per element and step in float32). In
# float32 these measured 4e-2 (AdaHessian, on another CPU), 1e-2, 1.2e-3 (M-FAC,
# 2-D mesh) and 2.8e-3 (adamw8bit, FSDP over columns) of the parameter
# movement, no bound a float32 tolerance can keep across machines; the same
# amplifications of a float64 rounding stay below 1e-12 (measured <= 3e-13),
# so a tolerance of 1e-8 of the movement holds on any machine.
TOLERANCE = 1e-8
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


def _runs(tx, host: TwoLayer, extra: dict, starts: list, x, y) -> list:
  """Final (params, state) of STEPS steps from each (params, init state) of `starts`.

  The runs share the batch (x, y) and go side by side through one jitted
  `lax.scan` of the steps: runs on the same devices share one compilation,
  and the state's layout after a step (which XLA's propagation may choose
  unlike the eager init's) never reaches a second call that would compile
  again.
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

  return run(starts, x, y)


KERNELS = ("w_in", "w_out")
# How the kernels are split over the (data: 4, model: 2) mesh in each layout.
LAYOUTS = {
    "data-parallel": P(),
    "fsdp-rows": P(("data", "model"), None),
    "fsdp-columns": P(None, ("data", "model")),
    "2-d": P("data", "model"),
}


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def _layout_params(mesh, host: TwoLayer) -> dict:
  """The parameters placed in each layout of LAYOUTS."""
  replicated = NamedSharding(mesh, P())
  return {
      layout: {k: jax.device_put(v, NamedSharding(mesh, spec) if k in KERNELS else replicated)
               for k, v in host.params.items()}
      for layout, spec in LAYOUTS.items()
  }


def _shapes(tree) -> tuple:
  return jax.tree.structure(tree), tuple((x.shape, x.dtype) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", gradkit.names())
def test_mesh_runs_match_one_device_and_state_stays_sharded(name, mesh):
  with jax.enable_x64(True):
    _check_mesh_runs(name, mesh)


def _check_mesh_runs(name, mesh):
  host = TwoLayer(dtype=jnp.float64)
  tx = gradkit.create(name, **_hparams(name))
  extra = extra_update_args(tx, host)
  placed = _layout_params(mesh, host)
  inits = {layout: tx.init(params) for layout, params in placed.items()}
  batch = [jax.device_put(v, NamedSharding(mesh, P(("data", "model"), None)))
           for v in (host.x, host.y)]
  finals = dict(zip(LAYOUTS, _runs(tx, host, extra, [(placed[k], inits[k]) for k in LAYOUTS],
                                   *batch)))

  # One-device references, one per distinct state layout (8-bit states record
  # theirs in the absmax shapes), each from that layout's own initial state.
  device = jax.devices()[0]
  distinct = {}
  for layout, init in inits.items():
    distinct.setdefault(_shapes(init), layout)
  starts = [(host.params, jax.device_put(inits[layout], device)) for layout in distinct.values()]
  references = dict(zip(distinct, _runs(tx, host, extra, starts, host.x, host.y)))

  for layout, (got, state) in finals.items():
    if name in DISCONTINUOUS:
      start = float(host.loss(host.params))
      assert float(host.loss(got)) < start, f"{name} {layout}: loss did not decrease"
    else:
      one, _ = references[_shapes(inits[layout])]
      for k, p0 in host.params.items():
        moved = float(jnp.max(jnp.abs(one[k] - p0)))
        err = float(jnp.max(jnp.abs(np.asarray(got[k]) - one[k])))
        assert err <= TOLERANCE * moved, f"{name} {layout} {k}: {err} vs moved {moved}"
    kernel = NamedSharding(mesh, LAYOUTS[layout])
    for k in KERNELS:
      assert got[k].sharding.is_equivalent_to(kernel, 2), f"{name} {layout}: params {k} moved"
    kernels = {host.params[k].shape for k in KERNELS}
    for when, tree in (("after init", inits[layout]), ("after the steps", state)):
      stray = [
          f"{jax.tree_util.keystr(path)} {leaf.shape} {leaf.sharding}"
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if leaf.shape in kernels and not leaf.sharding.is_equivalent_to(kernel, 2)
      ]
      assert not stray, f"{name} {layout}: parameter-shaped state not laid out {when}: {stray}"
      # 8-bit scales: split 8 ways like their kernels' codes, not gathered.
      scales = [a for q in _quantized_states(tree) for a in q.absmax]
      whole = [f"{a.shape} {a.sharding}" for a in scales
               if layout != "data-parallel" and 8 * np.prod(a.sharding.shard_shape(a.shape)) != a.size]
      assert not whole, f"{name} {layout}: 8-bit absmax not split {when}: {whole}"



def _quantized_states(tree) -> list:
  is_quantized = lambda node: isinstance(node, QuantizedState)  # noqa: E731
  return [s for s in jax.tree.leaves(tree, is_leaf=is_quantized) if is_quantized(s)]


def test_jitted_init_puts_zero_state_on_one_device(mesh):
  """The pitfall the suite avoids, and the negative control of its check:
  `jax.jit(jnp.zeros_like)` gets no layout from an input it does not read, so
  a jitted `tx.init` leaves zero state on one device; eager `zeros_like`
  (and so eager `tx.init`) keeps the parameter's sharding."""
  rows = NamedSharding(mesh, LAYOUTS["fsdp-rows"])
  w = jax.device_put(jnp.ones((128, 32)), rows)
  assert jnp.zeros_like(w).sharding.is_equivalent_to(rows, 2)
  assert not jax.jit(jnp.zeros_like)(w).sharding.is_equivalent_to(rows, 2)
  tx = gradkit.create("adamw")
  assert not jax.jit(tx.init)(w)[1].mu.sharding.is_equivalent_to(rows, 2)
  assert tx.init(w)[1].mu.sharding.is_equivalent_to(rows, 2)


def test_a_shard_without_a_usable_tile_keeps_the_official_blocks_and_warns(mesh):
  """Rows of 257 (a prime) split one per device leave only (1, 1) tiles: the
  state keeps the row-major blocks and says so."""
  w = jax.device_put(jnp.ones((8, 257)), NamedSharding(mesh, LAYOUTS["fsdp-rows"]))
  tx = gradkit.transforms.quantized(optax.scale_by_adam(), min_size=8)
  with pytest.warns(ShardLayoutWarning, match=r"\(8, 257\) is split into shards \(1, 257\)"):
    state = tx.init({"w": w})
  assert [a.shape for a in state.absmax] == [(9,), (9,)]
