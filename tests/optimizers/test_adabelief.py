"""adabelief: the official update in float64 (short and 50-step runs, eps and
eps_root apart), schedules, inject_hyperparams, bad input."""

from __future__ import annotations

import math

import jax
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.adabelief import adabelief
from trajectories import MASK, RandomProblem, f32

PROBLEM = RandomProblem(seed=2, scale=(0.1, 2.0))
PARAMS, GRADS, GRADS_F32 = PROBLEM.params, PROBLEM.grads, PROBLEM.grads_f32
_f32 = f32
_trajectory = PROBLEM.trajectory


def _official(lr, b1, b2, eps, wd, rectify, steps, eps_root=None):
  """adabelief-pytorch 0.2.0's step (weight_decouple=True) in float64.

  The official code adds its one eps inside s and outside the root;
  `eps_root` (None: eps) replaces the inside one.
  """
  eps_root = eps if eps_root is None else eps_root
  p = {k: v.copy() for k, v in PARAMS.items()}
  m = {k: np.zeros_like(v) for k, v in PARAMS.items()}
  s = {k: np.zeros_like(v) for k, v in PARAMS.items()}
  out, branches = [], set()
  for t, g in enumerate(GRADS[:steps], start=1):
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    n_max = 2 / (1 - b2) - 1
    n_sma = n_max - 2 * t * b2**t / (1 - b2**t)
    for k in p:
      p[k] = p[k] * (1 - lr * (wd if MASK[k] else 0.0))
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      s[k] = b2 * s[k] + (1 - b2) * (g[k] - m[k]) ** 2 + eps_root
      if not rectify:
        p[k] = p[k] - lr / bc1 * m[k] / (np.sqrt(s[k]) / math.sqrt(bc2) + eps)
      elif n_sma >= 5:
        step = math.sqrt(bc2 * (n_sma - 4) / (n_max - 4) * (n_sma - 2) / n_sma
                         * n_max / (n_max - 2)) / bc1
        p[k] = p[k] - lr * step * m[k] / (np.sqrt(s[k]) + eps)
      else:
        p[k] = p[k] - lr / bc1 * m[k]
    branches.add(bool(rectify and n_sma >= 5))
    out.append({k: v.copy() for k, v in p.items()})
  return out, branches


@pytest.mark.parametrize("rectify,steps", [(False, 2), (True, 8)])
def test_steps_match_the_official_code(rectify, steps):
  # A large eps makes its two placements (inside s, in the denominator)
  # visible in float32; b2=0.9 reaches the rectified branch at step 6.
  hp = dict(lr=0.05, b1=0.9, b2=0.9, eps=1e-2, wd=0.3)
  expected, branches = _official(**hp, rectify=rectify, steps=steps)
  if rectify:
    assert branches == {False, True}
  tx = adabelief(hp["lr"], hp["b1"], hp["b2"], hp["eps"], hp["wd"], MASK, rectify=rectify)
  for g, e in zip(_trajectory(tx, steps), expected):
    for k in e:
      np.testing.assert_allclose(g[k], e[k], rtol=1e-5, atol=1e-6)


def test_default_first_step_is_momentum_sgd():
  """Official defaults (rectify=True, lr 1e-3, no decay): step 1 is -lr * g."""
  tx = gradkit.create("adabelief")
  updates, _ = jax.jit(tx.update)(GRADS_F32[0], tx.init(_f32(PARAMS)), _f32(PARAMS))
  for k in PARAMS:
    np.testing.assert_allclose(updates[k], -1e-3 * GRADS[0][k], rtol=1e-5)


@pytest.mark.parametrize("rectify", [False, True])
def test_fifty_steps_with_masked_decay_match_the_official_code(rectify):
  """Decoupled decay p <- p (1 - lr wd) on MASK's leaves only, over 50 steps
  (b2 = 0.99 reaches the rectified branch at step 6)."""
  hp = dict(lr=1e-2, b1=0.8, b2=0.99, eps=1e-8, wd=0.3)
  expected, branches = _official(**hp, rectify=rectify, steps=50)
  assert branches == ({False, True} if rectify else {False})
  tx = adabelief(hp["lr"], hp["b1"], hp["b2"], hp["eps"], hp["wd"], MASK, rectify=rectify)
  for g, e in zip(_trajectory(tx), expected):
    for k in e:
      np.testing.assert_allclose(g[k], e[k], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("rectify,steps", [(False, 2), (True, 8)])
def test_eps_root_is_the_eps_inside_s(rectify, steps):
  # eps outside the root and eps_root inside s, both large enough to show in
  # float32, and different: the run with them swapped is far away.
  hp = dict(lr=0.05, b1=0.9, b2=0.9, wd=0.3)
  expected, _ = _official(**hp, eps=1e-2, eps_root=0.1, rectify=rectify, steps=steps)
  swapped, _ = _official(**hp, eps=0.1, eps_root=1e-2, rectify=rectify, steps=steps)
  assert np.max(np.abs(swapped[-1]["w"] - expected[-1]["w"])) > 1e-3
  tx = adabelief(hp["lr"], hp["b1"], hp["b2"], 1e-2, hp["wd"], MASK, rectify=rectify,
                 eps_root=0.1)
  for g, e in zip(_trajectory(tx, steps), expected):
    for k in e:
      np.testing.assert_allclose(g[k], e[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rectify", [False, True])
def test_schedule_matches_constant_at_step_zero_then_follows_it(rectify):
  schedule = optax.linear_schedule(0.1, 0.0, transition_steps=4)
  kw = dict(weight_decay=0.5, mask=MASK, rectify=rectify)
  with_schedule = _trajectory(adabelief(schedule, **kw), steps=2)
  constant = _trajectory(adabelief(0.1, **kw), steps=2)
  for k in PARAMS:
    np.testing.assert_allclose(with_schedule[0][k], constant[0][k], rtol=1e-6)
  assert not np.allclose(with_schedule[1]["w"], constant[1]["w"])


@pytest.mark.parametrize("rectify", [False, True])
def test_inject_hyperparams_gives_the_same_updates(rectify):
  hp = dict(learning_rate=0.01, b1=0.8, b2=0.9, eps=1e-6, weight_decay=0.2)
  plain = _trajectory(adabelief(**hp, mask=MASK, rectify=rectify), steps=8)
  injected = _trajectory(
      optax.inject_hyperparams(adabelief)(**hp, mask=MASK, rectify=rectify), steps=8)
  for a, b in zip(plain, injected):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5)


@pytest.mark.parametrize("kwargs,name", [
    ({"learning_rate": -1e-3}, "learning_rate"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"b1": 1.0}, "b1"),
    ({"b2": -0.5}, "b2"),
    ({"eps": -1e-8}, "eps"),
    ({"eps_root": -1e-8}, "eps_root"),
])
def test_invalid_hyperparameters_are_rejected(kwargs, name):
  with pytest.raises(ValueError, match=name):
    adabelief(**kwargs)
