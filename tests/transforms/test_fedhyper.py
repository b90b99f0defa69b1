"""FedHyper (G, GM, SL, CL, FULL) vs a numpy re-derivation of the official loops on a toy quadratic.

The numpy reference follows ATP-1010/FedHyper src/federated_main.py (server) and src/update.py
(client) statement by statement, in float64, with 3 clients holding diagonal quadratics
f_i(x) = 1/2 sum_j A_ij (x_j - c_ij)^2 and full-batch local SGD with torch momentum 0.5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.fedhyper import (
    estimate_fedhyper_local_lr,
    scale_by_fedhyper_client_lr,
    scale_by_fedhyper_global,
)

CURVATURES = np.array([[1.0, 3.0], [2.0, 0.5], [0.5, 1.0]])
CENTERS = np.array([[1.0, -1.0], [-0.5, 2.0], [2.0, 1.0]])
THETA0 = np.array([3.0, -2.0])


def _reference(function, rounds, local_steps, lr, local_epoch_steps=None, global_weight=0.1 / 3):
  """The official server and client loops in numpy; returns (thetas, aggs, client betas)."""
  theta, agg, gradient_vector, last_vector = THETA0.copy(), 0.0, np.zeros(2), None
  local_lr = lr
  thetas, aggs, betas = [], [], []
  for epoch in range(rounds):
    origin = theta.copy()
    finals, round_betas = [], []
    for a_i, c_i in zip(CURVATURES, CENTERS):
      x, buf = origin.copy(), None
      step_lr = local_lr if function == "SL" else lr
      beita, last_beita, last_gradient = 1.0, 1.0, gradient_vector
      xxx = 0
      for k in range(local_steps):
        if local_epoch_steps is not None and k % local_epoch_steps == 0:
          xxx = 0  # the official `xxx` is reset at the start of every local epoch
        last_para = x.copy()
        g = a_i * (x - c_i)
        buf = g.copy() if buf is None else 0.5 * buf + g  # torch SGD, momentum 0.5
        x = x - step_lr * beita * buf
        if function in ("CL", "FULL"):
          if xxx == 0:
            xxx = 1
          else:
            new_gradient = x - last_para
            gamma = min(1.1, 1 + global_weight * new_gradient @ gradient_vector
                        + new_gradient @ last_gradient)
            beita = min(10.0, max(0.1, gamma * last_beita))
            last_beita, last_gradient = beita, new_gradient
      finals.append(x)
      round_betas.append(beita)
    average = np.mean(finals, axis=0)
    gradient_vector = average - origin
    theta = average
    if function == "G":
      if epoch > 0:
        agg = min(4.0, max(-0.8, agg + last_vector @ gradient_vector))
        theta = agg * gradient_vector + average
      last_vector = gradient_vector
    elif function in ("GM", "FULL"):
      if epoch == 0:
        last_vector = gradient_vector
      else:
        agg = min(4.0, max(-0.2, agg + last_vector @ gradient_vector))
        theta = agg * gradient_vector + 0.9 * agg * last_vector + average
        last_vector = gradient_vector + 0.9 * last_vector
    elif function == "SL":
      if epoch > 0:
        agg += last_vector @ gradient_vector
        local_lr = min(0.1, max(0.001, lr * (agg + 1)))  # kept for the next round (see notes)
      last_vector = gradient_vector
    thetas.append(theta)
    aggs.append(agg)
    betas.append(round_betas)
  return np.array(thetas), np.array(aggs), np.array(betas)


def _simulate(server, client, rounds, local_steps, lr, sl=None):
  """The same federation with gradkit's transforms under jit."""
  curvatures, centers = jnp.asarray(CURVATURES, jnp.float32), jnp.asarray(CENTERS, jnp.float32)
  theta = jnp.asarray(THETA0, jnp.float32)
  server_state = server.init(theta) if server is not None else None
  sl_state = sl.init(theta) if sl is not None else None
  global_update = jnp.zeros(2, jnp.float32)

  def local_training(theta, global_update, local_lr):
    tx = client(local_lr)
    state = tx.init(theta)

    def one_client(a_i, c_i):
      def step(carry, _):
        x, state = carry
        change, state = tx.update(a_i * (x - c_i), state, x, global_update=global_update)
        return (x + change, state), state.multiplier
      (x, _), multipliers = jax.lax.scan(step, (theta, state), None, length=local_steps)
      return x, multipliers[-1]

    return jax.vmap(one_client)(curvatures, centers)

  train = jax.jit(local_training)
  server_update = jax.jit(server.update) if server is not None else None
  thetas, aggs, betas = [], [], []
  for _ in range(rounds):
    local_lr = sl_state.local_learning_rate if sl is not None else lr
    finals, multipliers = train(theta, global_update, local_lr)
    global_update = finals.mean(axis=0) - theta
    if server is not None:
      change, server_state = server_update(global_update, server_state)
      aggs.append(float(server_state.hyper_variable))
    else:
      change, sl_state = sl.update(global_update, sl_state)
      aggs.append(float(sl_state.hyper_variable))
    theta = optax.apply_updates(theta, change)
    thetas.append(np.asarray(theta))
    betas.append(np.asarray(multipliers))
  return np.array(thetas), np.array(aggs), np.array(betas)


