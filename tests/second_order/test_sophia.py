"""Sophia-H against optax.contrib.sophia and the sheet's oracles; Sophia-G's
Gauss-Newton-Bartlett estimator against the dense Gauss-Newton diagonal; both
on a tiny classifier (Sophia-G through a Flax NNX optimizer)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradkit
from gradkit.experiments.models import MLP
from gradkit.second_order.sophia import (
  estimate_gauss_newton_bartlett_diagonal,
  sampled_cross_entropy,
  sophia,
  sophia_g,
)
from trajectories import run_with_loss

A = np.array([0.5, 2.0, 10.0])
X0 = np.array([1.0, -2.0, 0.3])


def _diagonal_quadratic(p):
  return 0.5 * jnp.sum(jnp.asarray(A, jnp.float32) * p**2)


def _run(tx, params, steps, **extra):
  """(params after each step, final state) on the diagonal quadratic by default."""
  obj_fn = extra.pop("obj_fn", _diagonal_quadratic)
  return run_with_loss(tx, params, obj_fn, steps, **extra)


def test_matches_optax_contrib_sophia_on_a_coupled_problem(regression):
  hp = dict(b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.05, gamma=0.05, update_interval=3)
  mask = {"w": True, "b": False}
  ours = sophia(learning_rate=0.02, mask=mask, **hp)
  theirs = optax.contrib.sophia(0.02, weight_decay_mask=mask, **hp)
  got, s_ours = _run(ours, regression.params, 12, obj_fn=regression.loss)
  want, s_theirs = _run(theirs, regression.params, 12, obj_fn=regression.loss)
  for a, b in zip(got, want):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)
  nu = optax.tree.get(s_ours, "nu")
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5),
               nu, optax.tree.get(s_theirs, "nu"))
  assert float(jnp.max(nu["w"])) > 0  # the Hessian branch ran


def test_newton_with_clipping_reduction_of_the_sheet():
  tx = sophia(learning_rate=0.5, b1=0.0, b2=0.0, gamma=1.0, eps=1e-12, weight_decay=0.0,
              update_interval=1)
  got, _ = _run(tx, jnp.asarray(X0, jnp.float32), 4)
  want = [[0.5, -1.5, -0.2], [0.25, -1, -0.1], [0.125, -0.5, -0.05], [0.0625, -0.25, -0.025]]
  np.testing.assert_allclose(np.stack(got), want, rtol=1e-5, atol=1e-7)


def test_default_sophia_saturates_early_and_refreshes_every_interval():
  tx = sophia(learning_rate=0.1, weight_decay=0.0, update_interval=2)
  params, state = jnp.asarray(X0, jnp.float32), tx.init(jnp.asarray(X0, jnp.float32))
  step = jax.jit(functools.partial(tx.update, obj_fn=_diagonal_quadratic))
  nus = []
  for _ in range(4):
    updates, state = step(jax.grad(_diagonal_quadratic)(params), state, params)
    np.testing.assert_allclose(updates, [-0.1, 0.1, -0.1], rtol=1e-6)
    params = params + updates
    nus.append(np.asarray(optax.tree.get(state, "nu")))
  np.testing.assert_allclose(params, [0.6, -1.6, -0.1], rtol=1e-5)
  # Refreshed on steps 1 and 3 (count before the step a multiple of 2).
  for nu, want in zip(nus, [[0.005, 0.02, 0.1]] * 2 + [[0.00995, 0.0398, 0.199]] * 2):
    np.testing.assert_allclose(nu, want, rtol=1e-5)


def _numpy_sophia(x, grad, hess, steps, lr, b1, b2, eps, gamma, wd, interval):
  """optax's convention in float64: the refresh of step t happens after its direction."""
  m, h, out = 0.0, 0.0, []
  for t in range(1, steps + 1):
    g = grad(x)
    m = b1 * m + (1 - b1) * g
    u = np.clip(m / (1 - b1**t) / np.maximum(gamma * h, eps), -1, 1)
    if (t - 1) % interval == 0:
      h = b2 * h + (1 - b2) * hess(x)
    x = x - lr * (u + wd * x)
    out.append(x)
  return out


