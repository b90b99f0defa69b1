"""adan: the official update by hand, optax.adan, schedules, bad input."""

from __future__ import annotations

import math

import jax
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.adan import adan
from trajectories import MASK, RandomProblem, assert_trajectories_close, f32

PROBLEM = RandomProblem(seed=3, scale=(0.1, 2.0))
PARAMS, GRADS, GRADS_F32 = PROBLEM.params, PROBLEM.grads, PROBLEM.grads_f32
_f32 = f32
_trajectory = PROBLEM.trajectory


def _official(lr, b1, b2, b3, eps, wd, no_prox, steps):
  """sail-sg/Adan's single-tensor step (no clipping) in float64; `lr` may be
  a schedule, read at each step as the official code reads group['lr']."""
  p = {k: v.copy() for k, v in PARAMS.items()}
  m, v, n = ({k: np.zeros_like(x) for k, x in PARAMS.items()} for _ in range(3))
  previous = None
  out = []
  for t, g in enumerate(GRADS[:steps], start=1):
    lr_t = float(lr(t - 1)) if callable(lr) else lr
    for k in p:
      decay = wd if MASK[k] else 0.0
      diff = np.zeros_like(g[k]) if previous is None else g[k] - previous[k]
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * diff
      n[k] = b3 * n[k] + (1 - b3) * (g[k] + b2 * diff) ** 2
      denom = np.sqrt(n[k]) / math.sqrt(1 - b3**t) + eps
      step = m[k] / (1 - b1**t) / denom + b2 * v[k] / (1 - b2**t) / denom
      if no_prox:
        p[k] = p[k] * (1 - lr_t * decay) - lr_t * step
      else:
        p[k] = (p[k] - lr_t * step) / (1 + lr_t * decay)
    previous = g
    out.append({k: x.copy() for k, x in p.items()})
  return out


@pytest.mark.parametrize("proximal", [True, False])
def test_first_steps_match_the_official_code(proximal):
  # Three steps: the gradient difference enters from the second one.
  hp = dict(lr=0.05, b1=0.9, b2=0.8, b3=0.95, eps=1e-3, wd=0.5)
  expected = _official(**hp, no_prox=not proximal, steps=3)
  tx = adan(hp["lr"], hp["b1"], hp["b2"], hp["b3"], hp["eps"], hp["wd"], MASK,
            proximal=proximal)
  for g, e in zip(_trajectory(tx, 3), expected):
    for k in e:
      np.testing.assert_allclose(g[k], e[k], rtol=1e-5, atol=1e-6)


def test_defaults_are_the_official_ones():
  """lr 1e-3, eps 1e-8, no decay: step 1 is -lr (g + b2*0) / (|g| + eps)."""
  tx = gradkit.create("adan")
  updates, _ = jax.jit(tx.update)(GRADS_F32[0], tx.init(_f32(PARAMS)), _f32(PARAMS))
  for k in PARAMS:
    g = GRADS[0][k]
    np.testing.assert_allclose(updates[k], -1e-3 * g / (np.abs(g) + 1e-8), rtol=1e-5)

_assert_trajectories_close = assert_trajectories_close


def test_equals_optax_adan_where_the_conventions_agree():
  """optax weights the gradient difference by 1 - b2, the official code by b2.

  At b2 = 0.5 the two coincide and, with decoupled decay and no eps_root,
  50 steps agree; at the official b2 = 0.92 they part, from the second step.
  """
  hp = dict(learning_rate=1e-2, b1=0.9, b3=0.99, eps=1e-8, weight_decay=0.3, mask=MASK)
  ours = _trajectory(adan(**hp, b2=0.5, proximal=False))
  _assert_trajectories_close(ours, _trajectory(optax.adan(**hp, b2=0.5, eps_root=0.0)))
  ours = _trajectory(adan(**hp, b2=0.92, proximal=False), steps=2)
  theirs = _trajectory(optax.adan(**hp, b2=0.92, eps_root=0.0), steps=2)
  _assert_trajectories_close(ours[:1], theirs[:1])
  assert not np.allclose(ours[1]["w"], theirs[1]["w"], rtol=1e-3)


def test_proximal_decay_is_decoupled_decay_with_lr_over_one_plus_lr_wd():
  """(p - lr u) / (1 + lr wd) = p - lr' (u + wd p) with lr' = lr / (1 + lr wd)."""
  lr, wd = 0.05, 0.5
  ours = _trajectory(adan(lr, b2=0.5, weight_decay=wd))
  theirs = _trajectory(optax.adan(lr / (1 + lr * wd), b2=0.5, eps_root=0.0, weight_decay=wd))
  _assert_trajectories_close(ours, theirs)


def test_schedule_matches_constant_at_step_zero_then_follows_it():
  """The proximal shrink 1 / (1 + lr_t wd) follows the schedule too."""
  schedule = optax.linear_schedule(0.1, 0.0, transition_steps=4)
  with_schedule = _trajectory(adan(schedule, weight_decay=0.5, mask=MASK), steps=3)
  constant = _trajectory(adan(0.1, weight_decay=0.5, mask=MASK), steps=1)
  for k in PARAMS:
    np.testing.assert_allclose(with_schedule[0][k], constant[0][k], rtol=1e-6)
  expected = _official(schedule, 0.98, 0.92, 0.99, 1e-8, 0.5, no_prox=False, steps=3)
  _assert_trajectories_close(with_schedule, expected)


def test_inject_hyperparams_gives_the_same_updates():
  hp = dict(learning_rate=0.01, b1=0.9, b2=0.8, b3=0.95, weight_decay=0.2)
  plain = _trajectory(adan(**hp, mask=MASK), steps=5)
  injected = _trajectory(optax.inject_hyperparams(adan)(**hp, mask=MASK), steps=5)
  _assert_trajectories_close(plain, injected)


@pytest.mark.parametrize("kwargs,name", [
    ({"learning_rate": -1e-3}, "learning_rate"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"b1": 1.0}, "b1"),
    ({"b2": -0.5}, "b2"),
    ({"b3": 1.2}, "b3"),
    ({"eps": -1e-8}, "eps"),
])
def test_invalid_hyperparameters_are_rejected(kwargs, name):
  with pytest.raises(ValueError, match=name):
    adan(**kwargs)
