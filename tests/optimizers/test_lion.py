"""lion: hand-computed steps, a float64 run of Algorithm 2, schedules, inject_hyperparams,
bad input."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.lion import lion
from trajectories import MASK, RandomProblem, f32

PROBLEM = RandomProblem(seed=1, scale=(0.02, 2.0))
PARAMS, GRADS, GRADS_F32 = PROBLEM.params, PROBLEM.grads, PROBLEM.grads_f32
_f32 = f32
_trajectory = PROBLEM.trajectory


def _reference(lr, b1, b2, wd, steps):
  """Algorithm 2 of the Lion paper in float64, decay only on MASK's leaves.

  Returns the parameters after each step and the smallest |b1 m + (1-b1) g|
  met, which must stay clear of float32 rounding for the signs to agree.
  """
  p = {k: v.copy() for k, v in PARAMS.items()}
  m = {k: np.zeros_like(v) for k, v in PARAMS.items()}
  out, smallest = [], np.inf
  for g in GRADS[:steps]:
    for k in p:
      c = b1 * m[k] + (1 - b1) * g[k]
      smallest = min(smallest, np.abs(c).min())
      m[k] = b2 * m[k] + (1 - b2) * g[k]
      p[k] = p[k] - lr * (np.sign(c) + (wd if MASK[k] else 0.0) * p[k])
    out.append({k: v.copy() for k, v in p.items()})
  return out, smallest


def test_first_steps_match_the_paper():
  got = _trajectory(lion(0.1, b1=0.9, b2=0.99, weight_decay=0.5, mask=MASK), steps=3)
  for g, e in zip(got, _reference(0.1, 0.9, 0.99, 0.5, steps=3)[0]):
    for k in e:
      np.testing.assert_allclose(g[k], e[k], rtol=1e-6, atol=1e-6)


def test_defaults_are_the_official_ones():
  """lr 1e-4 and no weight decay: the first step is -1e-4 * sign(g)."""
  tx = gradkit.create("lion")
  updates, _ = jax.jit(tx.update)(GRADS_F32[0], tx.init(_f32(PARAMS)), _f32(PARAMS))
  for k in PARAMS:
    np.testing.assert_allclose(updates[k], -1e-4 * np.sign(GRADS[0][k]), rtol=1e-6)


def test_fifty_steps_follow_algorithm_2():
  """The momentum carried over 50 steps (b2 = 0.95 remembers ~20) decides the
  signs: a float64 run of the paper's rule, not optax.lion, is the oracle."""
  ours = _trajectory(lion(3e-3, b1=0.8, b2=0.95, weight_decay=0.3, mask=MASK))
  expected, smallest = _reference(3e-3, 0.8, 0.95, 0.3, steps=50)
  assert smallest > 1e-4  # no sign is decided by float32 rounding
  for a, b in zip(ours, expected):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_schedule_matches_constant_at_step_zero_then_follows_it():
  schedule = optax.linear_schedule(0.1, 0.0, transition_steps=4)
  with_schedule = _trajectory(lion(schedule, weight_decay=0.5, mask=MASK), steps=2)
  constant = _trajectory(lion(0.1, weight_decay=0.5, mask=MASK), steps=2)
  for k in PARAMS:
    np.testing.assert_allclose(with_schedule[0][k], constant[0][k], rtol=1e-6)
  assert not np.allclose(with_schedule[1]["w"], constant[1]["w"])


def test_inject_hyperparams_gives_the_same_updates():
  hp = dict(learning_rate=0.01, b1=0.8, weight_decay=0.2)
  plain = _trajectory(lion(**hp, mask=MASK), steps=5)
  injected = _trajectory(optax.inject_hyperparams(lion)(**hp, mask=MASK), steps=5)
  for a, b in zip(plain, injected):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-6)


@pytest.mark.parametrize("kwargs,name", [
    ({"learning_rate": -1e-4}, "learning_rate"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"b1": 1.0}, "b1"),
    ({"b2": -0.5}, "b2"),
])
def test_invalid_hyperparameters_are_rejected(kwargs, name):
  with pytest.raises(ValueError, match=name):
    lion(**kwargs)
