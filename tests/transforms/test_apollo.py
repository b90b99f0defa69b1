"""Oracles for transforms/apollo.py: the APOLLO sheet's numbers, closed forms,
a numpy float64 port of the update rule, the limiter and the memory bound.

The sheet's oracles use an explicit projector P: tests install it in the
state with the step count at 1 and a long refresh period, so no refresh
replaces it. Everything else reads the projectors the transform drew from
its state and feeds them to the numpy oracle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradkit
from gradkit.transforms.apollo import (
    limit_norm_growth,
    scale_by_apollo,
    scale_by_apollo_ratios,
)

B1, B2 = 0.9, 0.999
G1 = np.array([[1, 2, 0], [0, -1, 3], [2, 0, 1], [-1, 1, 1]], np.float64)
G2 = np.array([[0, 1, 1], [2, -1, 0], [1, 1, 1], [0, -2, 1]], np.float64)
P = np.array([[0.5, -1.0, 0.25], [1.0, 0.5, -0.5]], np.float64)


def _with_projector(state, projector):
  """The chain's state with `projector` installed and one step counted."""
  ratios = state[0]
  projection = ratios.projection._replace(
      projectors=jnp.asarray(projector, jnp.float32), count=jnp.ones([], jnp.int32))
  return (ratios._replace(projection=projection), *state[1:])


def _run(tx, grads, projector=None):
  """The transform's outputs (and final state) over `grads`, jitted."""
  update = jax.jit(tx.update)
  state = tx.init(jax.tree.map(jnp.zeros_like, grads[0]))
  if projector is not None:
    state = _with_projector(state, projector)
  out = []
  for g in grads:
    u, state = update(g, state)
    out.append(jax.device_get(u))
  return out, state


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _step_size(t):
  return np.sqrt(1 - B2**t) / (1 - B1**t)


def test_sheet_oracle_1_channel_wise_two_steps():
  (u1, u2), _ = _run(scale_by_apollo(2, 100), [_f32(G1), _f32(G2)], projector=P)
  step1 = [[-0.565675, -1.13135, 0], [0, 0.5321431, -1.5964292],
           [-1.4485383, 0, -0.7242692], [0.8834271, -0.8834271, -0.8834271]]
  step2 = [[0, -1.1361267, -1.1361267], [-0.5968958, 0.2984479, 0],
           [-0.789696, -0.789696, -0.789696], [0, 0.5724725, -0.2862362]]
  np.testing.assert_allclose(-u1, step1, rtol=3e-5, atol=1e-6)
  np.testing.assert_allclose(-u2, step2, rtol=3e-5, atol=1e-6)


def test_first_step_closed_form_rows_scaled_by_sqrt_r_over_projected_norm():
  """eps = 0: row i of the step is sqrt(r) / ||R[i, :]|| * G[i, :]."""
  (u,), _ = _run(scale_by_apollo(2, 100, eps=0.0), [_f32(G1)], projector=P)
  r = G1 @ P.T
  np.testing.assert_allclose(u, np.sqrt(2) / np.linalg.norm(r, axis=1, keepdims=True) * G1,
                             rtol=1e-5)


