"""Oracles for SWAN (sheet swan-sinkgd.md): GradNorm + exact whitening, AdamW elsewhere."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.swan import swan
from trajectories import assert_kernel_rule_and_adamw_elsewhere, f32

# Sheet oracle 2: exact whitening (U V^T) of GradNorm([[1, 2, 3, 0], [4, 0, -1, 1]]).
WHITENED = [[0.0501083, 0.159768, 0.5842423, -0.7941186],
            [0.8613557, -0.2285869, -0.3693762, -0.2633927]]
GRADIENT = [[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, -1.0, 1.0]]


def _numpy_swan_direction(g_flax):
  """float64 GradNorm over axis 0 (each output column over its inputs), then U V^T.

  Centring can leave the matrix rank-deficient; the pseudo-inverse form of
  (G G^T)^{-1/2} G keeps only the non-zero singular directions.
  """
  g = np.asarray(g_flax, np.float64)
  g = g - g.mean(axis=0, keepdims=True)
  g = g / g.std(axis=0, keepdims=True)
  u, s, vt = np.linalg.svd(g, full_matrices=False)
  keep = s > 1e-10 * s[0]
  return u[:, keep] @ vt[keep]


def _one_update(tx, params, grads):
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return updates


def test_sheet_whitening_oracle_through_swan():
  # The torch (out=2, in=4) layer as a Flax kernel (in, out) = G^T.
  g = f32(np.asarray(GRADIENT).T)
  for ns_steps, atol in ((10, 2e-6), (5, 5e-6)):
    u = _one_update(swan(learning_rate=1.0, ns_steps=ns_steps), {"w": g}, {"w": g})["w"]
    np.testing.assert_allclose(-u, np.asarray(WHITENED).T, atol=atol)
  u1 = _one_update(swan(learning_rate=1.0, ns_steps=1), {"w": g}, {"w": g})["w"]
  assert np.max(np.abs(-u1 - np.asarray(WHITENED).T)) > 1e-2


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_update_norm_is_lr_sqrt_m_whatever_the_gradient_scale(scale):
  # Flax kernel (in=9, out=5): m = 5 outputs <= n - 1 = 8 inputs.
  g = np.random.default_rng(0).normal(size=(9, 5)) * scale + scale
  lr = 0.03
  u = np.asarray(_one_update(swan(learning_rate=lr), {"w": f32(g)}, {"w": f32(g)})["w"])
  np.testing.assert_allclose(np.linalg.norm(u), lr * np.sqrt(5), rtol=1e-4)
  np.testing.assert_allclose(np.linalg.svd(u / lr, compute_uv=False), 1.0, atol=1e-4)
  np.testing.assert_allclose(-u / lr, _numpy_swan_direction(g), atol=1e-4)


def test_axis_one_standardises_over_the_outputs():
  g = np.random.default_rng(1).normal(size=(4, 7))
  u = _one_update(swan(learning_rate=1.0, axis=1), {"w": f32(g)}, {"w": f32(g)})["w"]
  np.testing.assert_allclose(-u, _numpy_swan_direction(g.T).T, atol=1e-4)


def test_routing_matrices_get_swan_the_rest_adamw():
  # With out = 6 > in - 1 = 3 the centred gradient has rank 3: the singular case.
  assert_kernel_rule_and_adamw_elsewhere(swan, _numpy_swan_direction)


def test_matrix_leaves_keep_no_state():
  def nbytes(d):
    params = {"w1": jnp.zeros((d, 2 * d)), "w2": jnp.zeros((2 * d, d)), "b": jnp.zeros(4)}
    return gradkit.state_nbytes(swan().init(params))

  small, large = nbytes(4), nbytes(64)
  assert small == large
  # Only AdamW's mu, nu of the (4,) bias here, plus scalar step counts.
  assert 2 * 4 * 4 <= small <= 2 * 4 * 4 + 64


def test_bfloat16_params():
  g = np.random.default_rng(3).normal(size=(8, 4))
  params = {"w": jnp.asarray(g, jnp.bfloat16), "b": jnp.zeros(4, jnp.bfloat16)}
  grads = {"w": jnp.asarray(g, jnp.bfloat16), "b": jnp.ones(4, jnp.bfloat16)}
  u = _one_update(swan(learning_rate=1.0), params, grads)
  assert u["w"].dtype == jnp.bfloat16 and u["b"].dtype == jnp.bfloat16
  want = -_numpy_swan_direction(np.asarray(grads["w"], np.float64))
  np.testing.assert_allclose(np.asarray(u["w"], np.float32), want, atol=2e-2)


def test_wrong_rank_leaf_labelled_matrix_raises():
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  tx = swan(param_labels={"w": "matrix", "b": "matrix"})
  with pytest.raises(ValueError, match=r"ndim >= 2.*\['b'\]"):
    tx.update(params, tx.init(params), params)


def test_static_options_under_inject_hyperparams():
  params = {"w": f32(np.random.default_rng(4).normal(size=(5, 3))), "b": jnp.zeros(3)}
  plain = swan(learning_rate=0.1, ns_steps=4, axis=1)
  injected = optax.inject_hyperparams(swan, static_args=("ns_steps", "axis"))(
      learning_rate=0.1, ns_steps=4, axis=1)
  np.testing.assert_allclose(_one_update(plain, params, params)["w"],
                             _one_update(injected, params, params)["w"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hparams", [
    {"ns_steps": 0}, {"axis": 2}, {"eps": -1.0}, {"b1": 1.0}, {"b2": -0.1},
    {"adam_eps": -1e-8}, {"weight_decay": -0.1},
])
def test_invalid_hyperparameters_raise(hparams):
  with pytest.raises(ValueError):
    swan(**hparams)


def test_single_input_matrices_get_adams_first_step():
  """A (1, n) kernel and a (1, 1, 1, c) convolution have one entry per
  output unit along GradNorm's axis: centring zeroes it, so they go to AdamW,
  whose first step is -lr g / (|g| + eps) (closed form), labelled or not."""
  rng = np.random.default_rng(5)
  params = {"w": f32(rng.normal(size=(1, 6))), "conv": f32(rng.normal(size=(1, 1, 1, 4))),
            "dense": f32(rng.normal(size=(5, 3))), "head": f32(rng.normal(size=(3, 2)))}
  grads = jax.tree.map(lambda p: f32(rng.normal(size=p.shape)), params)
  lr = 0.01
  for labels in (None, {"w": "matrix", "conv": "matrix", "dense": "matrix", "head": "head"}):
    u = _one_update(swan(learning_rate=lr, param_labels=labels), params, grads)
    for k in ("w", "conv"):
      g = np.asarray(grads[k], np.float64)
      np.testing.assert_allclose(u[k], -lr * g / (np.abs(g) + 1e-8), rtol=1e-5)
  np.testing.assert_allclose(-u["dense"] / lr, _numpy_swan_direction(grads["dense"]), atol=1e-4)