def test_first_steps_by_hand_with_unclipped_coordinates_and_decay():
  hp = dict(lr=0.1, b1=0.9, b2=0.5, eps=1e-8, gamma=5.0, wd=0.1, interval=1)
  tx = sophia(learning_rate=0.1, b1=0.9, b2=0.5, eps=1e-8, gamma=5.0, weight_decay=0.1,
              update_interval=1)
  got, _ = _run(tx, jnp.asarray(X0, jnp.float32), 3)
  want = _numpy_sophia(X0, lambda x: A * x, lambda x: A, 3, **hp)
  np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-5)
  # Step 2 leaves the clip for every coordinate: a preconditioned, not a sign, step.
  step2 = (want[0] - want[1]) / 0.1 - 0.1 * want[0]
  assert np.all(np.abs(step2) < 0.9)


def test_sophia_g_squares_the_sampled_gradient_and_refreshes_every_interval():
  # A sampled objective linear in the params: its gradient c is known, ĥ = c².
  c = np.array([0.3, -2.0, 1.5])

  def sampled(p, key):
    del key
    return jnp.dot(jnp.asarray(c, jnp.float32), p)

  hp = dict(lr=0.05, b1=0.9, b2=0.7, eps=1e-15, gamma=0.5, wd=0.1, interval=3)
  tx = sophia_g(learning_rate=0.05, b1=0.9, b2=0.7, gamma=0.5, weight_decay=0.1,
                update_interval=3)
  got, state = _run(tx, jnp.asarray(X0, jnp.float32), 5, sampled_obj_fn=sampled)
  want = _numpy_sophia(X0, lambda x: A * x, lambda x: c**2, 5, **hp)
  np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-5)
  np.testing.assert_allclose(optax.tree.get(state, "nu"), (1 - 0.7**2) * c**2, rtol=1e-5)


def _dense_gauss_newton_diagonal(w, x, mask=None):
  """diag of (1/B) Σ_b J_bᵀ (diag p_b - p_b p_bᵀ) J_b, logits_b = W x_b, W (classes, features)."""
  k, d = w.shape
  mask = np.ones(len(x)) if mask is None else mask
  g = np.zeros((k * d, k * d))
  for xb, mb in zip(x, mask):
    logits = w @ xb
    p = np.exp(logits - logits.max())
    p /= p.sum()
    jac = np.kron(np.eye(k), xb[None, :])  # d logits / d vec(W), row-major vec
    g += mb * jac.T @ (np.diag(p) - np.outer(p, p)) @ jac
  return np.diag(g / mask.sum()).reshape(k, d)


def _mean_gnb(logits_fn, w, draws, where=None):
  estimator = estimate_gauss_newton_bartlett_diagonal()
  sampled = sampled_cross_entropy(logits_fn, where)

  @jax.jit
  def one(key):
    h, _ = estimator.update(w, estimator.init(w)._replace(key=key), w, sampled_obj_fn=sampled)
    return h

  samples = np.asarray(jax.vmap(one)(jax.random.split(jax.random.PRNGKey(0), draws)))
  return samples.mean(0), samples.std(0) / np.sqrt(draws)


def test_gnb_expectation_is_the_gauss_newton_diagonal_of_the_sheet():
  w = np.array([[0.2, -0.1], [0.0, 0.3], [-0.4, 0.1]])
  x = np.array([[1.0, 2.0], [-1.0, 0.5]])
  sheet = np.array([[0.1859545083, 0.4200306494], [0.2357373371, 0.5276839284],
                    [0.2107453882, 0.3795090374]])
  np.testing.assert_allclose(_dense_gauss_newton_diagonal(w, x), sheet, rtol=1e-9)
  xs = jnp.asarray(x, jnp.float32)
  mean, stderr = _mean_gnb(lambda p: xs @ p.T, jnp.asarray(w, jnp.float32), 20000)
  assert np.all(np.abs(mean - sheet) < 5 * stderr + 1e-6), (mean, sheet, stderr)


def test_gnb_counts_only_unmasked_positions():
  rng = np.random.default_rng(3)
  w = rng.normal(size=(4, 3))
  x = rng.normal(size=(2, 3, 3))  # (batch, positions, features): B = 6 label positions
  where = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
  xs = jnp.asarray(x, jnp.float32)
  mean, stderr = _mean_gnb(lambda p: jnp.einsum("bsf,kf->bsk", xs, p),
                           jnp.asarray(w, jnp.float32), 20000, where=jnp.asarray(where))
  want = _dense_gauss_newton_diagonal(w, x.reshape(6, 3), where.reshape(6))
  assert np.all(np.abs(mean - want) < 5 * stderr + 1e-6), (mean, want, stderr)
  # Without the mask every position counts: a different matrix.
  assert not np.allclose(want, _dense_gauss_newton_diagonal(w, x.reshape(6, 3)), rtol=0.05)


