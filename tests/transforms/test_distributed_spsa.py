"""Oracles for the shared-randomness distributed SPSA step ("Just One Byte"), 8 CPU devices.

The oracle recomputes every projected gradient in numpy float64 from the
closed-form shard gradient (the central difference is exact on a quadratic),
with z regenerated from the documented keys fold_in(fold_in(fold_in(key, t), i), j).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradkit.transforms.distributed_spsa import distributed_spsa_step
from gradkit.transforms.spsa import sample_direction

NUM_DEVICES = 8
ROWS = 32
EPS = 0.1  # exact on quadratics for any eps; a larger eps means less float32 cancellation
LR = 0.05


def _loss(params, batch):
  x, y = batch
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=(ROWS, 5)) * np.geomspace(1.0, 3.0, 5)).astype(np.float32)
  y = (x @ rng.normal(size=5) + 0.3).astype(np.float32)
  params = {"w": jnp.zeros(5, jnp.float32), "b": jnp.zeros((), jnp.float32)}
  return params, (x, y)


def _mesh(num_devices=NUM_DEVICES):
  return Mesh(np.array(jax.devices()[:num_devices]), ("data",))


@functools.lru_cache
def _step(num_devices=NUM_DEVICES, **kwargs):
  """One step function per configuration, shared by the tests to save compilations."""
  return distributed_spsa_step(_loss, _mesh(num_devices), **{"learning_rate": LR, "eps": EPS,
                                                            **kwargs})


def _replicated(params, mesh):
  """Params placed as the step returns them, so a multi-step loop compiles once."""
  return jax.device_put(params, NamedSharding(mesh, PartitionSpec()))


def _key(key, t, i, j):
  return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, t), i), j)


@functools.partial(jax.jit, static_argnums=4)
def _direction(key, t, i, j, distribution):
  like = {"w": jnp.zeros(5, jnp.float32), "b": jnp.zeros((), jnp.float32)}
  return sample_direction(_key(key, t, i, j), like, distribution)


def _directions(key, t, num_devices, n, distribution="gaussian"):
  """z_{i,j} for all (i, j) as {"w": (M, n, 5), "b": (M, n)}, from the documented keys."""
  z = [[_direction(key, t, i, j, distribution) for j in range(n)] for i in range(num_devices)]
  return {name: np.asarray([[zij[name] for zij in row] for row in z]) for name in ("w", "b")}


def _oracle(params, batch, key, t, num_devices, n, lr, divisor, distribution="gaussian"):
  """Projected gradients (M, n) and the stepped params, numpy float64."""
  x, y = (np.asarray(a, np.float64) for a in batch)
  w, b = np.asarray(params["w"], np.float64), float(params["b"])
  z = jax.tree.map(lambda a: np.asarray(a, np.float64), _directions(key, t, num_devices, n,
                                                                      distribution))
  rows = len(x) // num_devices
  ps = np.zeros((num_devices, n))
  step_w, step_b = np.zeros_like(w), 0.0
  for i in range(num_devices):
    xi, yi = x[i * rows:(i + 1) * rows], y[i * rows:(i + 1) * rows]
    r = xi @ w + b - yi
    grad_w, grad_b = 2.0 * xi.T @ r / rows, 2.0 * r.mean()
    for j in range(n):
      zw, zb = z["w"][i, j], z["b"][i, j]
      ps[i, j] = zw @ grad_w + zb * grad_b
      step_w += ps[i, j] * zw
      step_b += ps[i, j] * zb
  return ps, {"w": w - lr / divisor * step_w, "b": b - lr / divisor * step_b}


def _assert_params_close(actual, expected, rtol=2e-4, atol=2e-5):
  for name in ("w", "b"):
    np.testing.assert_allclose(np.asarray(actual[name]), expected[name], rtol=rtol, atol=atol)


def test_suite_sees_eight_devices():
  assert jax.device_count() == NUM_DEVICES


@pytest.mark.parametrize("normalization, n, distribution", [
    ("sqrt", 1, "gaussian"), ("sqrt", 3, "gaussian"), ("mean", 3, "gaussian"),
    ("sqrt", 2, "rademacher"),
])
def test_equals_sequential_sum_over_the_same_keys_and_shards(normalization, n, distribution):
  params, batch = _problem()
  key, t = jax.random.key(7), 5
  step = _step(num_perturbations=n, normalization=normalization, distribution=distribution)
  new, info = step(params, batch, key, t)
  total = NUM_DEVICES * n
  divisor = np.sqrt(total) if normalization == "sqrt" else total
  ps, expected = _oracle(params, batch, key, t, NUM_DEVICES, n, LR, divisor, distribution)
  np.testing.assert_allclose(np.asarray(info.projected_gradients), ps, rtol=1e-4, atol=1e-4)
  _assert_params_close(new, expected)


def test_one_device_one_perturbation_is_one_mezo_sgd_step():
  params, batch = _problem()
  params = {"w": jnp.linspace(-0.5, 0.5, 5, dtype=jnp.float32), "b": jnp.float32(0.2)}
  key, t, lr = jax.random.key(11), 4, 0.03
  step = _step(num_devices=1, learning_rate=lr)
  new, info = step(params, batch, key, t)
  # theta - lr p z with z from key_{t,0,0} and p = z^T grad f on the full batch.
  z = sample_direction(_key(key, t, 0, 0), params)
  x, y = (np.asarray(a, np.float64) for a in batch)
  w, b = np.asarray(params["w"], np.float64), float(params["b"])
  r = x @ w + b - y
  zw, zb = np.asarray(z["w"], np.float64), float(z["b"])
  p = zw @ (2.0 * x.T @ r / len(x)) + zb * 2.0 * r.mean()
  np.testing.assert_allclose(float(info.projected_gradients[0, 0]), p, rtol=1e-4)
  _assert_params_close(new, {"w": w - lr * p * zw, "b": b - lr * p * zb})


@pytest.mark.parametrize("one_byte", [False, True])
def test_replicas_end_bit_identical(one_byte):
  params, batch = _problem()
  params = _replicated(params, _mesh())
  step = _step(num_perturbations=2, one_byte=one_byte)
  for t in range(3):
    params, _ = step(params, batch, jax.random.key(0), t)
  for leaf in jax.tree.leaves(params):
    assert leaf.sharding.is_fully_replicated
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    assert len(shards) == NUM_DEVICES
    for s in shards[1:]:
      assert s.tobytes() == shards[0].tobytes()


_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT )?%(\S+) = (\S+) (all-gather|all-reduce|all-to-all|collective-permute"
    r"|reduce-scatter|collective-broadcast|send|recv)[-\w]*\(%([^,)\s]+)")
_DEFINITION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]")


@pytest.mark.parametrize("one_byte, dtype, n", [(False, "f32", 3), (True, "s8", 2)])
def test_only_the_scalars_are_exchanged(one_byte, dtype, n):
  params, batch = _problem()
  step = _step(num_perturbations=n, one_byte=one_byte)
  hlo = step.lower(params, batch, jax.random.key(0), 0).compile().as_text()
  lines = hlo.splitlines()
  collectives = [m for m in map(_COLLECTIVE.match, lines) if m]
  assert [m.group(3) for m in collectives] == ["all-gather"]
  _, result, _, operand = collectives[0].groups()
  assert re.fullmatch(rf"{dtype}\[{NUM_DEVICES},{n}\]\S*", result)
  shapes = {m.group(1): (m.group(2), m.group(3)) for m in map(_DEFINITION.match, lines) if m}
  operand_dtype, operand_dims = shapes[operand]
  assert operand_dtype == dtype
  assert int(np.prod([int(d) for d in operand_dims.split(",") if d])) == n


def test_one_byte_exchange_error_is_bounded_as_documented():
  params, batch = _problem()
  key, n, lr, scale = jax.random.key(5), 2, LR, 8.0  # scale: the documented default
  exact, exact_info = _step(num_perturbations=n)(params, batch, key, 2)
  quant, info = _step(num_perturbations=n, one_byte=True)(params, batch, key, 2)
  raw = np.asarray(info.local_projected_gradients, np.float64)
  sent = np.asarray(info.projected_gradients, np.float64)
  bound = np.expm1(1.0 / (2.0 * scale))
  np.testing.assert_array_equal(raw, np.asarray(exact_info.projected_gradients))
  assert np.all(np.abs(raw) > np.exp(-63 / scale)) and np.all(np.abs(raw) < np.exp(63 / scale))
  assert np.all(np.abs(sent - raw) <= bound * np.abs(raw) + 1e-6)
  # The applied step uses the decoded values, in the same rank-one sum.
  divisor = np.sqrt(NUM_DEVICES * n)
  _, expected = _oracle(params, batch, key, 2, NUM_DEVICES, n, lr, divisor)
  step_w = np.zeros(5)
  abs_w = np.zeros(5)
  z_w = np.asarray(_directions(key, 2, NUM_DEVICES, n)["w"], np.float64)
  for i in range(NUM_DEVICES):
    for j in range(n):
      step_w += sent[i, j] * z_w[i, j]
      abs_w += np.abs(raw[i, j] * z_w[i, j])
  np.testing.assert_allclose(np.asarray(quant["w"]), params["w"] - lr / divisor * step_w,
                             rtol=2e-4, atol=2e-5)
  # Elementwise, the quantised step is within bound * lr / sqrt(N) * sum |p z| of the exact one.
  gap = np.abs(np.asarray(quant["w"], np.float64) - np.asarray(exact["w"], np.float64))
  assert np.all(gap <= bound * lr / divisor * abs_w + 1e-5)
  _assert_params_close(exact, expected)


def test_same_seed_same_result_and_no_retrace():
  params, batch = _problem()
  params = _replicated(params, _mesh())
  first = _step(num_perturbations=2, one_byte=True)
  second = distributed_spsa_step(_loss, _mesh(), learning_rate=LR, eps=EPS, num_perturbations=2,
                                 one_byte=True)
  a = b = c = params
  for t in range(3):
    a, _ = first(a, batch, jax.random.key(1), t)
    b, _ = second(b, batch, jax.random.key(1), t)
    c, _ = first(c, batch, jax.random.key(2), t)
  compiled = first._cache_size()
  first(a, batch, jax.random.key(1), 3)
  assert first._cache_size() == compiled
  for name in ("w", "b"):
    assert np.asarray(a[name]).tobytes() == np.asarray(b[name]).tobytes()
  assert not np.allclose(np.asarray(a["w"]), np.asarray(c["w"]))


def test_learning_rate_schedule_is_read_at_step():
  params, batch = _problem()
  schedule = optax.linear_schedule(0.1, 0.0, transition_steps=10)
  key = jax.random.key(4)
  scheduled = _step(learning_rate=schedule)
  constant = _step(learning_rate=float(schedule(6)))
  a, _ = scheduled(params, batch, key, 6)
  b, _ = constant(params, batch, key, 6)
  np.testing.assert_allclose(np.asarray(a["w"]), np.asarray(b["w"]), rtol=1e-6, atol=1e-8)
  assert not np.allclose(np.asarray(a["w"]), 0.0)


@pytest.mark.parametrize("one_byte", [False, True])
def test_short_run_lowers_least_squares_loss(one_byte):
  params, batch = _problem(seed=1)
  mesh = jax.make_mesh((NUM_DEVICES,), ("data",))  # an Explicit-axes mesh
  initial = float(_loss(params, batch))
  params = _replicated(params, mesh)
  step = distributed_spsa_step(_loss, mesh, learning_rate=0.01, num_perturbations=2,
                               one_byte=one_byte)
  for t in range(150):
    params, _ = step(params, batch, jax.random.key(0), t)
  assert float(_loss(params, batch)) < 0.05 * initial


@pytest.mark.parametrize("kwargs", [
    {"learning_rate": -0.1}, {"eps": 0.0}, {"num_perturbations": 0},
    {"num_perturbations": 1.5}, {"num_perturbations": True}, {"normalization": "l2"},
    {"distribution": "uniform"}, {"axis_name": "model"}, {"one_byte_scale": 0.0},
])
def test_invalid_hyperparameters_raise(kwargs):
  with pytest.raises(ValueError):
    distributed_spsa_step(_loss, _mesh(), **kwargs)
