"""N-PG-IGT and (N-)HARPG against float64 numpy runs of the paper's recursions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.igt import scale_by_harpg, scale_by_normalized_igt

Q = np.array([[2.0, 0.3], [0.3, 1.0]])
THETA_STAR = np.array([1.0, -1.0])


def quadratic(theta):
  diff = theta - jnp.asarray(THETA_STAR, theta.dtype)
  return 0.5 * diff @ jnp.asarray(Q, theta.dtype) @ diff


def run(tx, steps, loss, lr, extra=False):
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, **({"obj_fn": loss} if extra else {})))
  params = jnp.zeros(2, jnp.float32)
  state = tx.init(params)
  points, outputs = [params], []
  for _ in range(steps):
    u, state = update(jax.grad(loss)(params), state, params)
    outputs.append(np.asarray(u, np.float64))
    params = params - lr * u
    points.append(params)
  return np.asarray(points, np.float64), outputs


def test_normalized_igt_follows_the_papers_extrapolated_steps():
  eta, gamma, steps = 0.5, 0.1, 8
  points, _ = run(scale_by_normalized_igt(eta), steps, quadratic, gamma)
  theta, theta_prev, d = np.zeros(2), np.zeros(2), np.zeros(2)
  expected, true_iterates = [np.zeros(2)], [theta]
  for _ in range(steps):
    tilde = theta + (1 - eta) / eta * (theta - theta_prev)
    d = (1 - eta) * d + eta * Q @ (tilde - THETA_STAR)
    theta_prev, theta = theta, theta - gamma * d / np.linalg.norm(d)
    expected.append(theta + (1 - eta) / eta * (theta - theta_prev))
    true_iterates.append(theta)
  np.testing.assert_allclose(points, np.asarray(expected), atol=1e-5)
  steps_taken = np.linalg.norm(np.diff(np.asarray(true_iterates), axis=0), axis=1)
  np.testing.assert_allclose(steps_taken, gamma, rtol=1e-12)


@pytest.mark.parametrize("schedule", [
    optax.linear_schedule(0.9, 0.2, 8),
    optax.cosine_decay_schedule(0.8, 8, alpha=0.25),
])
def test_normalized_igt_with_a_scheduled_eta_extrapolates_with_the_current_eta(schedule):
  # The paper's step t: th~_t = th_t + ((1 - eta_t)/eta_t)(th_t - th_{t-1}),
  # d_t = (1 - eta_t) d_{t-1} + eta_t g(th~_t), th_{t+1} = th_t - gamma d_t/||d_t||;
  # the caller's params are th~_t. Float64, eta_t read from the schedule at t.
  gamma, steps = 0.1, 8
  points, _ = run(scale_by_normalized_igt(schedule), steps, quadratic, gamma)
  theta, theta_prev, d = np.zeros(2), np.zeros(2), np.zeros(2)
  for t in range(steps):
    eta = float(schedule(t))
    tilde = theta + (1 - eta) / eta * (theta - theta_prev)
    np.testing.assert_allclose(points[t], tilde, atol=1e-5)
    d = (1 - eta) * d + eta * Q @ (tilde - THETA_STAR)
    theta_prev, theta = theta, theta - gamma * d / np.linalg.norm(d)
  eta = float(schedule(steps))
  np.testing.assert_allclose(points[steps], theta + (1 - eta) / eta * (theta - theta_prev),
                             atol=1e-5)


def test_harpg_momentum_equals_the_true_gradient_on_a_quadratic():
  eta, gamma = 0.3, 0.1
  points, outputs = run(scale_by_harpg(eta, normalize=False), 5, quadratic, gamma, extra=True)
  for theta, d in zip(points[:-1], outputs):
    np.testing.assert_allclose(d, Q @ (theta - THETA_STAR), atol=1e-5)


def quartic(theta):
  return jnp.sum(theta ** 4) / 4 + quadratic(theta)


@pytest.mark.parametrize("normalize", [False, True])
def test_harpg_correction_uses_the_exact_hessian_at_the_random_point(normalize):
  eta, gamma, seed, steps = 0.4, 0.2, 3, 4
  points, outputs = run(scale_by_harpg(eta, normalize=normalize, seed=seed), steps, quartic,
                        gamma, extra=True)

  def grad(t):
    return t ** 3 + Q @ (t - THETA_STAR)

  d = grad(points[0])
  np.testing.assert_allclose(outputs[0], d / np.linalg.norm(d) if normalize else d, rtol=1e-5)
  for t in range(1, steps):
    q = float(jax.random.uniform(jax.random.fold_in(jax.random.key(seed), t), ()))
    step = points[t] - points[t - 1]
    hat = q * points[t] + (1 - q) * points[t - 1]
    correction = (np.diag(3 * hat ** 2) + Q) @ step
    d = (1 - eta) * (d + correction) + eta * grad(points[t])
    want = d / np.linalg.norm(d) if normalize else d
    np.testing.assert_allclose(outputs[t], want, rtol=2e-4, atol=1e-5)


def test_harpg_without_obj_fn_names_it():
  tx = scale_by_harpg()
  p = jnp.zeros(2)
  with pytest.raises(TypeError, match="obj_fn"):
    tx.update(p, tx.init(p), p)


@pytest.mark.parametrize("factory", [scale_by_normalized_igt, scale_by_harpg])
@pytest.mark.parametrize("eta", [0.0, -0.1, 1.5])
def test_invalid_eta_is_rejected(factory, eta):
  with pytest.raises(ValueError, match="eta"):
    factory(eta)


def test_igt_runs_under_inject_hyperparams_with_a_traced_eta():
  plain = optax.chain(scale_by_normalized_igt(0.3), optax.scale(-0.1))
  injected = optax.chain(optax.inject_hyperparams(scale_by_normalized_igt)(eta=0.3),
                         optax.scale(-0.1))
  a, _ = run(plain, 4, quadratic, 1.0)
  b, _ = run(injected, 4, quadratic, 1.0)
  np.testing.assert_allclose(a, b, atol=1e-6)
