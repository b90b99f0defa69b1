"""COSMOS in float64 against a numpy float64 oracle, and its momentum modes.

The oracle is written here from the rule of lliu606/COSMOS `COSMOS_optim.py`
(matrix branch, PyTorch layout G = (out, in), the transpose of the Flax
kernel gradkit receives), with Newton–Schulz in float64, plus the
"momentum" mode's D = M / c1. Runs inside `jax.enable_x64`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradkit
from gradkit.transforms.cosmos import ScaleByCosmosState, scale_by_cosmos

RTOL = 1e-12
HP = dict(b1=0.8, b2=0.95, eps=1e-8, lr_ratio=0.3, gamma=0.5)


def _newton_schulz5(x, eps=1e-7):
  a, b, c = 3.4445, -4.7750, 2.0315
  if x.shape[0] > x.shape[1]:
    return _newton_schulz5(x.T, eps).T
  x = x / (np.linalg.norm(x) + eps)
  for _ in range(5):
    gram = x @ x.T
    x = a * x + b * (gram @ x) + c * (gram @ (gram @ x))
  return x


def _oracle(grads, r, b1, b2, eps, lr_ratio, gamma, nesterov, mode):
  """COSMOS directions u_t (the update is -lr u_t) on torch-layout (m, n) gradients."""
  m, n = grads[0].shape
  big_m, v = np.zeros((m, n)), np.zeros((m, r))
  out = []
  for t, g in enumerate(grads, start=1):
    c1, c2 = (1 - b1**t) / (1 - b1), 1 - b2**t
    big_m = b1 * big_m + g
    if t == 1:
      w, vecs = np.linalg.eigh(g.T @ g)
      p = vecs[:, np.argsort(w)[::-1][:r]]
      s = (1 - b2) * (g @ p).T @ (g @ p)
    else:
      p_old = p
      p, _ = np.linalg.qr(b2 * p @ s + (1 - b2) * g.T @ (g @ p))
      rot = p_old.T @ p
      s = b2 * rot.T @ s @ rot + (1 - b2) * (g @ p).T @ (g @ p)
    v = b2 * v + (1 - b2) * (g @ p) ** 2
    if nesterov:
      d = (g + b1 * big_m) / (1 + b1 * c1)
    else:
      d = big_m / c1 if mode == "momentum" else g / c1
    total = ((d @ p) / (np.sqrt(v) / math.sqrt(c2) + eps)) @ p.T
    if r < n:  # at r = n the complement is zero (rounding noise): no B
      ortho = _newton_schulz5(d - d @ p @ p.T)
      total = total + gamma * math.sqrt(m * n) * ortho / (np.linalg.norm(ortho) + eps)
    out.append(lr_ratio * math.sqrt(m * n) * total / (np.linalg.norm(total) + eps))
  return out


def _grads(seed, shape, steps):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=shape) * s for s in rng.uniform(0.5, 2.0, size=steps)]


def _run(tx, flax_grads):
  update = jax.jit(tx.update)
  state = tx.init(jnp.zeros(flax_grads[0].shape, jnp.float64))
  out = []
  for g in flax_grads:
    u, state = update(jnp.asarray(g, jnp.float64), state)
    assert u.dtype == jnp.float64
    out.append(np.asarray(u))
  return out


def _assert_close(got, want, rtol=RTOL):
  for t, (a, b) in enumerate(zip(got, want), start=1):
    err = np.max(np.abs(a - b)) / np.max(np.abs(b))
    assert err <= rtol, f"step {t}: {err:.3g} relative"


@pytest.mark.parametrize("nesterov,mode", [(True, "official"), (False, "official"),
                                           (False, "momentum")])
def test_float64_steps_match_a_float64_oracle(nesterov, mode):
  """Three steps of a (in, out) = (8, 12) kernel at rank 3, so the complement
  (Newton–Schulz) part is active. The gradient has full column rank: with
  fan-out < fan-in its complement would carry rounding-noise singular values,
  which Newton–Schulz's slope 3.4445 at 0 amplifies ~500x in 5 steps
  (measured up to 2.3e-12 there; here <= 1e-13, before the fix 1.6e-7)."""
  flax_grads = _grads(0, (8, 12), 3)
  with jax.enable_x64(True):
    got = _run(scale_by_cosmos(rank=3, nesterov=nesterov, momentum_mode=mode, **HP), flax_grads)
  want = _oracle([g.T for g in flax_grads], 3, nesterov=nesterov, mode=mode, **HP)
  _assert_close([u.T for u in got], want)


def test_momentum_mode_first_step_equals_official_and_second_reads_the_momentum():
  """Hand check: at t = 1, M = G and c1 = 1, so both modes give the same step;
  at t = 2, "momentum" is the official step of the gradient M_2 / c1_2."""
  flax_grads = _grads(1, (8, 12), 2)
  with jax.enable_x64(True):
    official = _run(scale_by_cosmos(rank=3, nesterov=False, **HP), flax_grads)
    momentum = _run(scale_by_cosmos(rank=3, nesterov=False, momentum_mode="momentum", **HP),
                    flax_grads)
  np.testing.assert_array_equal(official[0], momentum[0])
  assert np.max(np.abs(official[1] - momentum[1])) > 1e-3 * np.max(np.abs(official[1]))


def _with_noise_momentum(tx, flax_grads, seed):
  """The second step, from the true state and from one whose momentum is noise."""
  with jax.enable_x64(True):
    update = jax.jit(tx.update)
    state = tx.init(jnp.zeros(flax_grads[0].shape, jnp.float64))
    _, state = update(jnp.asarray(flax_grads[0]), state)
    noise = np.random.default_rng(seed).normal(size=state.momentum.shape) * 10.0
    noisy = state._replace(momentum=jnp.asarray(noise))
    clean_u, _ = update(jnp.asarray(flax_grads[1]), state)
    noisy_u, _ = update(jnp.asarray(flax_grads[1]), noisy)
    return np.asarray(clean_u), np.asarray(noisy_u)


def test_momentum_mode_reads_the_stored_momentum():
  clean, noisy = _with_noise_momentum(
      scale_by_cosmos(rank=3, nesterov=False, momentum_mode="momentum", **HP),
      _grads(2, (8, 12), 2), seed=3)
  assert np.max(np.abs(clean - noisy)) > 1e-2 * np.max(np.abs(clean))


def test_official_mode_without_nesterov_never_reads_the_stored_momentum():
  """Documents the official rule D = G / c1: the m x n buffer it keeps is
  never read, so replacing it by noise changes the step by exactly 0."""
  clean, noisy = _with_noise_momentum(
      scale_by_cosmos(rank=3, nesterov=False, **HP), _grads(2, (8, 12), 2), seed=3)
  np.testing.assert_array_equal(clean, noisy)


def test_optimizer_passes_momentum_mode_and_rejects_unknown_modes():
  """gradkit.create("cosmos", momentum_mode="momentum") reads the stored momentum."""
  params = {"block": {"kernel": jnp.zeros((8, 12))}}
  g1, g2 = ({"block": {"kernel": jnp.asarray(g, jnp.float32)}} for g in _grads(4, (8, 12), 2))
  tx = gradkit.create("cosmos", learning_rate=1.0, rank=3, nesterov=False,
                      momentum_mode="momentum", **HP)
  update = jax.jit(tx.update)
  _, state = update(g1, tx.init(params), params)

  def noisy(node):
    if isinstance(node, ScaleByCosmosState):
      return node._replace(momentum=jax.tree.map(lambda m: m + 10.0, node.momentum))
    return node

  is_cosmos = lambda x: isinstance(x, ScaleByCosmosState)  # noqa: E731
  assert any(is_cosmos(x) for x in jax.tree.leaves(state, is_leaf=is_cosmos))
  clean, _ = update(g2, state, params)
  moved, _ = update(g2, jax.tree.map(noisy, state, is_leaf=is_cosmos), params)
  assert np.max(np.abs(np.asarray(clean["block"]["kernel"]) - moved["block"]["kernel"])) > 1e-3
  with pytest.raises(ValueError, match="momentum_mode"):
    scale_by_cosmos(momentum_mode="nesterov")
  with pytest.raises(ValueError, match="momentum_mode"):
    gradkit.create("cosmos", momentum_mode="ema")
