"""lamb and lars: the papers' steps by hand, optax.lamb/lars, schedules, bad input."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.large_batch import lamb, lars
from trajectories import MASK, RandomProblem, assert_trajectories_close, f32

PROBLEM = RandomProblem(seed=4, scale=(0.1, 2.0))
PARAMS, GRADS, GRADS_F32 = PROBLEM.params, PROBLEM.grads, PROBLEM.grads_f32
_f32 = f32
_trajectory = PROBLEM.trajectory

_assert_trajectories_close = assert_trajectories_close


def _trust_ratio(p, d, coefficient=1.0, eps=0.0):
  p_norm, d_norm = np.linalg.norm(p), np.linalg.norm(d)
  return 1.0 if p_norm == 0 or d_norm == 0 else coefficient * p_norm / (d_norm + eps)


def _lamb_by_hand(params, lr, b1, b2, eps, wd, decayed, trusted, steps):
  """Algorithm 2 of the LAMB paper (phi = identity) in float64; lr may be a schedule."""
  p = {k: v.copy() for k, v in params.items()}
  m, v = ({k: np.zeros_like(x) for k, x in params.items()} for _ in range(2))
  out = []
  for t, g in enumerate(GRADS[:steps], start=1):
    lr_t = float(lr(t - 1)) if callable(lr) else lr
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      r = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
      d = r + (wd * p[k] if decayed[k] else 0.0)
      p[k] = p[k] - lr_t * (_trust_ratio(p[k], d) if trusted[k] else 1.0) * d
    out.append({k: x.copy() for k, x in p.items()})
  return out


def _lars_by_hand(params, lr, momentum, wd, coefficient, eps, decayed, trusted, steps):
  """Algorithm 1 of the LARS paper, local lr on the decayed gradient, float64.

  The momentum accumulates lr-scaled steps, which matters under a schedule.
  """
  p = {k: v.copy() for k, v in params.items()}
  velocity = {k: np.zeros_like(x) for k, x in params.items()}
  out = []
  for t, g in enumerate(GRADS[:steps]):
    lr_t = float(lr(t)) if callable(lr) else lr
    for k in p:
      d = g[k] + (wd * p[k] if decayed[k] else 0.0)
      local = _trust_ratio(p[k], d, coefficient, eps) if trusted[k] else 1.0
      velocity[k] = momentum * velocity[k] + lr_t * local * d
      p[k] = p[k] - velocity[k]
    out.append({k: x.copy() for k, x in p.items()})
  return out


# `b` starts at zero in the second case, so its trust ratio falls back to 1.
ZERO_BIAS = {"w": PARAMS["w"], "b": np.zeros(3)}
CASES = [  # (params, trust_ratio_mask, leaves with the trust ratio)
    (PARAMS, None, MASK),  # the trust ratio follows `mask` by default
    (ZERO_BIAS, True, {"w": True, "b": True}),
]


@pytest.mark.parametrize("params,trust_ratio_mask,trusted", CASES)
def test_lamb_first_steps_match_the_paper(params, trust_ratio_mask, trusted):
  hp = dict(lr=0.05, b1=0.9, b2=0.99, eps=1e-3, wd=0.4)
  expected = _lamb_by_hand(params, **hp, decayed=MASK, trusted=trusted, steps=2)
  tx = lamb(hp["lr"], hp["b1"], hp["b2"], hp["eps"], hp["wd"], MASK, trust_ratio_mask)
  _assert_trajectories_close(_trajectory(tx, 2, params=params), expected)


@pytest.mark.parametrize("params,trust_ratio_mask,trusted", CASES)
def test_lars_first_steps_match_the_paper(params, trust_ratio_mask, trusted):
  hp = dict(lr=2.0, momentum=0.9, wd=0.4, coefficient=0.01, eps=1e-3)
  expected = _lars_by_hand(params, **hp, decayed=MASK, trusted=trusted, steps=2)
  tx = lars(hp["lr"], hp["momentum"], hp["wd"], hp["coefficient"], hp["eps"],
            mask=MASK, trust_ratio_mask=trust_ratio_mask)
  _assert_trajectories_close(_trajectory(tx, 2, params=params), expected)


@pytest.mark.parametrize("name,direction", [
    ("lamb", lambda g: g / (np.abs(g) + 1e-6)),  # lr 1e-3, Adam's first step, eps 1e-6
    ("lars", lambda g: g),  # lr 1.0 times trust coefficient 1e-3
])
def test_default_first_step(name, direction):
  """Both defaults give -1e-3 ||p|| d / ||d|| on every leaf at step 1."""
  tx = gradkit.create(name)
  updates, _ = jax.jit(tx.update)(GRADS_F32[0], tx.init(_f32(PARAMS)), _f32(PARAMS))
  for k in PARAMS:
    d = direction(GRADS[0][k])
    expected = -1e-3 * np.linalg.norm(PARAMS[k]) / np.linalg.norm(d) * d
    np.testing.assert_allclose(updates[k], expected, rtol=1e-5)


def test_lamb_equals_optax_lamb_over_50_steps():
  """optax.lamb's trust ratio covers every leaf: trust_ratio_mask=True."""
  hp = dict(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.3, mask=MASK)
  ours = _trajectory(lamb(**hp, trust_ratio_mask=True))
  _assert_trajectories_close(ours, _trajectory(optax.lamb(**hp)))


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_equals_optax_lars_over_50_steps(nesterov):
  hp = dict(learning_rate=3.0, momentum=0.8, weight_decay=0.3, trust_coefficient=0.01,
            eps=1e-4, nesterov=nesterov)
  ours = _trajectory(lars(**hp, mask=MASK, trust_ratio_mask={"w": True, "b": False}))
  theirs = _trajectory(optax.lars(**hp, weight_decay_mask=MASK, trust_ratio_mask=MASK))
  _assert_trajectories_close(ours, theirs)