def _plain_client(local_epoch_steps=None):
  # No adaptation: multiplier bounds pinned at 1 give local SGD with momentum 0.5 at lr.
  return lambda lr: scale_by_fedhyper_client_lr(
      lr, optax.trace(decay=0.5), multiplier_bounds=(1.0, 1.0), local_epoch_steps=local_epoch_steps)


def _cl_client(local_epoch_steps=None):
  return lambda lr: scale_by_fedhyper_client_lr(
      lr, optax.trace(decay=0.5), global_weight=0.1 / 3, local_epoch_steps=local_epoch_steps)


@pytest.mark.parametrize("function, server, client, lr", [
    ("G", scale_by_fedhyper_global(momentum=0.0, bounds=(-0.8, 4.0)), _plain_client(), 0.1),
    ("GM", scale_by_fedhyper_global(), _plain_client(), 0.1),
    ("CL", scale_by_fedhyper_global(momentum=0.0, bounds=(0.0, 0.0)), _cl_client(), 0.1),
    ("FULL", scale_by_fedhyper_global(), _cl_client(), 0.05),
])
def test_matches_numpy_official_loops(function, server, client, lr):
  rounds, local_steps = 8, 5
  thetas, aggs, betas = _reference(function, rounds, local_steps, lr)
  got_thetas, got_aggs, got_betas = _simulate(server, client, rounds, local_steps, lr)
  np.testing.assert_allclose(got_thetas, thetas, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(got_aggs, aggs, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(got_betas, betas, rtol=2e-5, atol=2e-6)
  if function in ("G", "GM", "FULL"):
    assert np.ptp(aggs) > 0.05  # the global rate moved
  if function in ("CL", "FULL"):
    assert np.ptp(betas) > 0.05 and np.any(betas < 1.0)  # the local rate moved both ways


def test_client_skips_the_first_step_of_every_local_epoch():
  thetas, _, betas = _reference("CL", 4, 6, 0.1, local_epoch_steps=3)
  got_thetas, _, got_betas = _simulate(scale_by_fedhyper_global(momentum=0.0, bounds=(0.0, 0.0)),
                                       _cl_client(local_epoch_steps=3), 4, 6, 0.1)
  np.testing.assert_allclose(got_thetas, thetas, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(got_betas, betas, rtol=2e-5, atol=2e-6)
  _, _, every_step = _reference("CL", 4, 6, 0.1)
  assert not np.allclose(betas, every_step)  # the two schedules differ on this problem


def test_server_sets_local_lr():
  rounds, local_steps, lr = 8, 5, 0.05
  thetas, aggs, _ = _reference("SL", rounds, local_steps, lr)
  got_thetas, got_aggs, _ = _simulate(None, _plain_client(), rounds, local_steps, lr,
                                      sl=estimate_fedhyper_local_lr(lr))
  np.testing.assert_allclose(got_aggs, aggs, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(got_thetas, thetas, rtol=2e-5, atol=2e-6)
  assert aggs[-1] > 0.1  # the local rate was raised above lr


@pytest.mark.parametrize("momentum, bounds, aggs, thetas", [
    # schedules-batch.md §5b oracles, Δ_0..Δ_3 = (1, .5), (.8, .4), (-.5, 1), (2, 0).
    (0.0, (-0.8, 4.0), [0, 1, 1, 0], [(1, .5), (2.6, 1.3), (1.6, 3.3), (3.6, 3.3)]),
    (0.9, (-0.2, 4.0), [0, 1, 1, 3.06], [(1, .5), (3.5, 1.75), (4.03, 4.515),
                                        (14.98662, 9.37581)]),
])
def test_global_sheet_oracles(momentum, bounds, aggs, thetas):
  tx = scale_by_fedhyper_global(momentum=momentum, bounds=bounds)
  theta, state, update = jnp.zeros(2), tx.init(jnp.zeros(2)), jax.jit(tx.update)
  for delta, a, expected in zip([(1, .5), (.8, .4), (-.5, 1), (2, 0)], aggs, thetas):
    change, state = update(jnp.asarray(delta, jnp.float32), state)
    theta = theta + change
    np.testing.assert_allclose(state.hyper_variable, a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(theta, expected, rtol=1e-6)


def test_orthogonal_rounds_are_fedavg_and_bad_input():
  tx = scale_by_fedhyper_global()
  state = tx.init({"w": jnp.zeros(2)})
  for delta in ([1.0, 0.0], [0.0, 2.0]):
    change, state = tx.update({"w": jnp.asarray(delta)}, state)
  assert float(state.hyper_variable) == 0.0
  np.testing.assert_array_equal(change["w"], [0.0, 2.0])
  client = scale_by_fedhyper_client_lr()
  with pytest.raises(TypeError, match="global_update"):
    client.update(jnp.ones(2), client.init(jnp.zeros(2)), jnp.zeros(2))
  with pytest.raises(ValueError, match="bounds"):
    scale_by_fedhyper_global(bounds=(1.0, 0.0))
  with pytest.raises(ValueError, match="local_epoch_steps"):
    scale_by_fedhyper_client_lr(local_epoch_steps=0)


def test_inject_hyperparams_and_hand_computed_steps():
  # Global: Δ = (1, 1) twice: a = clip(<m_0, Δ_1> = 2) = 2, m_1 = 1.9, change = 1 + 2 * 1.9 = 4.8.
  tx = optax.inject_hyperparams(scale_by_fedhyper_global)(hyper_lr=1.0)
  state, update = tx.init(jnp.zeros(2)), jax.jit(tx.update)
  for _ in range(2):
    change, state = update(jnp.ones(2), state)
  np.testing.assert_allclose(change, [4.8, 4.8], rtol=1e-6)
  # Client: step 1's change (-0.1, -0.1) against Δ = (1, 1): γ = 1 - 0.2 - 0.01 * 0.2 = 0.798.
  client = optax.inject_hyperparams(scale_by_fedhyper_client_lr)(learning_rate=0.1)
  state, update = client.init(jnp.zeros(2)), jax.jit(client.update)
  for _ in range(2):
    change, state = update(jnp.ones(2), state, global_update=jnp.ones(2))
  np.testing.assert_allclose(change, [-0.1, -0.1], rtol=1e-6)
  np.testing.assert_allclose(state.inner_state.multiplier, 0.798, rtol=1e-6)
