"""Oracles for transforms/cosmos.py (`scale_by_cosmos`).

The oracle is lliu606/COSMOS `COSMOS_optim.py`'s matrix branch written out in
numpy float64 on the PyTorch layout (out, in) — gradkit receives the Flax
layout (in, out), i.e. the transpose — with its Newton–Schulz in float64
rather than bfloat16; plus the sheet's literal numbers (oracles 1-4).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradkit
from gradkit.transforms.cosmos import cosmos_rank, scale_by_cosmos
from oracles import COSMOS_G1 as G1
from oracles import COSMOS_G2 as G2
from oracles import COSMOS_STEP1 as STEP1
from oracles import COSMOS_STEP2 as STEP2


def _ns5(x, eps=1e-7):
  a, b, c = 3.4445, -4.7750, 2.0315
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  x = x / (np.linalg.norm(x) + eps)
  for _ in range(5):
    gram = x @ x.T
    x = a * x + b * gram @ x + c * gram @ gram @ x
  return x.T if tall else x


class OfficialCosmos:
  """The official matrix branch on torch-layout (m, n) gradients, float64.

  `step(G)` returns the direction u, the update being -lr u. With
  `complement=False` (rank = n) B is left out, as the sheet's oracle 4 says
  it is zero.
  """

  def __init__(self, m, n, r, b1=0.9, b2=0.999, eps=1e-8, ratio=0.1, gamma=0.2,
               nesterov=True, complement=True):
    self.b1, self.b2, self.eps, self.ratio, self.gamma = b1, b2, eps, ratio, gamma
    self.nesterov, self.complement, self.r = nesterov, complement, r
    self.M, self.V, self.t = np.zeros((m, n)), np.zeros((m, r)), 0

  def step(self, G):
    b1, b2, eps = self.b1, self.b2, self.eps
    self.t += 1
    t = self.t
    c1, c2 = (1 - b1**t) / (1 - b1), 1 - b2**t
    self.M = b1 * self.M + G
    if t == 1:
      U, _, _ = np.linalg.svd(G.T @ G)
      self.P = U[:, :self.r]
      self.S = (1 - b2) * self.P.T @ G.T @ G @ self.P
    else:
      old = self.P
      self.P, _ = np.linalg.qr(b2 * self.P @ self.S + (1 - b2) * G.T @ (G @ self.P))
      T = old.T @ self.P
      self.S = b2 * T.T @ self.S @ T + (1 - b2) * (G @ self.P).T @ (G @ self.P)
    GP = G @ self.P
    self.V = b2 * self.V + (1 - b2) * GP**2
    D = (G + b1 * self.M) / (1 + b1 * c1) if self.nesterov else G / c1
    DP = D @ self.P
    out = (DP / (np.sqrt(self.V) / math.sqrt(c2) + eps)) @ self.P.T
    scale = math.sqrt(G.size)
    if self.complement:
      B = _ns5(D - DP @ self.P.T)
      out = out + self.gamma * scale * B / (np.linalg.norm(B) + eps)
    return self.ratio * scale * out / (np.linalg.norm(out) + eps)


def _directions(tx, grads_torch, dtype=jnp.float32):
  """Runs `tx` (jitted) on Flax-layout transposes; returns torch-layout outputs."""
  update = jax.jit(tx.update)
  state = tx.init(jnp.zeros(grads_torch[0].T.shape, dtype))
  out = []
  for g in grads_torch:
    u, state = update(jnp.asarray(g.T, dtype), state)
    out.append(np.asarray(u).T)
  return out, state


def test_first_two_steps_are_the_sheet_oracles():
  (u1, u2), state = _directions(scale_by_cosmos(rank=2), [G1, G2])
  np.testing.assert_allclose(-u1, STEP1, atol=5e-5)
  np.testing.assert_allclose(-u2, STEP2, atol=5e-5)
  # Oracle 1: the step's Frobenius norm is lr * lr_ratio * sqrt(mn).
  for u in (u1, u2):
    assert np.linalg.norm(u) == pytest.approx(0.4898979, abs=1e-6)
  assert int(state.count) == 2


def test_numpy_oracle_reproduces_the_sheet():
  oracle = OfficialCosmos(4, 6, 2)
  np.testing.assert_allclose(-oracle.step(G1), STEP1, atol=2e-7)
  np.testing.assert_allclose(-oracle.step(G2), STEP2, atol=2e-7)


@pytest.mark.parametrize("m,n,r,nesterov", [(5, 8, 3, True), (9, 4, 2, True), (5, 8, 3, False)])
def test_trajectory_matches_the_official_rule(m, n, r, nesterov):
  """Five steps in float64 against the float64 oracle. The eigenbasis update
  (QR of a power step) amplifies rounding by up to ~3e7 over a trajectory,
  so a float32 run is only within ~1e-3 of it, and where depends on the
  machine (a fresh clone on a loaded 2-core CPU measured 2.1e-4 at one
  entry); a float64 rounding of 1.1e-16 so amplified stays below 1e-8.
  Newton-Schulz divides by ||X||_F + eps min(1, ||X||_F) (scale free below
  norm 1, transforms/newton_schulz.py), the official code by ||X||_F + eps:
  where the complement's norm is below 1 they differ by ~1e-7 relative
  (measured 5.8e-8), within 1e-6."""
  rng = np.random.default_rng(m * n + r)
  grads = [rng.normal(size=(m, n)) * s for s in rng.uniform(0.2, 3.0, size=5)]
  hp = dict(b1=0.8, b2=0.9, eps=1e-8, gamma=0.5, nesterov=nesterov)
  oracle = OfficialCosmos(m, n, r, ratio=0.3, **hp)
  with jax.enable_x64(True):
    ours, _ = _directions(scale_by_cosmos(lr_ratio=0.3, rank=r, **hp), grads, jnp.float64)
  for u, g in zip(ours, grads):
    np.testing.assert_allclose(u, oracle.step(g), rtol=0, atol=1e-6)


@pytest.mark.parametrize("rank", [4, 100])
def test_full_rank_basis_leaves_no_complement(rank):
  # Torch (6, 4): n = 4, so any rank >= 4 is the full basis and B = 0; the
  # step is the normalized subspace part alone, whatever gamma is.
  rng = np.random.default_rng(5)
  grads = [rng.normal(size=(6, 4)) for _ in range(3)]
  oracle = OfficialCosmos(6, 4, 4, complement=False)
  ours, state = _directions(scale_by_cosmos(rank=rank), grads)
  no_gamma, _ = _directions(scale_by_cosmos(rank=rank, gamma=0.0), grads)
  for u, v, g in zip(ours, no_gamma, grads):
    np.testing.assert_allclose(u, oracle.step(g), atol=1e-4)
    np.testing.assert_allclose(u, v, atol=1e-6)
  assert state.basis.shape == (4, 4)


def test_step_norm_does_not_depend_on_the_gradient_scale():
  rng = np.random.default_rng(8)
  grads = [rng.normal(size=(7, 10)) * s for s in (1e-3, 1.0, 1e3, 0.1)]
  ours, _ = _directions(scale_by_cosmos(rank=3, lr_ratio=0.2), grads)
  for u in ours:
    assert np.linalg.norm(u) == pytest.approx(0.2 * math.sqrt(70), rel=1e-5)


@pytest.mark.parametrize("shape,rank,expected", [
    ((4, 6), 64, 4),          # torch (6, 4): m >= n, r <= n = 4
    ((32, 48), 8, 8),
    ((6, 4), 64, 3),          # torch (4, 6): m < n, r <= m - 1
    ((48, 32), 64, 31),
    ((3, 3, 2, 16), 64, 15),  # conv view (18, 16): n = 18, m = 16
    ((9, 1), 64, 1),
])
def test_rank_is_clamped_per_leaf(shape, rank, expected):
  assert cosmos_rank(shape, rank) == expected


@pytest.mark.parametrize("shape,r", [((6, 10), 4), ((3, 3, 2, 24), 5), ((40, 8), 7)])
def test_state_shapes_and_bytes(shape, r):
  tx = scale_by_cosmos(rank=r)
  params = {"k": jnp.zeros(shape, jnp.float32)}
  state = tx.init(params)
  n, m = math.prod(shape[:-1]), shape[-1]
  r = cosmos_rank(shape, r)
  assert state.momentum["k"].shape == (n, m)
  assert state.basis["k"].shape == (n, r)
  assert state.covariance["k"].shape == (r, r)
  assert state.second_moment["k"].shape == (m, r)
  assert gradkit.state_nbytes(state) == 4 * (m * n + (m + n) * r + r * r) + 4
  bf16 = tx.init({"k": jnp.zeros(shape, jnp.bfloat16)})
  assert gradkit.state_nbytes(bf16) == 2 * (m * n + (m + n) * r + r * r) + 4


def test_conv_kernel_uses_its_fan_in_by_out_view():
  rng = np.random.default_rng(2)
  kernel_grads = [rng.normal(size=(3, 3, 2, 5)) for _ in range(3)]
  tx = scale_by_cosmos(rank=3)
  update = jax.jit(tx.update)
  state = tx.init(jnp.zeros((3, 3, 2, 5)))
  oracle = OfficialCosmos(5, 18, 3)
  for g in kernel_grads:
    u, state = update(jnp.asarray(g, jnp.float32), state)
    assert u.shape == (3, 3, 2, 5)
    np.testing.assert_allclose(np.asarray(u).reshape(18, 5).T, oracle.step(g.reshape(18, 5).T),
                               atol=1e-4)


def test_bf16_updates_keep_their_dtype_and_follow_float32():
  rng = np.random.default_rng(4)
  grads = [rng.normal(size=(8, 6)) for _ in range(2)]
  tx = scale_by_cosmos(rank=2)
  update = jax.jit(tx.update)
  s16 = tx.init(jnp.zeros((6, 8), jnp.bfloat16))
  ours32, _ = _directions(tx, grads)
  for g, ref in zip(grads, ours32):
    u, s16 = update(jnp.asarray(g.T, jnp.bfloat16), s16)
    assert u.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(s16)[1:])
    np.testing.assert_allclose(np.asarray(u, np.float32).T, ref, atol=3e-2)


def test_vector_leaf_is_rejected_with_a_clear_error():
  tx = scale_by_cosmos()
  with pytest.raises(ValueError, match=r"scale_by_cosmos acts on matrices.*\['b'\]"):
    tx.init({"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)})
  state = tx.init({"w": jnp.zeros((4, 3))})
  with pytest.raises(ValueError, match=r"acts on matrices.*\['w'\]"):
    tx.update({"w": jnp.zeros(3)}, state._replace(
        momentum={"w": jnp.zeros(3)}, basis={"w": jnp.zeros((3, 1))},
        covariance={"w": jnp.zeros((1, 1))}, second_moment={"w": jnp.zeros((3, 1))}))


@pytest.mark.parametrize("hp", [
    {"rank": 0}, {"rank": 2.5}, {"rank": True}, {"ns_steps": 0}, {"b1": 1.0}, {"b2": -0.1},
    {"eps": -1e-8}, {"lr_ratio": -0.1}, {"gamma": -0.2},
])
def test_invalid_hyperparameters_raise(hp):
  with pytest.raises(ValueError):
    scale_by_cosmos(**hp)