@pytest.mark.parametrize("factory,lr,by_hand", [
    (lamb, 0.1, lambda lr: _lamb_by_hand(PARAMS, lr, 0.9, 0.999, 1e-6, 0.5, MASK, MASK, 3)),
    (lars, 3.0, lambda lr: _lars_by_hand(PARAMS, lr, 0.9, 0.5, 1e-3, 0.0, MASK, MASK, 3)),
])
def test_schedule_matches_constant_at_step_zero_then_follows_it(factory, lr, by_hand):
  schedule = optax.linear_schedule(lr, 0.0, transition_steps=4)
  with_schedule = _trajectory(factory(schedule, weight_decay=0.5, mask=MASK), steps=3)
  constant = _trajectory(factory(lr, weight_decay=0.5, mask=MASK), steps=1)
  for k in PARAMS:
    np.testing.assert_allclose(with_schedule[0][k], constant[0][k], rtol=1e-6)
  _assert_trajectories_close(with_schedule, by_hand(schedule))


@pytest.mark.parametrize("factory,hp", [
    (lamb, dict(learning_rate=0.01, b1=0.8, eps=1e-4, weight_decay=0.2)),
    (lars, dict(learning_rate=3.0, momentum=0.8, trust_coefficient=0.01, weight_decay=0.2)),
])
def test_inject_hyperparams_gives_the_same_updates(factory, hp):
  plain = _trajectory(factory(**hp, mask=MASK), steps=5)
  injected = _trajectory(optax.inject_hyperparams(factory)(**hp, mask=MASK), steps=5)
  _assert_trajectories_close(plain, injected)


@pytest.mark.parametrize("factory,kwargs,name", [
    (lamb, {"learning_rate": -1e-3}, "learning_rate"),
    (lamb, {"weight_decay": -0.1}, "weight_decay"),
    (lamb, {"b1": 1.0}, "b1"),
    (lamb, {"b2": -0.5}, "b2"),
    (lamb, {"eps": -1e-6}, "eps"),
    (lars, {"learning_rate": -1.0}, "learning_rate"),
    (lars, {"weight_decay": -0.1}, "weight_decay"),
    (lars, {"momentum": 1.0}, "momentum"),
    (lars, {"trust_coefficient": 0.0}, "trust_coefficient"),
    (lars, {"eps": -1.0}, "eps"),
])
def test_invalid_hyperparameters_are_rejected(factory, kwargs, name):
  with pytest.raises(ValueError, match=name):
    factory(**kwargs)
