"""adamw and sgd baselines: two steps by hand, and optax's aliases over 50 steps."""

from __future__ import annotations

import numpy as np
import optax

from gradkit.optimizers.baselines import adamw, sgd
from trajectories import MASK, RandomProblem, assert_trajectories_close

PROBLEM = RandomProblem(seed=5)


def _adamw_by_hand(lr, b1, b2, eps, wd, steps):
  p = {k: v.copy() for k, v in PROBLEM.params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  for t, g in enumerate(PROBLEM.grads[:steps], start=1):
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      step = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
      p[k] = p[k] - lr * (step + (wd * p[k] if MASK[k] else 0.0))
    out.append({k: x.copy() for k, x in p.items()})
  return out


def _sgd_by_hand(lr, momentum, wd, steps):
  p = {k: v.copy() for k, v in PROBLEM.params.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  for g in PROBLEM.grads[:steps]:
    for k in p:
      buf[k] = momentum * buf[k] + g[k]
      p[k] = p[k] - lr * (buf[k] + (wd * p[k] if MASK[k] else 0.0))
    out.append({k: x.copy() for k, x in p.items()})
  return out


def test_adamw_first_two_steps_by_hand():
  got = PROBLEM.trajectory(adamw(0.1, b1=0.8, b2=0.9, eps=1e-3, weight_decay=0.5, mask=MASK), 2)
  assert_trajectories_close(got, _adamw_by_hand(0.1, 0.8, 0.9, 1e-3, 0.5, 2))


def test_sgd_first_two_steps_by_hand():
  got = PROBLEM.trajectory(sgd(0.1, momentum=0.7, weight_decay=0.5, mask=MASK), 2)
  assert_trajectories_close(got, _sgd_by_hand(0.1, 0.7, 0.5, 2))


def test_baselines_equal_optax_over_50_steps():
  ours = PROBLEM.trajectory(adamw(1e-2, weight_decay=0.1, mask=MASK))
  theirs = PROBLEM.trajectory(optax.adamw(1e-2, weight_decay=0.1, mask=MASK))
  assert_trajectories_close(ours, theirs)
  ours = PROBLEM.trajectory(sgd(1e-2, momentum=0.9, nesterov=True))
  theirs = PROBLEM.trajectory(optax.sgd(1e-2, momentum=0.9, nesterov=True))
  assert_trajectories_close(ours, theirs)
