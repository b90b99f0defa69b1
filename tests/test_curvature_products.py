"""Curvature-vector products against dense matrices built in numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gradkit.curvature_products import gauss_newton_vector_product, hessian_vector_product


def test_hessian_vector_product_equals_dense_hessian_times_vector():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4, 4)).astype(np.float32)
  c = rng.normal(size=4).astype(np.float32)
  x = rng.normal(size=4).astype(np.float32)
  v = rng.normal(size=4).astype(np.float32)
  # f(x) = ½ xᵀ (A + Aᵀ) x / 2 + sum(exp(c ⊙ x)): H = (A + Aᵀ)/2 + diag(c² exp(c ⊙ x)).
  def f(params, shift):
    x = params["x"]
    return 0.25 * x @ (a + a.T) @ x + jnp.sum(jnp.exp(c * x)) + shift

  hessian = (a + a.T) / 2 + np.diag(c**2 * np.exp(c * x))
  got = hessian_vector_product(f, {"x": jnp.asarray(x)}, {"x": jnp.asarray(v)}, 3.0)
  np.testing.assert_allclose(got["x"], hessian @ v, rtol=1e-4, atol=1e-5)


def test_gauss_newton_vector_product_equals_dense_jt_h_j():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 3)).astype(np.float32)
  labels = np.array([0, 1, 1, 0, 1])
  w = rng.normal(size=(3, 2)).astype(np.float32)
  v = rng.normal(size=(3, 2)).astype(np.float32)

  def model_fn(params):
    return jnp.tanh(x @ params)

  def loss_of_outputs(logits):
    return -jnp.mean(jax.nn.log_softmax(logits)[np.arange(5), labels])

  # Dense J (10 x 6) and output Hessian (10 x 10) in float64 numpy.
  pre = x @ w
  dtanh = 1 - np.tanh(pre) ** 2
  jac = np.zeros((5, 2, 3, 2))
  for n in range(5):
    for k in range(2):
      jac[n, k, :, k] = dtanh[n, k] * x[n]
  jac = jac.reshape(10, 6)
  p = np.exp(np.tanh(pre)) / np.exp(np.tanh(pre)).sum(1, keepdims=True)
  h_out = np.zeros((10, 10))
  for n in range(5):
    h_out[2 * n:2 * n + 2, 2 * n:2 * n + 2] = (np.diag(p[n]) - np.outer(p[n], p[n])) / 5
  expected = (jac.T @ h_out @ jac @ v.reshape(6)).reshape(3, 2)
  got = jax.jit(lambda w, v: gauss_newton_vector_product(model_fn, loss_of_outputs, w, v))(w, v)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