def _blobs():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(3, 4)) * 2.0
  y = jnp.asarray(np.repeat(np.arange(3), 20))
  x = jnp.asarray(centers[np.asarray(y)] + rng.normal(size=(60, 4)), jnp.float32)
  return x, y


def test_sophia_reduces_the_loss_of_a_tiny_mlp_classifier():
  x, y = _blobs()
  rng = np.random.default_rng(1)
  params = {"w1": rng.normal(size=(4, 8)) * 0.5, "b1": np.zeros(8),
            "w2": rng.normal(size=(8, 3)) * 0.5, "b2": np.zeros(3)}
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)

  def loss(p):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  got, _ = _run(gradkit.create("sophia", learning_rate=0.05), params, 60, obj_fn=loss)
  assert float(loss(got[-1])) < 0.3 * float(loss(params))


def test_sophia_g_trains_a_flax_nnx_mlp_through_nnx_optimizer():
  x, y = _blobs()
  model = MLP((4, 8, 3), rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, gradkit.create("sophia_g", learning_rate=0.05),
                            wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))

  def ce(model):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model(x), y))

  @jax.jit
  def train_step(state):
    model, optimizer = nnx.merge(graphdef, state)
    model_def = nnx.graphdef(model)
    loss, grads = nnx.value_and_grad(ce)(model)
    sampled = sampled_cross_entropy(lambda p: nnx.merge(model_def, p)(x))
    optimizer.update(model, grads, sampled_obj_fn=sampled)
    return nnx.state((model, optimizer)), loss

  losses = []
  for _ in range(60):
    state, loss = train_step(state)
    losses.append(float(loss))
  assert losses[-1] < 0.3 * losses[0], losses


def test_missing_objectives_are_named():
  params = jnp.ones(3)
  tx = sophia()
  with pytest.raises(ValueError, match=r"\bobj_fn"):
    jax.jit(tx.update)(params, tx.init(params), params)
  tx = sophia_g()
  with pytest.raises(ValueError, match="sampled_obj_fn"):
    jax.jit(functools.partial(tx.update, obj_fn=_diagonal_quadratic))(
        params, tx.init(params), params)


@pytest.mark.parametrize("factory", [sophia, sophia_g])
@pytest.mark.parametrize("bad", [
    {"learning_rate": -1e-3}, {"b1": 1.0}, {"b2": 1.5}, {"eps": -1.0}, {"gamma": -0.1},
    {"clip_threshold": 0.0}, {"update_interval": 0}, {"weight_decay": -0.1},
])
def test_invalid_hyperparameters_raise(factory, bad):
  with pytest.raises(ValueError, match=next(iter(bad))):
    factory(**bad)


def test_optax_s_weight_decay_mask_is_an_alias_of_mask(regression):
  hp = dict(b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.5, gamma=0.05, update_interval=2)
  mask = {"w": False, "b": True}
  ours = sophia(learning_rate=0.02, weight_decay_mask=mask, **hp)
  theirs = optax.contrib.sophia(0.02, weight_decay_mask=mask, **hp)
  unmasked = sophia(learning_rate=0.02, **hp)
  got, _ = _run(ours, regression.params, 3, obj_fn=regression.loss)
  want, _ = _run(theirs, regression.params, 3, obj_fn=regression.loss)
  every_leaf, _ = _run(unmasked, regression.params, 3, obj_fn=regression.loss)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), got, want)
  assert not np.allclose(got[-1]["w"], every_leaf[-1]["w"])  # the mask took effect
  injected = optax.inject_hyperparams(sophia)(learning_rate=0.02, weight_decay_mask=mask, **hp)
  got_injected, _ = _run(injected, regression.params, 3, obj_fn=regression.loss)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6),
               got_injected, want)


@pytest.mark.parametrize("factory", [sophia, sophia_g])
def test_mask_and_weight_decay_mask_together_are_refused(factory):
  with pytest.raises(ValueError, match=r"mask=.*weight_decay_mask="):
    factory(mask={"w": True}, weight_decay_mask={"w": True})
