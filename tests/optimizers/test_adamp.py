"""Oracles for the AdamP and SGDP recipes (sheet values, float64 numpy, optax.adamw)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.adamp import adamp, sgdp
from oracles import torch_adamp_projection
from trajectories import run_updates


def _reference(params, grads_seq, *, kind, lr, wd, mask, b1=0.9, b2=0.999, eps=1e-8,
               momentum=0.0, dampening=0.0, nesterov=False, delta=0.1, wd_ratio=0.1):
  """adamp.py / sgdp.py steps in float64 on a dict of Flax-layout leaves (ndim <= 2).

  Returns the parameters after every step and the fired views (rows) per step.
  """
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(x) for k, x in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  history, fired = [], []
  for t, grads in enumerate(grads_seq, start=1):
    fired.append({})
    for k in p:
      g = np.asarray(grads[k], np.float64)
      if kind == "adamp":
        m[k] = b1 * m[k] + (1 - b1) * g
        v[k] = b2 * v[k] + (1 - b2) * g * g
        denom = np.sqrt(v[k]) / np.sqrt(1 - b2**t) + eps
        d = (b1 * m[k] + (1 - b1) * g if nesterov else m[k]) / denom
        step, decay = lr / (1 - b1**t), wd
      else:
        m[k] = momentum * m[k] + (1 - dampening) * g
        d = g + momentum * m[k] if nesterov else m[k]
        step, decay = lr, wd / (1 - momentum)
      ratio = 1.0
      if p[k].ndim > 1:
        d_t, ratio, fired[-1][k] = torch_adamp_projection(p[k].T, g.T, d.T, delta, wd_ratio, eps)
        d = d_t.T
      if mask[k]:
        p[k] = p[k] * (1 - lr * decay * ratio)
      p[k] = p[k] - step * d
    history.append({k: x.copy() for k, x in p.items()})
  return history, fired


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _single_step_delta(tx, p, g):
  return np.asarray(jax.jit(tx.update)(_f32(g), tx.init(_f32(p)), _f32(p))[0])


@pytest.mark.parametrize(
    "p,g,expected",
    [
        # Sheet oracle 1: the channel view fires.
        ([[1.0, 0.0], [0.0, 2.0]], [[0.01, 1.0], [1.0, 0.02]],
         [[-0.001000002, -0.099999999], [-0.099999999, -0.002000001]]),
        # Sheet oracle 2: nothing fires.
        ([[1.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [0.0, 1.0]],
         [[-0.109999999, 0.0], [0.0, -0.119999999]]),
        # Sheet oracle 3: only the layer view fires.
        ([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]],
         [[1.0, 0.0, 1.0, 1.0], [0.0, -0.5, 1.0, 1.0]],
         [[-0.1209999982, 0.0, -0.099999999, -0.099999999],
          [0.0, 0.0579999996, -0.099999999, -0.099999999]]),
    ],
)
def test_sheet_adamp_oracles(p, g, expected):
  # The sheet is in PyTorch layout (out, in); the Flax kernel is its transpose.
  p, g = np.asarray(p), np.asarray(g)
  delta = _single_step_delta(gradkit.create("adamp", learning_rate=0.1, weight_decay=0.1),
                             p.T, g.T)
  # float32 bias correction (as in optax) costs ~7e-6 relative at t = 1.
  np.testing.assert_allclose(delta.T, expected, rtol=3e-5, atol=1e-7)


def test_sheet_sgdp_two_step_oracle():
  tx = gradkit.create("sgdp", learning_rate=0.1, momentum=0.9, weight_decay=1e-5)
  p = _f32([[1.0, 0.0], [0.0, 2.0]])
  g = _f32([[0.01, 1.0], [1.0, 0.02]])
  p1, p2 = run_updates(tx, p, [g, g])
  np.testing.assert_allclose(p1, [[0.999999, -0.1], [-0.1, 1.999998]], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(
      p2, [[0.9924207017, -0.2894321696], [-0.2894321696, 1.9848414034]], rtol=1e-6, atol=1e-7
  )


def test_adamp_equals_optax_adamw_when_nothing_can_fire(regression):
  # delta = 0: max cos < 0 never holds, so AdamP must be AdamW exactly.
  mask = {"w": True, "b": False}
  ours = adamp(learning_rate=0.03, weight_decay=0.05, delta=0.0, mask=mask)
  theirs = optax.adamw(learning_rate=0.03, weight_decay=0.05, mask=mask)

  @jax.jit
  def steps(params):
    def body(carry, _):
      (p_o, s_o), (p_t, s_t) = carry
      u_o, s_o = ours.update(regression.grad(p_o), s_o, p_o)
      u_t, s_t = theirs.update(regression.grad(p_t), s_t, p_t)
      return ((optax.apply_updates(p_o, u_o), s_o), (optax.apply_updates(p_t, u_t), s_t)), None

    carry = ((params, ours.init(params)), (params, theirs.init(params)))
    ((p_o, _), (p_t, _)), _ = jax.lax.scan(body, carry, None, length=50)
    return p_o, p_t

  p_ours, p_theirs = steps(regression.params)
  chex.assert_trees_all_close(p_ours, p_theirs, rtol=1e-5, atol=1e-6)
  assert float(regression.loss(p_ours)) < 0.5 * float(regression.loss(regression.params))


def _masked_tree_case():
  """A Flax Dense kernel whose projection fires, a bias, and two different gradients."""
  rng = np.random.default_rng(0)
  p_torch = rng.normal(size=(2, 3))
  g1 = rng.normal(size=(2, 3))
  radial = np.sum(g1 * p_torch, axis=1, keepdims=True) / np.sum(p_torch**2, axis=1, keepdims=True)
  g1 -= radial * p_torch
  g2 = g1 + 0.3 * p_torch
  params = {"w": _f32(p_torch.T), "b": _f32([0.5, -1.0, 2.0])}
  grads = [{"w": _f32(g1.T), "b": _f32([0.1, 0.2, -0.3])},
           {"w": _f32(g2.T), "b": _f32([-0.2, 0.1, 0.4])}]
  return params, grads, {"w": True, "b": False}


@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_two_steps_by_hand_with_mask(nesterov):
  params, grads, mask = _masked_tree_case()
  tx = adamp(learning_rate=0.1, weight_decay=0.2, nesterov=nesterov, mask=mask)
  got = run_updates(tx, params, grads)
  want, fired = _reference(params, grads, kind="adamp", lr=0.1, wd=0.2, mask=mask,
                           nesterov=nesterov)
  assert [f["w"] for f in fired] == [2, None]
  for g, w in zip(got, want):
    for k in params:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("nesterov,dampening", [(False, 0.3), (True, 0.0), (True, 0.5)])
def test_sgdp_two_steps_by_hand_with_mask(nesterov, dampening):
  params, grads, mask = _masked_tree_case()
  tx = sgdp(learning_rate=0.1, momentum=0.8, dampening=dampening, weight_decay=0.2,
            nesterov=nesterov, mask=mask)
  got = run_updates(tx, params, grads)
  want, fired = _reference(params, grads, kind="sgdp", lr=0.1, wd=0.2, mask=mask,
                           momentum=0.8, dampening=dampening, nesterov=nesterov)
  assert fired[0]["w"] == 2
  for g, w in zip(got, want):
    for k in params:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-6)


def test_sgdp_decay_is_divided_by_one_minus_momentum():
  p, g = np.array([1.0, -2.0]), np.array([0.5, 0.25])
  delta = _single_step_delta(sgdp(learning_rate=0.1, momentum=0.9, weight_decay=0.01), p, g)
  np.testing.assert_allclose(delta, -0.1 * 0.01 / (1 - 0.9) * p - 0.1 * g, rtol=1e-6)


@pytest.mark.parametrize("factory", [adamp, sgdp])
def test_schedule_learning_rate_scales_each_step(factory):
  params, grads, mask = _masked_tree_case()
  schedule = optax.linear_schedule(0.1, 0.02, transition_steps=1)
  tx_s = factory(learning_rate=schedule, weight_decay=0.2, mask=mask)
  tx_c = factory(learning_rate=0.1, weight_decay=0.2, mask=mask)
  s_s, s_c = tx_s.init(params), tx_c.init(params)
  for t, g in enumerate(grads):
    u_s, s_s = jax.jit(tx_s.update)(g, s_s, params)
    u_c, s_c = jax.jit(tx_c.update)(g, s_c, params)
    scale = float(schedule(t)) / 0.1
    chex.assert_trees_all_close(u_s, jax.tree.map(lambda u, s=scale: u * s, u_c), rtol=1e-5)


@pytest.mark.parametrize(
    "factory,hparams",
    [
        (adamp, {"learning_rate": 0.05, "weight_decay": 0.2, "delta": 0.2, "wd_ratio": 0.3}),
        (sgdp, {"learning_rate": 0.05, "weight_decay": 0.2, "momentum": 0.9,
                "dampening": 0.1, "delta": 0.2}),
    ],
)
def test_inject_hyperparams_matches_plain(factory, hparams):
  params, grads, mask = _masked_tree_case()
  plain = run_updates(factory(**hparams, mask=mask), params, grads)
  injected = run_updates(optax.inject_hyperparams(factory)(**hparams, mask=mask), params, grads)
  chex.assert_trees_all_close(plain[-1], injected[-1], rtol=1e-5, atol=1e-6)


def test_defaults_are_the_official_ones():
  p, g = np.array([1.0, -2.0]), np.array([0.5, -0.25])
  # AdamP: lr 1e-3, no decay; the first Adam step is sign(g).
  np.testing.assert_allclose(_single_step_delta(gradkit.create("adamp"), p, g),
                             -1e-3 * np.sign(g), rtol=3e-5)
  # SGDP: lr 0.1 (README), momentum 0, no decay: plain SGD on the first steps.
  np.testing.assert_allclose(_single_step_delta(gradkit.create("sgdp"), p, g), -0.1 * g,
                             rtol=1e-6)


@pytest.mark.parametrize(
    "factory,hparams",
    [
        (adamp, {"learning_rate": -1e-3}),
        (adamp, {"b1": 1.0}),
        (adamp, {"b2": -0.5}),
        (adamp, {"eps": -1e-8}),
        (adamp, {"weight_decay": -0.1}),
        (adamp, {"delta": -0.1}),
        (adamp, {"wd_ratio": -0.1}),
        (sgdp, {"learning_rate": -0.1}),
        (sgdp, {"momentum": 1.0}),
        (sgdp, {"dampening": 1.5}),
        (sgdp, {"weight_decay": -1e-5}),
        (sgdp, {"delta": -0.1}),
    ],
)
def test_invalid_hyperparameters_raise(factory, hparams):
  with pytest.raises(ValueError):
    factory(**hparams)
