"""GaLore, APOLLO (SVD projector) and FRUGAL past their projector refreshes, in float64.

Each oracle is the official optimizer's step re-derived here in numpy
float64 (galore_torch/adamw.py with galore_projector.py; apollo_torch/
apollo.py with svd_projector.py; frugal/proj_optimizer_templates.py with
frugal/adamw.py and galore_projector.py), run on the matrix as stored, with
update_proj_gap 2 over six steps, so three projectors (k = 0, 2, 4).

SVD signs: an SVD fixes each singular vector only up to sign, and which
sign a library returns is its own convention (LAPACK's, cuSOLVER's,
torch's). Within one projector period GaLore's and FRUGAL's steps do not
depend on it (Adam is odd in each coordinate, and each sign enters twice),
but across a refresh the carried moments were accumulated in the old
coordinates, so the trajectory does. The oracle therefore takes its own
singular vectors (numpy's float64 SVD), checks that each is gradkit's up to
sign (|<u, u'>| = 1), and adopts gradkit's sign before stepping. Each test
also checks that the oracle distinguishes: a flipped vector, or moments
reset instead of carried (kept instead of reset for FRUGAL), changes the
numbers by far more than the tolerance.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradkit
from gradkit.transforms.apollo import ScaleByApolloRatiosState
from gradkit.transforms.low_rank import ProjectLowRankState

RTOL = 1e-10  # relative to the largest entry of each step; float32 anywhere shows as >= 1e-8
STEPS, GAP = 6, 2


def _grads(shape, seed):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=shape) * s for s in rng.uniform(0.5, 2.0, size=STEPS)]


def _find(state, cls):
  is_node = lambda x: isinstance(x, cls)  # noqa: E731
  (found,) = [x for x in jax.tree.leaves(state, is_leaf=is_node) if is_node(x)]
  return found


def _run(tx, params, grads, cls):
  """gradkit's float64 updates and, per step, the projector it used (from the state)."""
  with jax.enable_x64(True):
    update = jax.jit(tx.update)
    p = {"w": jnp.asarray(params, jnp.float64)}
    state, out, projectors = tx.init(p), [], []
    for g in grads:
      u, state = update({"w": jnp.asarray(g, jnp.float64)}, state, p)
      assert u["w"].dtype == jnp.float64
      p = jax.tree.map(lambda a, b: a + b, p, u)
      out.append(np.asarray(u["w"]))
      projectors.append(np.asarray(_find(state, cls).projection.projectors["w"]))
  return out, projectors


def _svd_projector(g, rank, theirs, tall):
  """Top-`rank` right (tall: (r, n)) or left (wide: (m, r)) singular vectors of g,
  each checked to be gradkit's vector up to sign and given its sign."""
  u, _, vt = np.linalg.svd(g, full_matrices=False)
  ours = vt[:rank] if tall else u[:, :rank].T
  theirs = theirs if tall else theirs.T
  overlap = np.sum(ours * theirs, axis=1)
  np.testing.assert_allclose(np.abs(overlap), 1.0, atol=1e-9)
  ours = ours * np.sign(overlap)[:, None]
  return ours if tall else ours.T


def _down(g, p, tall):
  return g @ p.T if tall else p.T @ g


def _up(x, p, tall):
  return x @ p if tall else p @ x


def _assert_steps_close(got, want):
  for t, (a, b) in enumerate(zip(got, want), start=1):
    err = np.max(np.abs(a - b)) / np.max(np.abs(b))
    assert err <= RTOL, f"step {t}: {err:.3g} relative"


def _far(a, b):
  return max(np.max(np.abs(x - y)) / np.max(np.abs(y)) for x, y in zip(a, b)) > 1e-3


def _flip_second_projector(projectors, tall):
  """gradkit's projectors with the first vector of the k = 2 projector negated."""
  flipped = [p.copy() for p in projectors]
  for k in (2, 3):
    if tall:
      flipped[k][0] *= -1
    else:
      flipped[k][:, 0] *= -1
  return flipped


def _galore_oracle(grads, rank, theirs, *, lr, scale, carry=True, b1=0.9, b2=0.999, eps=1e-6):
  """galore_torch AdamW: P re-chosen when step % gap == 0; exp_avg, exp_avg_sq and
  the step count carried across refreshes; norm_grad = m / (sqrt(v) + eps)
  projected back times scale; p -= lr sqrt(1 - b2^t) / (1 - b1^t) * that."""
  out, m, v, t = [], 0.0, 0.0, 0
  for k, g in enumerate(grads):
    tall = g.shape[0] >= g.shape[1]
    if k % GAP == 0:
      p = _svd_projector(g, rank, theirs[k], tall)
      if not carry:
        m, v, t = 0.0, 0.0, 0
    r = _down(g, p, tall)
    t += 1
    m = b1 * m + (1 - b1) * r
    v = b2 * v + (1 - b2) * r * r
    step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
    out.append(-step_size * scale * _up(m / (np.sqrt(v) + eps), p, tall))
  return out


