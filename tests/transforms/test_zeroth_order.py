"""Oracle tests of the SPSA estimator and Sparse MeZO's mask (zeroth-order sheet).

The directions are regenerated here through the documented key path
(leaf j of perturbation i at step t from fold_in(fold_in(fold_in(key(seed), t), i), j)),
and every projected gradient is compared with z^T grad f computed
independently (numpy float64 closed forms or jax.grad), never with p itself.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.spsa import sample_direction
from gradkit.transforms.zeroth_order import (
    EstimateSpsaGradientState,
    estimate_spsa_gradient,
    small_magnitude_mask,
)

# The sheet's quadratic f = 0.5 theta^T A theta - b^T theta.
A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 3.0]])
B = np.array([1.0, -1.0, 0.5])
THETA = np.array([0.3, -0.2, 1.0])
GRAD = A @ THETA - B  # (-0.5, 0.95, 2.5)


def quadratic(theta):
  a, b = jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)
  return 0.5 * theta @ a @ theta - b @ theta


def direction(seed, params, step=0, i=0, distribution="gaussian"):
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), i)
  return sample_direction(key, params, distribution)


def estimate(tx, params, obj_fn, state=None):
  state = tx.init(params) if state is None else state
  return jax.jit(lambda s: tx.update(params, s, params, obj_fn=obj_fn))(state)


@pytest.mark.parametrize("eps", [1e-3, 0.5])
@pytest.mark.parametrize("seed", [0, 7])
def test_central_difference_is_exact_on_the_quadratic(eps, seed):
  # Exact for any eps: a forward difference would be off by eps z^T A z / 2.
  # What remains is float32 rounding of f (~5e-7 at |f| ~ 1) divided by 2 eps.
  theta = jnp.asarray(THETA, jnp.float32)
  est, _ = estimate(estimate_spsa_gradient(eps=eps, seed=seed), theta, quadratic)
  z = np.asarray(direction(seed, theta), np.float64)
  tolerance = 5e-7 / eps * np.max(np.abs(z))
  np.testing.assert_allclose(np.asarray(est), (z @ GRAD) * z, rtol=0, atol=tolerance)


def test_linear_loss_gives_the_directional_derivative_over_a_tree():
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.5, -2.0])}
  coef = {"w": jnp.arange(12.0).reshape(3, 4) / 7.0, "b": jnp.array([3.0, -1.0])}

  def linear(p):
    return sum(jnp.sum(c * x) for c, x in zip(jax.tree.leaves(coef), jax.tree.leaves(p))) + 4.0

  grad = jax.grad(linear)(params)
  for distribution in ("gaussian", "rademacher"):
    est, _ = estimate(estimate_spsa_gradient(seed=3, distribution=distribution), params, linear)
    z = direction(3, params, distribution=distribution)
    p = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(z)))
    expected = jax.tree.map(lambda d, p=p: p * d, z)
    chex.assert_trees_all_close(est, expected, rtol=1e-4, atol=1e-4)


def test_rademacher_directions_are_signs():
  theta = jnp.asarray(THETA, jnp.float32)
  est, _ = estimate(estimate_spsa_gradient(distribution="rademacher", seed=2), theta, quadratic)
  z = np.asarray(direction(2, theta, distribution="rademacher"))
  assert set(np.unique(z)) <= {-1.0, 1.0}
  np.testing.assert_allclose(np.asarray(est), (z @ GRAD) * z, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("distribution, n", [("gaussian", 1), ("rademacher", 1), ("gaussian", 4)])
def test_estimate_is_unbiased_within_five_standard_errors(distribution, n):
  # E[(z^T g) z] = g. Per coordinate, Var[(z^T g) z_k] = |g|^2 + g_k^2 for
  # Gaussian z and |g|^2 - g_k^2 for Rademacher z; n directions divide it by n.
  seeds = 20_000
  theta = jnp.asarray(THETA, jnp.float32)
  tx = estimate_spsa_gradient(num_perturbations=n, distribution=distribution)
  states = EstimateSpsaGradientState(
      count=jnp.zeros((seeds,), jnp.int32),
      key=jax.vmap(lambda s: jax.random.key_data(jax.random.key(s)))(jnp.arange(seeds)))
  ests = jax.jit(jax.vmap(lambda s: tx.update(theta, s, theta, obj_fn=quadratic)[0]))(states)
  sign = 1.0 if distribution == "gaussian" else -1.0
  variance = (GRAD @ GRAD + sign * GRAD**2) / n
  stderr = np.sqrt(variance / seeds)
  mean = np.asarray(ests, np.float64).mean(axis=0)
  assert np.all(np.abs(mean - GRAD) <= 5 * stderr), (mean, GRAD, stderr)
  # The bound is tight enough to catch a wrong scale: 2x the estimate misses.
  assert np.any(np.abs(2 * mean - GRAD) > 5 * stderr)


def test_n_perturbations_average_along_the_documented_key_path():
  theta = jnp.asarray(THETA, jnp.float32)
  tx = estimate_spsa_gradient(num_perturbations=3, seed=5)
  state = tx.init(theta)
  for step in range(2):
    est, state = estimate(tx, theta, quadratic, state)
    zs = [np.asarray(direction(5, theta, step=step, i=i), np.float64) for i in range(3)]
    expected = sum((z @ GRAD) * z for z in zs) / 3
    np.testing.assert_allclose(np.asarray(est), expected, rtol=1e-4, atol=1e-4)
  assert int(state.count) == 2


def test_same_seed_reproduces_and_another_seed_or_step_differs():
  theta = jnp.asarray(THETA, jnp.float32)

  def three_estimates(seed):
    tx = estimate_spsa_gradient(seed=seed)
    state, out = tx.init(theta), []
    for _ in range(3):
      est, state = estimate(tx, theta, quadratic, state)
      out.append(np.asarray(est))
    return out

  first, again, other = three_estimates(1), three_estimates(1), three_estimates(2)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(first[0], other[0])
  assert not np.allclose(first[0], first[1])


def test_small_magnitude_mask_matches_the_sheet():
  w = jnp.array([[0.5, -0.01, 0.2], [-0.9, 0.05, -0.3]])
  expected = np.array([[0, 1, 1], [0, 1, 0]], bool)
  np.testing.assert_array_equal(small_magnitude_mask(w, 0.5), expected)
  # The threshold is the leaf's own quantile (0.25 here): a leaf scaled by 100
  # selects the same entries, and fraction 1 selects everything.
  masks = small_magnitude_mask({"a": w, "b": 100 * w}, 0.5)
  np.testing.assert_array_equal(masks["b"], expected)
  assert bool(jnp.all(small_magnitude_mask(w, 1.0)))


def test_masked_estimate_is_exact_and_zero_off_the_mask():
  w = jnp.array([[0.5, -0.01, 0.2], [-0.9, 0.05, -0.3]])
  target = jnp.arange(6.0).reshape(2, 3) / 5.0

  def loss(p):
    return 0.5 * jnp.sum((p - target) ** 2 * jnp.array([1.0, 2.0, 3.0]))

  mask = np.array([[0, 1, 1], [0, 1, 0]], bool)
  tx = estimate_spsa_gradient(
      eps=0.3, seed=4, mask_fn=lambda p: small_magnitude_mask(p, 0.5))
  est, _ = estimate(tx, w, loss)
  z = np.where(mask, np.asarray(direction(4, w), np.float64), 0.0)
  grad = np.asarray(jax.grad(loss)(w), np.float64)
  np.testing.assert_allclose(np.asarray(est), np.sum(z * grad) * z, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(est)[~mask] == 0.0)


def test_missing_obj_fn_is_named():
  tx = estimate_spsa_gradient()
  theta = jnp.asarray(THETA, jnp.float32)
  with pytest.raises(TypeError, match="obj_fn"):
    tx.update(theta, tx.init(theta), theta)


@pytest.mark.parametrize("kwargs, name", [
    ({"eps": 0.0}, "eps"), ({"eps": -1e-3}, "eps"),
    ({"num_perturbations": 0}, "num_perturbations"),
    ({"num_perturbations": 1.5}, "num_perturbations"),
    ({"distribution": "uniform"}, "distribution"),
])
def test_invalid_hyperparameters_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    estimate_spsa_gradient(**kwargs)


def test_bfloat16_params_give_a_bfloat16_estimate_of_p_z():
  theta = jnp.asarray(THETA, jnp.bfloat16)
  est, _ = estimate(estimate_spsa_gradient(eps=0.1, seed=0), theta, quadratic)
  assert est.dtype == jnp.bfloat16
  z = np.asarray(direction(0, theta).astype(jnp.float32), np.float64)  # bf16-rounded z
  # theta +- eps z is rounded to bf16 (8 bits), so p is only about 1e-2 exact.
  np.testing.assert_allclose(np.asarray(est, np.float64), (z @ GRAD) * z, rtol=5e-2, atol=5e-2)


def test_chained_into_adam_first_step_is_minus_lr_sign_of_p_z():
  # Adam's first step is -lr m_hat / (sqrt(v_hat) + eps) = -lr g / (|g| + eps).
  theta = jnp.asarray(THETA, jnp.float32)
  tx = optax.chain(estimate_spsa_gradient(seed=6), optax.adam(0.01))
  updates, _ = estimate(tx, theta, quadratic)
  g = (lambda z: (z @ GRAD) * z)(np.asarray(direction(6, theta), np.float64))
  np.testing.assert_allclose(np.asarray(updates), -0.01 * g / (np.abs(g) + 1e-8), rtol=1e-5)


def test_zo_adam_minimises_the_quadratic():
  theta = jnp.asarray(THETA, jnp.float32)
  tx = optax.chain(estimate_spsa_gradient(seed=0), optax.adam(0.05))

  @jax.jit
  def run(theta, state):
    def body(_, carry):
      theta, state = carry
      updates, state = tx.update(theta, state, theta, obj_fn=quadratic)
      return optax.apply_updates(theta, updates), state
    return jax.lax.fori_loop(0, 300, body, (theta, state))

  final, _ = run(theta, tx.init(theta))
  optimum = np.linalg.solve(A, B)
  start_gap = quadratic(theta) - quadratic(jnp.asarray(optimum, jnp.float32))
  final_gap = quadratic(final) - quadratic(jnp.asarray(optimum, jnp.float32))
  assert float(final_gap) < 0.01 * float(start_gap)
