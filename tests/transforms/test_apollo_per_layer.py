"""APOLLO with per-layer rank, refresh period and scale, as the official parameter groups.

The official optimizer (zhuhanqing/APOLLO, apollo_torch/apollo.py) reads
rank, update_proj_gap and scale from each parameter's group; here they are
rules fn(path, shape). Oracle: that step re-derived in numpy float64 for
each leaf with its own values (SVD projector, svd_projector.py "std";
channel ratios; Fira's limiter, `limiter="official"`; sqrt(scale); Adam's
step-size correction).
Each singular vector takes gradkit's sign after the oracle checks it is
gradkit's up to sign (the moments are carried across refreshes, so the
trajectory depends on the SVD's sign convention).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.transforms.apollo import ScaleByApolloRatiosState, scale_by_apollo

SHAPES = {"attn": (8, 5), "mlp": (6, 9)}
GROUPS = {"attn": (1, 1, 4.0), "mlp": (3, 3, 1.0)}  # rank, update_proj_gap, scale


def _rule(i):
  return lambda path, shape: GROUPS["attn" if "attn" in jax.tree_util.keystr(path) else "mlp"][i]


def _find(state):
  is_node = lambda x: isinstance(x, ScaleByApolloRatiosState)  # noqa: E731
  (found,) = [x for x in jax.tree.leaves(state, is_leaf=is_node) if is_node(x)]
  return found


def _run(tx, grads):
  with jax.enable_x64(True):
    params = {k: jnp.zeros(s, jnp.float64) for k, s in SHAPES.items()}
    update, state = jax.jit(tx.update), tx.init(params)
    got, theirs = [], []
    for g in grads:
      u, state = update(jax.tree.map(jnp.asarray, g), state, params)
      got.append(jax.tree.map(np.asarray, u))
      theirs.append(jax.tree.map(np.asarray, _find(state).projection.projectors))
  return got, theirs, state


def _apollo_leaf_oracle(grads, rank, gap, scale, theirs, lr, b1=0.9, b2=0.999, eps=1e-6):
  out, m, v, last = [], 0.0, 0.0, None
  tall = grads[0].shape[0] >= grads[0].shape[1]
  for k, g in enumerate(grads):
    if k % gap == 0:
      u, _, vt = np.linalg.svd(g, full_matrices=False)
      frame = vt[:rank] if tall else u[:, :rank].T
      ref = theirs[k] if tall else theirs[k].T
      overlap = np.sum(frame * ref, axis=1)
      np.testing.assert_allclose(np.abs(overlap), 1.0, atol=1e-9)
      frame = frame * np.sign(overlap)[:, None]
      p = frame if tall else frame.T
    r = g @ p.T if tall else p.T @ g
    m = b1 * m + (1 - b1) * r
    v = b2 * v + (1 - b2) * r * r
    n = m / (np.sqrt(v) + eps)
    axis = 1 if tall else 0  # official norm_dim
    ratio = np.linalg.norm(n, axis=axis) / (np.linalg.norm(r, axis=axis) + 1e-8)
    scaled = g * (ratio[:, None] if tall else ratio)
    norm = np.linalg.norm(scaled)
    if last is None:
      last = norm
    else:
      limiter = max(norm / (last + 1e-8), 1.01) / 1.01
      scaled, last = scaled / limiter, norm / limiter
    t = k + 1
    out.append(-lr * math.sqrt(1 - b2**t) / (1 - b1**t) * math.sqrt(scale) * scaled)
  return out


def _grads(seed):
  rng = np.random.default_rng(seed)
  return [{k: rng.normal(size=s) * c for k, s in SHAPES.items()} for c in (1.0, 0.5, 2.0, 1.5)]


@pytest.mark.parametrize("build", ["transform", "factory"])
def test_each_leaf_follows_its_own_groups_rule(build):
  lr, grads = 0.1, _grads(0)
  rules = dict(rank=_rule(0), update_proj_gap=_rule(1), scale=_rule(2))
  if build == "transform":
    tx = optax.chain(scale_by_apollo(rules["rank"], rules["update_proj_gap"],
                                     scale=rules["scale"], projector="svd", limiter="official"),
                     optax.scale(-lr))
  else:  # the registered factory passes the rules through unchanged
    tx = gradkit.create("apollo", learning_rate=lr, projector="svd", limiter="official",
                        param_labels={"attn": "matrix", "mlp": "matrix"}, **rules)
  got, theirs, state = _run(tx, grads)
  ratios = _find(state)
  assert ratios.projection.projectors["attn"].shape == (1, 5)  # right, rank 1
  assert ratios.projection.projectors["mlp"].shape == (6, 3)  # left, rank 3
  assert ratios.mu["attn"].shape == (8, 1) and ratios.mu["mlp"].shape == (3, 9)
  for key, (rank, gap, scale) in GROUPS.items():
    want = _apollo_leaf_oracle([g[key] for g in grads], rank, gap, scale,
                               [t[key] for t in theirs], lr)
    for t, (a, b) in enumerate(zip(got, want), start=1):
      err = np.max(np.abs(a[key] - b)) / np.max(np.abs(b))
      assert err <= 1e-10, f"{key}, step {t}: {err:.3g} relative"
  np.testing.assert_array_equal(theirs[2]["mlp"], theirs[0]["mlp"])
  assert np.max(np.abs(np.abs(theirs[1]["attn"]) - np.abs(theirs[0]["attn"]))) > 1e-2


def test_gaussian_projectors_take_each_leafs_rank_and_period():
  tx = scale_by_apollo(_rule(0), _rule(1))
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  state, update = tx.init(params), jax.jit(tx.update)
  seen = []
  for g in _grads(1)[:4]:
    _, state = update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state)
    seen.append(jax.tree.map(np.asarray, _find(state).projection.projectors))
  assert seen[0]["attn"].shape == (1, 5) and seen[0]["mlp"].shape == (6, 3)
  assert all(np.max(np.abs(seen[k + 1]["attn"] - seen[k]["attn"])) > 1e-3 for k in range(3))
  np.testing.assert_array_equal(seen[2]["mlp"], seen[0]["mlp"])
  assert np.max(np.abs(seen[3]["mlp"] - seen[0]["mlp"])) > 1e-3


def test_a_rule_giving_a_bad_scale_or_period_names_the_leaf():
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  with pytest.raises(ValueError, match=r"scale of leaf \['attn'\]"):
    scale_by_apollo(2, scale=lambda path, shape: 0.0).init(params)
  with pytest.raises(ValueError, match=r"update_every of leaf \['attn'\]"):
    scale_by_apollo(2, lambda path, shape: 0).init(params)