@pytest.mark.parametrize("shape", [(8, 5), (5, 8)])
def test_galore_after_refreshes_matches_the_official_rule(shape):
  grads, rank, lr, scale = _grads(shape, 0), 2, 0.1, 0.25
  tx = gradkit.create("galore", learning_rate=lr, rank=rank, update_proj_gap=GAP, scale=scale)
  got, theirs = _run(tx, np.zeros(shape), grads, ProjectLowRankState)
  want = _galore_oracle(grads, rank, theirs, lr=lr, scale=scale)
  _assert_steps_close(got, want)
  tall = shape[0] >= shape[1]
  assert _far(_galore_oracle(grads, rank, theirs, lr=lr, scale=scale, carry=False), want)
  flipped = _galore_oracle(grads, rank, _flip_second_projector(theirs, tall), lr=lr, scale=scale)
  assert _far(flipped, want)


def _apollo_oracle(grads, rank, theirs, *, lr, scale, b1=0.9, b2=0.999, eps=1e-6):
  """apollo_torch AdamW with proj="svd", proj_type "std", scale_type "channel":
  exp_avg, exp_avg_sq of R kept across refreshes; s = ||N|| / (||R|| + 1e-8)
  along norm_dim (1 for a tall G, 0 for a wide one); Fira's limiter (1.01,
  `limiter="official"`) on G * s; times sqrt(scale); p -= lr sqrt(1 - b2^t) / (1 - b1^t) * that."""
  out, m, v, last = [], 0.0, 0.0, None
  for k, g in enumerate(grads):
    tall = g.shape[0] >= g.shape[1]
    if k % GAP == 0:
      p = _svd_projector(g, rank, theirs[k], tall)
    r = _down(g, p, tall)
    t = k + 1
    m = b1 * m + (1 - b1) * r
    v = b2 * v + (1 - b2) * r * r
    n = m / (np.sqrt(v) + eps)
    axis = 0 if g.shape[0] < g.shape[1] else 1
    ratio = np.linalg.norm(n, axis=axis) / (np.linalg.norm(r, axis=axis) + 1e-8)
    scaled = g * (ratio[:, None] if axis == 1 else ratio)
    norm = np.linalg.norm(scaled)
    if last is None:
      last = norm
    else:
      limiter = max(norm / (last + 1e-8), 1.01) / 1.01
      scaled, last = scaled / limiter, norm / limiter
    step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
    out.append(-step_size * math.sqrt(scale) * scaled)
  return out


@pytest.mark.parametrize("shape", [(8, 5), (5, 8)])
def test_apollo_svd_after_refreshes_matches_the_official_rule(shape):
  grads, rank, lr, scale = _grads(shape, 1), 2, 0.1, 4.0
  tx = gradkit.create("apollo", learning_rate=lr, rank=rank, update_proj_gap=GAP, scale=scale,
                      projector="svd", limiter="official")
  got, theirs = _run(tx, np.zeros(shape), grads, ScaleByApolloRatiosState)
  want = _apollo_oracle(grads, rank, theirs, lr=lr, scale=scale)
  _assert_steps_close(got, want)
  tall = shape[0] >= shape[1]
  flipped = _apollo_oracle(grads, rank, _flip_second_projector(theirs, tall), lr=lr, scale=scale)
  assert _far(flipped, want)


def _frugal_oracle(grads, w0, density, theirs, *, lr, wd, reset, b1=0.9, b2=0.999, eps=1e-8):
  """FRUGAL GaloreAdamW (svd, "std", sign_sgd, both lr scales 1): rank
  round(density * projected side); P re-chosen when the Adam step count is a
  multiple of the gap (with reset_statistics it restarts at 0 there);
  p <- p (1 - lr wd); update = back(-lr / (1 - b1^t) m / (sqrt(v) / sqrt(1 - b2^t)
  + eps)) - lr sign(G - back(R))."""
  out, w, m, v, t = [], w0.copy(), 0.0, 0.0, 0
  for k, g in enumerate(grads):
    tall = g.shape[0] >= g.shape[1]
    rank = round(density * (g.shape[1] if tall else g.shape[0]))
    if t % GAP == 0:
      p = _svd_projector(g, rank, theirs[k], tall)
      if reset:
        m, v, t = 0.0, 0.0, 0
    new = w * (1 - lr * wd)
    t += 1
    r = _down(g, p, tall)
    m = b1 * m + (1 - b1) * r
    v = b2 * v + (1 - b2) * r * r
    adam = -lr / (1 - b1**t) * m / (np.sqrt(v) / math.sqrt(1 - b2**t) + eps)
    residual = g - _up(r, p, tall)
    assert np.min(np.abs(residual)) > 1e-8  # no sign is a rounding tie
    new = new + _up(adam, p, tall) - lr * np.sign(residual)
    out.append(new - w)
    w = new
  return out


@pytest.mark.parametrize("reset", [True, False])
@pytest.mark.parametrize("shape", [(8, 6), (6, 8)])
def test_frugal_after_refreshes_matches_the_official_rule(shape, reset):
  grads, density, lr, wd = _grads(shape, 2), 0.5, 0.1, 0.01
  w0 = np.random.default_rng(3).normal(size=shape)
  tx = gradkit.create("frugal", learning_rate=lr, density=density, update_gap=GAP,
                      weight_decay=wd, reset_statistics=reset)
  got, theirs = _run(tx, w0, grads, ProjectLowRankState)
  want = _frugal_oracle(grads, w0, density, theirs, lr=lr, wd=wd, reset=reset)
  _assert_steps_close(got, want)
  other = _frugal_oracle(grads, w0, density, theirs, lr=lr, wd=wd, reset=not reset)
  assert _far(other, want)
