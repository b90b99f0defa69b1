"""Oracles for SinkGD (sheet swan-sinkgd.md): SR-Sinkhorn on matrices, AdamW elsewhere."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradkit
from gradkit.optimizers.sinkgd import sinkgd
from trajectories import assert_kernel_rule_and_adamw_elsewhere, f32

# Sheet oracle 1, PyTorch layout (out=2, in=3).
GRADIENT = [[1.0, 2.0, 3.0], [4.0, 0.0, -1.0]]
AFTER_1 = [[0.3756046, 1.4142136, 1.3536378], [1.3634226, 0.0, -0.4094688]]
AFTER_5 = [[0.1524023, 1.4142136, 1.1211802], [1.4059778, 0.0, -0.8619484]]


def _numpy_sr_sinkhorn(g_flax, num_iterations):
  """float64 SR-Sinkhorn on the PyTorch view G = g_flax^T: rows to sqrt(n), columns to sqrt(m)."""
  x = np.asarray(g_flax, np.float64).T
  m, n = x.shape
  for _ in range(num_iterations):
    x = np.sqrt(n) * x / np.linalg.norm(x, axis=1, keepdims=True)
    x = np.sqrt(m) * x / np.linalg.norm(x, axis=0, keepdims=True)
  return x.T


def _one_update(tx, params, grads):
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return updates


@pytest.mark.parametrize("num_iterations, expected", [(1, AFTER_1), (5, AFTER_5)])
def test_sheet_oracle_1_through_sinkgd(num_iterations, expected):
  g = {"w": f32(np.asarray(GRADIENT).T)}  # the layer as a Flax kernel (in, out)
  u = _one_update(sinkgd(learning_rate=1.0, num_iterations=num_iterations), g, g)["w"]
  np.testing.assert_allclose(-u, np.asarray(expected).T, atol=2e-6)


def test_default_is_five_iterations():
  g = {"w": f32(np.asarray(GRADIENT).T)}
  u = _one_update(sinkgd(learning_rate=1.0), g, g)["w"]
  np.testing.assert_allclose(-u, np.asarray(AFTER_5).T, atol=2e-6)


def test_rank_one_gradient_gives_its_sign():
  g = np.outer([3.0, 1.0, -4.0, 2.0], [1.0, -2.0, 0.5])  # Flax view of the sheet's oracle 2
  u = _one_update(sinkgd(learning_rate=0.5, num_iterations=1), {"w": f32(g)}, {"w": f32(g)})
  np.testing.assert_allclose(u["w"], -0.5 * np.sign(g), atol=1e-6)


def test_output_scalings_are_removed_input_scalings_only_in_the_limit():
  rng = np.random.default_rng(0)
  g = rng.normal(size=(5, 3))  # Flax (in=5, out=3)
  per_output = np.diag(rng.uniform(0.1, 10.0, size=3))
  per_input = np.diag(rng.uniform(0.1, 10.0, size=5))

  def direction(x, steps):
    return _one_update(sinkgd(learning_rate=1.0, num_iterations=steps),
                       {"w": f32(x)}, {"w": f32(x)})["w"]

  np.testing.assert_allclose(direction(3.0 * g @ per_output, 5), direction(g, 5), atol=2e-6)
  assert np.max(np.abs(direction(per_input @ g, 1) - direction(g, 1))) > 1e-2
  np.testing.assert_allclose(direction(per_input @ g, 50), direction(g, 50), atol=1e-5)


def test_many_iterations_satisfy_both_normalizations_and_norm_is_lr_sqrt_mn():
  g = np.random.default_rng(1).normal(size=(7, 4)) * 1e3
  lr = 0.01
  u = np.asarray(_one_update(sinkgd(learning_rate=lr, num_iterations=60),
                             {"w": f32(g)}, {"w": f32(g)})["w"], np.float64) / -lr
  np.testing.assert_allclose(np.linalg.norm(u, axis=0), np.sqrt(7), rtol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(u, axis=1), np.sqrt(4), rtol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(u), np.sqrt(28), rtol=1e-5)
  np.testing.assert_allclose(u, _numpy_sr_sinkhorn(g, 60), atol=1e-5)


def test_routing_matrices_get_sinkgd_the_rest_adamw():
  assert_kernel_rule_and_adamw_elsewhere(sinkgd, lambda g: _numpy_sr_sinkhorn(g, 5))


def test_matrix_leaves_keep_no_state():
  def nbytes(d):
    params = {"w1": jnp.zeros((d, 2 * d)), "w2": jnp.zeros((2 * d, d)), "b": jnp.zeros(4)}
    return gradkit.state_nbytes(sinkgd().init(params))

  small, large = nbytes(4), nbytes(64)
  assert small == large
  assert 2 * 4 * 4 <= small <= 2 * 4 * 4 + 64  # AdamW's mu, nu of b plus step counts


def test_bfloat16_params():
  g = np.random.default_rng(3).normal(size=(8, 4))
  params = {"w": jnp.asarray(g, jnp.bfloat16), "b": jnp.zeros(4, jnp.bfloat16)}
  grads = {"w": jnp.asarray(g, jnp.bfloat16), "b": jnp.ones(4, jnp.bfloat16)}
  u = _one_update(sinkgd(learning_rate=1.0), params, grads)
  assert u["w"].dtype == jnp.bfloat16 and u["b"].dtype == jnp.bfloat16
  want = -_numpy_sr_sinkhorn(np.asarray(grads["w"], np.float64), 5)
  np.testing.assert_allclose(np.asarray(u["w"], np.float32), want, atol=2e-2, rtol=1e-2)


def test_wrong_rank_leaf_labelled_matrix_raises():
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  tx = sinkgd(param_labels=lambda p: {"w": "matrix", "b": "matrix"})
  with pytest.raises(ValueError, match=r"ndim >= 2.*\['b'\]"):
    tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("hparams", [
    {"num_iterations": 0}, {"num_iterations": 1.5}, {"axis": 2}, {"eps": -1.0},
    {"b1": 1.0}, {"adam_eps": -1e-8}, {"weight_decay": -0.1},
])
def test_invalid_hyperparameters_raise(hparams):
  with pytest.raises(ValueError):
    sinkgd(**hparams)