def test_wide_gradient_gives_the_transposed_step():
  """G1^T (wide) with P^T: channels become columns; the step is transposed."""
  (tall,), _ = _run(scale_by_apollo(2, 100), [_f32(G1)], projector=P)
  (wide,), _ = _run(scale_by_apollo(2, 100), [_f32(G1.T)], projector=P.T)
  np.testing.assert_allclose(wide, tall.T, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale_front", [False, True])
def test_sheet_oracle_2_mini_tensor_wise(scale_front):
  tx = scale_by_apollo(1, 100, granularity="tensor", scale=128.0, scale_front=scale_front)
  (u1, u2), _ = _run(tx, [_f32(G1), _f32(G2)], projector=P[:1])
  np.testing.assert_allclose(-u1, -7.7896571 * G1, rtol=3e-5, atol=1e-6)
  np.testing.assert_allclose(-u2, -5.4383018 * G2, rtol=3e-5, atol=1e-6)


def test_mini_first_step_closed_form():
  """eps = 0: s = sqrt(scale) * sqrt(#entries of R) / ||R||_F, #entries = max(m, n)."""
  tx = scale_by_apollo(1, 100, granularity="tensor", scale=128.0, eps=0.0)
  (u,), _ = _run(tx, [_f32(G1)], projector=P[:1])
  expected = np.sqrt(128.0) * np.sqrt(4) / np.linalg.norm(G1 @ P[:1].T) * G1
  np.testing.assert_allclose(u, expected, rtol=1e-5)


def test_sheet_oracle_3_limiter_grows_norms_by_exactly_one_percent():
  grads = [_f32(G1), _f32(3 * G1), _f32(3 * G1)]
  out, _ = _run(scale_by_apollo(2, 100), grads, projector=P)
  norms = [np.linalg.norm(u) / _step_size(t) for t, u in enumerate(out, start=1)]
  np.testing.assert_allclose(norms, [9.6932258, 9.7901581, 9.8880597], rtol=3e-5)
  np.testing.assert_allclose(np.array(norms[1:]) / norms[:-1], 1.01, rtol=1e-5)
  unlimited, _ = _run(scale_by_apollo(2, 100, limit_growth=None), grads, projector=P)
  np.testing.assert_allclose(np.linalg.norm(unlimited[2]) / _step_size(3), 14.4812336,
                             rtol=3e-5)


def _limit(norm, a, gamma, limiter):
  """One step of the limiter in float64: (divisor, next reference); a is None at the start.

  "official" is Fira's and APOLLO's code (the reference is the last limited
  norm); "decaying_max" keeps max(limited norm, a / gamma) and lets a step
  pass when the reference is 0 or not finite.
  """
  if a is None or (limiter == "decaying_max" and not (np.isfinite(a) and a > 0)):
    return 1.0, norm
  limit = max(norm / (a + 1e-8), gamma) / gamma
  limited = norm / limit
  return limit, limited if limiter == "official" else max(limited, a / gamma)


def _limiter_oracle(norm_sequences, gamma, limiter):
  """The limiter on per-leaf norms, float64: the factor that divides each update."""
  out = []
  for norms in norm_sequences:
    factors, a = [], None
    for n in norms:
      limit, a = _limit(n, a, gamma, limiter)
      factors.append(limit)
    out.append(factors)
  return out


@pytest.mark.parametrize("limiter", ["decaying_max", "official"])
def test_limit_norm_growth_keeps_per_leaf_memory(limiter):
  x = np.array([3.0, 4.0])
  y = np.arange(1.0, 7.0).reshape(2, 3)
  multipliers = {"x": [1.0, 5.0, 0.5, 0.6, 0.6], "y": [2.0, 1.0, 1.5, 1.5, 0.1]}
  grads = [{"x": _f32(mx * x), "y": _f32(my * y)}
           for mx, my in zip(multipliers["x"], multipliers["y"])]
  out, state = _run(limit_norm_growth(1.05, limiter=limiter), grads)
  factors = dict(zip("xy", _limiter_oracle(
      [np.array(multipliers["x"]) * 5.0, np.array(multipliers["y"]) * np.linalg.norm(y)],
      1.05, limiter)))
  assert factors["x"][1] > 1 and factors["x"][2] == 1 and factors["y"][1] == 1
  for t, u in enumerate(out):
    np.testing.assert_allclose(u["x"], multipliers["x"][t] * x / factors["x"][t], rtol=1e-6)
    np.testing.assert_allclose(u["y"], multipliers["y"][t] * y / factors["y"][t], rtol=1e-6)
  if limiter == "official":
    np.testing.assert_allclose(state.norm["x"], np.linalg.norm(out[-1]["x"]), rtol=1e-6)
  assert int(state.count) == len(grads)


def _norms_after_a_faulted_step(limiter, fault, gamma=1.01, steps=6):
  """Output norms of the limiter over unit-norm updates with `fault` x the update at step 2."""
  tx = limit_norm_growth(gamma, limiter=limiter)
  grads = [_f32(np.array([0.6, 0.8]) * (fault if t == 1 else 1.0)) for t in range(steps)]
  out, state = _run(tx, grads)
  return np.array([np.linalg.norm(u) for u in out]), state


@pytest.mark.parametrize("fault", [0.0, 1e-30])
def test_official_limiter_locks_after_a_zero_or_tiny_step(fault):
  # Documented behaviour of Fira's and APOLLO's rule: the reference becomes
  # the tiny norm, so the next update is capped at gamma (tiny + 1e-8).
  norms, _ = _norms_after_a_faulted_step("official", fault)
  (want,) = _limiter_oracle([[1.0, fault, 1.0, 1.0, 1.0, 1.0]], 1.01, "official")
  np.testing.assert_allclose(norms[2:], 1.0 / np.array(want[2:]), rtol=1e-5)
  assert np.all(norms[2:] < 1e-7)


@pytest.mark.parametrize("fault", [0.0, 1e-30])
def test_default_limiter_lets_the_next_step_through_after_a_zero_or_tiny_step(fault):
  norms, state = _norms_after_a_faulted_step("decaying_max", fault)
  assert norms[1] <= 1e-29
  np.testing.assert_allclose(norms[[0, 2, 3, 4, 5]], 1.0, rtol=1e-6)
  np.testing.assert_allclose(state.norm, 1.0, rtol=1e-6)


def test_default_limiter_reference_falls_by_at_most_gamma_per_step():
  # After a drop to 1e-3 the reference decays 1, 1/1.01, 1/1.01^2 instead of
  # following the drop, so the return to 1 is capped at 1.01 / 1.01^2 only.
  grads = [_f32([1.0]), _f32([1e-3]), _f32([1e-3]), _f32([1.0]), _f32([2.0])]
  out, state = _run(limit_norm_growth(1.01), grads)
  norms = [float(np.abs(u[0])) for u in out]
  np.testing.assert_allclose(norms[:3], [1.0, 1e-3, 1e-3], rtol=1e-6)
  np.testing.assert_allclose(norms[3], 1.0 / 1.01, rtol=1e-6)  # 1.01 * (1 / 1.01^2)
  np.testing.assert_allclose(norms[4], 1.0, rtol=1e-6)  # 1.01 * (1 / 1.01)
  np.testing.assert_allclose(state.norm, 1.0, rtol=1e-6)


@pytest.mark.parametrize("limiter", ["decaying_max", "official"])
def test_limiter_norms_do_not_overflow_for_a_huge_update(limiter):
  # ||1e30 u|| overflows float32 when squared; the limiter caps the step at
  # gamma times the previous norm all the same.
  grads = [_f32([3.0, 4.0]), _f32([3e30, 4e30]), _f32([3.0, 4.0])]
  out, state = _run(limit_norm_growth(1.01, limiter=limiter), grads)
  norms = [float(np.linalg.norm(np.asarray(u, np.float64))) for u in out]
  np.testing.assert_allclose(norms, [5.0, 5.05, 5.0], rtol=1e-6)
  assert np.isfinite(state.norm)


def test_default_limiter_lets_a_step_pass_after_a_non_finite_reference():
  tx = limit_norm_growth(1.01)
  state = tx.init(jnp.zeros(2))._replace(norm=jnp.float32(jnp.nan), count=jnp.int32(3))
  u, state = jax.jit(tx.update)(_f32([30.0, 40.0]), state)
  np.testing.assert_allclose(u, [30.0, 40.0])
  np.testing.assert_allclose(state.norm, 50.0, rtol=1e-6)


def _numpy_apollo(grads, projectors, *, granularity, scale, eps, gamma, limiter="official"):
  """Steps 1-8 of the APOLLO sheet in float64, given each step's projector."""
  m_, v_, a, out = 0.0, 0.0, None, []
  for t, (g, p) in enumerate(zip(grads, projectors), start=1):
    tall = g.shape[0] >= g.shape[1]
    r = g @ p.T if tall else p.T @ g
    m_ = B1 * m_ + (1 - B1) * r
    v_ = B2 * v_ + (1 - B2) * r * r
    n = m_ / (np.sqrt(v_) + eps)
    if granularity == "tensor":
      s = np.linalg.norm(n) / (np.linalg.norm(r) + 1e-8)
    else:
      axis = 1 if tall else 0
      s = (np.linalg.norm(n, axis=axis, keepdims=True)
           / (np.linalg.norm(r, axis=axis, keepdims=True) + 1e-8))
    update = s * g
    if gamma is not None:
      limit, a = _limit(np.linalg.norm(update), a, gamma, limiter)
      update = update / limit
    out.append(_step_size(t) * np.sqrt(scale) * update)
  return out


SHAPES = {"tall": (7, 4), "wide": (3, 8), "kernel": (2, 3, 5)}


@pytest.mark.parametrize("limiter", ["decaying_max", "official"])
@pytest.mark.parametrize("granularity,rank,scale", [("channel", 2, 1.0), ("tensor", 1, 128.0)])
def test_matches_numpy_port_across_projector_refreshes(granularity, rank, scale, limiter):
  """Six steps with T = 2: P is redrawn at steps 1, 3, 5; moments are carried."""
  rng = np.random.default_rng(0)
  grads = [{k: rng.normal(size=s) * rng.uniform(0.5, 3.0) for k, s in SHAPES.items()}
           for _ in range(6)]
  tx = scale_by_apollo(rank, 2, granularity=granularity, scale=scale, seed=3, limiter=limiter)
  update = jax.jit(tx.update)
  state = tx.init(jax.tree.map(lambda g: jnp.zeros(g.shape), grads[0]))
  out, projectors = [], []
  for g in grads:
    u, state = update(jax.tree.map(_f32, g), state)
    out.append(jax.device_get(u))
    projectors.append(jax.device_get(state[0].projection.projectors))
  for k in SHAPES:
    ps = [np.asarray(p[k], np.float64) for p in projectors]
    assert [np.array_equal(a, b) for a, b in zip(ps, ps[1:])] == [True, False] * 2 + [True]
    expected = _numpy_apollo(
        [g[k].reshape(-1, g[k].shape[-1]) for g in grads], ps,
        granularity=granularity, scale=scale, eps=1e-6, gamma=1.01, limiter=limiter)
    for u, e in zip(out, expected):
      np.testing.assert_allclose(u[k], e.reshape(SHAPES[k]), rtol=2e-4, atol=1e-6)


def test_gaussian_projector_entries_have_variance_one_over_rank():
  tx = scale_by_apollo_ratios(16, projector="gaussian")
  g = jnp.ones((512, 256))
  _, state = jax.jit(tx.update)(g, tx.init(g))
  p = np.asarray(state.projection.projectors)
  assert p.shape == (16, 256)
  assert abs(p.var() * 16 - 1.0) < 0.05 and abs(p.mean()) < 0.02


def test_svd_projector_gives_the_same_closed_form_with_its_singular_vectors():
  rng = np.random.default_rng(1)
  g = rng.normal(size=(6, 4))
  (u,), state = _run(scale_by_apollo(2, 100, eps=0.0, projector="svd"), [_f32(g)])
  p = np.asarray(state[0].projection.projectors, np.float64)
  np.testing.assert_allclose(np.abs(p), np.abs(np.linalg.svd(g)[2][:2]), atol=1e-5)
  r = g @ p.T
  np.testing.assert_allclose(u, np.sqrt(2) / np.linalg.norm(r, axis=1, keepdims=True) * g,
                             rtol=1e-4)


def test_same_seed_reproduces_the_trajectory_and_another_seed_differs():
  rng = np.random.default_rng(2)
  grads = [_f32(rng.normal(size=(9, 5))) for _ in range(4)]
  first, _ = _run(scale_by_apollo(2, 2, seed=11), grads)
  again, _ = _run(scale_by_apollo(2, 2, seed=11), grads)
  other, _ = _run(scale_by_apollo(2, 2, seed=12), grads)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert all(not np.allclose(a, b) for a, b in zip(first, other))


def test_mini_state_is_linear_in_the_matrix_sides():
  """(1024, 256), rank 1: M and V hold 2 * 1024 floats, P 256; no 1024 * 256 term."""
  tx = scale_by_apollo(1, granularity="tensor", scale=128.0)
  state = jax.eval_shape(tx.init, jax.ShapeDtypeStruct((1024, 256), jnp.float32))
  ratios = state[0]
  assert ratios.mu.shape == ratios.nu.shape == (1024, 1)
  assert ratios.projection.projectors.shape == (1, 256)
  floats = 4 * (2 * 1024 + 256)
  # Besides the floats: three int32 step counts, the limiter's norm, the key.
  assert gradkit.state_nbytes(state) == floats + 3 * 4 + 4 + 8


def test_channel_state_is_two_m_r_plus_the_projector():
  tx = scale_by_apollo(16)
  state = jax.eval_shape(tx.init, jax.ShapeDtypeStruct((256, 1024), jnp.float32))
  assert state[0].mu.shape == (16, 1024)
  assert gradkit.state_nbytes(state) == 4 * (2 * 16 * 1024 + 256 * 16) + 3 * 4 + 4 + 8


def test_bfloat16_updates_keep_dtype_and_follow_float32():
  rng = np.random.default_rng(3)
  grads = [rng.normal(size=(8, 5)) for _ in range(3)]
  tx = scale_by_apollo(2, 100, seed=1)
  ours, _ = _run(tx, [jnp.asarray(g, jnp.bfloat16) for g in grads])
  reference, _ = _run(tx, [_f32(np.asarray(jnp.asarray(g, jnp.bfloat16), np.float32))
                           for g in grads])
  for u, e in zip(ours, reference):
    assert u.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(u, np.float32), e, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("leaf", [jnp.ones(3), jnp.ones(())])
def test_vectors_and_scalars_are_rejected_with_a_clear_message(leaf):
  with pytest.raises(ValueError, match=r"scale_by_apollo acts on matrices.*\['b'\]"):
    scale_by_apollo(2).init({"b": leaf, "w": jnp.ones((4, 3))})


@pytest.mark.parametrize("kwargs", [
    dict(rank=0), dict(rank=1.5), dict(update_every=0), dict(granularity="row"),
    dict(projector="orthogonal"), dict(b1=1.0), dict(b2=-0.1), dict(eps=-1e-6),
    dict(scale=0.0), dict(limit_growth=0.0),
])
def test_invalid_hyperparameters_raise(kwargs):
  kwargs = {"rank": 2, **kwargs}
  with pytest.raises(ValueError):
    scale_by_apollo(**kwargs)


@pytest.mark.parametrize("build", [
    lambda: limit_norm_growth(limiter="fira"),
    lambda: scale_by_apollo(2, limiter="fira"),
    lambda: scale_by_apollo(2, limit_growth=None, limiter="fira"),
])
def test_unknown_limiter_rule_is_rejected(build):
  with pytest.raises(ValueError, match="limiter must be one of"):
    build()


def test_limiter_rejects_non_positive_gamma():
  with pytest.raises(ValueError, match="gamma"):
    limit_norm_growth(-1.0)
