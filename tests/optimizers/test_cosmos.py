"""Tests of the `cosmos` recipe: the sheet's steps, AdamW on the other leaves.

Oracles: the COSMOS sheet's literal first two steps (lr = 1, rank 2, class
defaults), `optax.adamw`, and the official code's non-COSMOS Adam branch
written out in numpy float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.cosmos import cosmos
from oracles import COSMOS_G1 as G1
from oracles import COSMOS_G2 as G2
from oracles import COSMOS_STEP1 as STEP1
from oracles import COSMOS_STEP2 as STEP2
from trajectories import run_updates, run_updates_and_state

RNG = np.random.default_rng(21)
PARAMS = {"w": jnp.asarray(RNG.normal(size=(6, 4)), jnp.float32),
          "b": jnp.asarray(RNG.normal(size=(4,)), jnp.float32),
          "s": jnp.asarray(0.7, jnp.float32)}
GRADS = [{"w": jnp.asarray(g.T, jnp.float32),
          "b": jnp.asarray(RNG.normal(size=(4,)), jnp.float32),
          "s": jnp.asarray(RNG.normal(), jnp.float32)} for g in (G1, G2)]


def _fallback_leaves(history):
  return [{k: p[k] for k in ("b", "s")} for p in history]


@pytest.mark.parametrize("lr,wd", [(1.0, 0.0), (0.5, 0.1)])
def test_matrix_steps_are_the_sheet_oracles_and_other_leaves_adamw(lr, wd):
  ours = run_updates(cosmos(learning_rate=lr, rank=2, weight_decay=wd), PARAMS, GRADS)
  w = np.asarray(PARAMS["w"], np.float64)
  for step, p in zip((STEP1, STEP2), ours):
    # p <- p - lr (d + wd p) with d = -STEP (the sheet's change at lr = 1).
    w = w + lr * step.T - lr * wd * w
    np.testing.assert_allclose(p["w"], w, atol=5e-5)
  theirs = run_updates(optax.adamw(lr, 0.9, 0.999, 1e-8, weight_decay=wd), PARAMS, GRADS)
  for a, b in zip(_fallback_leaves(ours), _fallback_leaves(theirs)):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)


def _official_adam_branch(p, grads, lr, b1, b2, eps, wd):
  """COSMOS_optim.py's branch for non-COSMOS parameters (hard-coded 0.1, 0.9)."""
  m, v, out = 0 * p, 0 * p, []
  for t, g in enumerate(grads, start=1):
    m = b1 * m + 0.1 * g
    v = b2 * v + (1 - b2) * g**2
    denom = np.sqrt(v) / math.sqrt(1 - b2**t) + eps
    p = p * (1 - lr * wd) - lr / (1 - 0.9**t) * m / denom
    out.append(p)
  return out


def test_fallback_equals_the_official_adam_branch_at_the_default_b1():
  rng = np.random.default_rng(1)
  p0 = rng.normal(size=(5,))
  grads = [rng.normal(size=(5,)) * s for s in rng.uniform(0.1, 2.0, size=6)]
  expected = _official_adam_branch(p0, grads, 0.01, 0.9, 0.99, 1e-8, 0.1)
  tx = cosmos(learning_rate=0.01, b2=0.99, weight_decay=0.1)
  ours = run_updates(tx, {"b": jnp.asarray(p0, jnp.float32)},
                     [{"b": jnp.asarray(g, jnp.float32)} for g in grads])
  for p, e in zip(ours, expected):
    np.testing.assert_allclose(p["b"], e, rtol=1e-5, atol=1e-6)


def test_default_labels_send_embedding_and_head_to_adamw():
  params = {"embed": {"embedding": jnp.asarray(RNG.normal(size=(12, 4)), jnp.float32)},
            "lm_head": {"kernel": jnp.asarray(RNG.normal(size=(4, 12)), jnp.float32)},
            "mlp": {"kernel": jnp.asarray(RNG.normal(size=(4, 8)), jnp.float32)}}
  grads = [jax.tree.map(lambda p: jnp.asarray(RNG.normal(size=p.shape), jnp.float32), params)
           for _ in range(3)]
  ours = run_updates(cosmos(learning_rate=1e-2, b1=0.95), params, grads)
  theirs = run_updates(optax.adamw(1e-2, 0.95, 0.999, 1e-8, weight_decay=0.0), params, grads)
  previous = params
  for a, b in zip(ours, theirs):
    for k in ("embed", "lm_head"):
      jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a[k], b[k])
    # The matrix leaf moves by lr * lr_ratio * sqrt(mn) in Frobenius norm.
    step = np.linalg.norm(a["mlp"]["kernel"] - previous["mlp"]["kernel"])
    assert step == pytest.approx(1e-2 * 0.1 * math.sqrt(32), rel=1e-4)
    previous = a


def test_state_bytes_follow_the_formula():
  shapes = {"attn": (32, 48), "mlp": (48, 20), "conv": (3, 3, 4, 16), "bias": (48,),
            "embed_tokens": (100, 32)}
  params = {k: jnp.zeros(s, jnp.float32) for k, s in shapes.items()}
  state = jax.eval_shape(cosmos(rank=8).init, params)
  matrix = 0
  for s in (shapes["attn"], shapes["mlp"], shapes["conv"]):
    n, m = math.prod(s[:-1]), s[-1]
    matrix += m * n + (m + n) * 8 + 8 * 8
  fallback = 2 * (48 + 100 * 32)  # Adam's mu and nu
  # One int32 count per label's direction (matrix, embedding, head, vector).
  assert gradkit.state_nbytes(state) == 4 * (matrix + fallback) + 4 * 4


def test_bf16_params_keep_their_dtype():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  grads = [jax.tree.map(lambda g: g.astype(jnp.bfloat16), g) for g in GRADS]
  history, state = run_updates_and_state(cosmos(learning_rate=1.0, rank=2), params, grads)
  for p in history:
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p))
  w = np.asarray(PARAMS["w"], np.float64) + STEP1.T + STEP2.T
  np.testing.assert_allclose(np.asarray(history[-1]["w"], np.float32), w, atol=5e-2)


def test_vector_labelled_matrix_raises_a_clear_error():
  tx = cosmos(param_labels={"w": "matrix", "b": "matrix", "s": "vector"})
  with pytest.raises(ValueError, match=r"acts on matrices.*\['b'\]"):
    tx.init(PARAMS)


@pytest.mark.parametrize("hp", [
    {"learning_rate": -1e-3}, {"b1": 1.0}, {"b2": -0.1}, {"eps": -1.0}, {"lr_ratio": -0.1},
    {"rank": 0}, {"gamma": -0.2}, {"weight_decay": -0.1},
])
def test_invalid_hyperparameters_raise(hp):
  with pytest.raises(ValueError):
    cosmos(**hp)
