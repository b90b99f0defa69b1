"""Oracles for `frugal` (SVD type): the sheet's steps, its reductions, the state reset.

Expected values are the sheet's float64 literals, numpy float64 steps written
here from the official rule, optax.contrib's GaLore (for the "no state-free
part, no reset" reduction) and optax.adamw (fallback leaves).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import GaLoreDimensionNumbers, scale_by_galore

import gradkit
from gradkit.optimizers.frugal import frugal
from gradkit.transforms.low_rank import ProjectLowRankState
from trajectories import run_updates


def _w(g):
  return {"w": jnp.asarray(g, jnp.float32)}


def _updates(tx, params, grads_seq):
  update, state, out = jax.jit(tx.update), tx.init(params), []
  for g in grads_seq:
    u, state = update(g, state, params)
    out.append(np.asarray(u["w"], np.float64))
  return out, state


def _subspace(state) -> ProjectLowRankState:
  is_subspace = lambda x: isinstance(x, ProjectLowRankState)  # noqa: E731
  (found,) = [x for x in jax.tree.leaves(state, is_leaf=is_subspace) if is_subspace(x)]
  return found


G = [[3.0, 1.0], [0.0, 2.0], [1.0, 0.0]]


def test_sheet_oracle_svd_type_split():
  _, _, vt = np.linalg.svd(np.asarray(G))
  pi = np.asarray(G) @ vt[:1].T @ vt[:1]
  np.testing.assert_allclose(pi, [[2.8443872, 1.3322397], [0.7682213, 0.3598156],
                                  [0.8200922, 0.3841106]], atol=1e-7)
  out, _ = _updates(frugal(learning_rate=1.0, density=0.5, weight_decay=0.0),
                    _w(np.zeros((3, 2))), [_w(G), _w([[1, 1], [1, -1], [0, 2]])])
  # float32 bias correction (1 - 0.999 is inexact) shifts Adam's step by ~6e-6.
  np.testing.assert_allclose(out[0], [[-1.9055894, 0.5758446], [0.0944106, -1.4241554],
                                      [-1.9055894, 0.5758446]], atol=1e-5)
  np.testing.assert_allclose(out[1], [[0.1784262, -1.3848046], [-1.8604069, 0.597007],
                                      [0.0964341, -1.4232076]], atol=1e-5)


def test_no_state_free_part_and_no_reset_is_galore_with_pytorch_eps():
  # Square 3 x 3 (r = round(3 * 0.5) = 2): optax.contrib's GaLore projects on
  # the same side only with swapped dimension numbers (GaLore sheet).
  rng = np.random.default_rng(0)
  grads = [_w(rng.normal(size=(3, 3))) for _ in range(3)]
  params = _w(np.zeros((3, 3)))
  ours, _ = _updates(
      frugal(learning_rate=0.5, density=0.5, inactive_update_rule="no", reset_statistics=False,
             proj_params_lr_scale=0.25, weight_decay=0.0), params, grads)
  contrib, _ = _updates(optax.chain(
      scale_by_galore(rank=2, scale=0.25, base_optimizer=optax.scale_by_adam(eps=1e-8),
                      weight_dimension_numbers={"w": GaLoreDimensionNumbers(1, 0)}),
      optax.scale(-0.5)), params, grads)
  for a, b in zip(ours, contrib):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_no_state_free_part_tall_matrix_matches_a_numpy_galore_step():
  rng = np.random.default_rng(1)
  grads = [rng.normal(size=(6, 4)) for _ in range(4)]
  ours, _ = _updates(
      frugal(learning_rate=1.0, density=0.5, inactive_update_rule="no", reset_statistics=False,
             proj_params_lr_scale=0.25, weight_decay=0.0), _w(np.zeros((6, 4))),
      [_w(g) for g in grads])
  p = np.linalg.svd(grads[0])[2][:2]  # r = round(4 * 0.5) = 2, right projector
  m = v = 0.0
  for t, (g, got) in enumerate(zip(grads, ours), start=1):
    r = g @ p.T
    m, v = 0.9 * m + 0.1 * r, 0.999 * v + 0.001 * r * r
    adam = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(got, -0.25 * adam @ p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule, expected", [
    ("sign_sgd", lambda g: -0.25 * np.sign(g)), ("sgd", lambda g: -0.25 * g),
    ("no", lambda g: 0.0 * g)])
def test_density_zero_is_the_state_free_rule(rule, expected):
  rng = np.random.default_rng(2)
  grads = [_w(rng.normal(size=(5, 3))) for _ in range(2)]
  tx = frugal(learning_rate=1.0, density=0.0, inactive_update_rule=rule, weight_decay=0.0,
              proj_params_lr_scale=0.5, inactive_lr_scale=0.5)
  out, _ = _updates(tx, _w(np.zeros((5, 3))), grads)
  for got, g in zip(out, grads):
    np.testing.assert_allclose(got, expected(np.asarray(g["w"], np.float64)), atol=1e-7)


def test_subspace_adam_restarts_at_each_refresh():
  rng = np.random.default_rng(3)
  grads = [rng.normal(size=(6, 4)) for _ in range(3)]
  params = _w(np.zeros((6, 4)))
  reset, state = _updates(frugal(learning_rate=1.0, density=0.5, update_gap=2,
                                 weight_decay=0.0), params, [_w(g) for g in grads])
  adam = _subspace(state).inner
  assert int(adam.count) == 1  # steps 1, 2, then the refresh at k = 2 restarts it
  g = grads[2]
  p = np.linalg.svd(g)[2][:2]
  r = g @ p.T
  np.testing.assert_allclose(np.asarray(adam.mu["w"]), 0.1 * r, rtol=1e-5, atol=1e-6)
  # A first Adam step is sign(R) up to eps; the residual gets sign(E).
  fresh = -(np.sign(r) @ p + np.sign(g - r @ p))
  np.testing.assert_allclose(reset[2], fresh, atol=1e-5)
  carried, state = _updates(frugal(learning_rate=1.0, density=0.5, update_gap=2,
                                   weight_decay=0.0, reset_statistics=False),
                            params, [_w(g) for g in grads])
  assert int(_subspace(state).inner.count) == 3
  assert np.max(np.abs(carried[2] - fresh)) > 1e-2


def test_random_projector_type_is_seeded_and_orthonormal():
  rng = np.random.default_rng(4)
  g = rng.normal(size=(6, 4))
  runs = [_updates(frugal(learning_rate=1.0, density=0.5, proj_type="random", seed=s,
                          weight_decay=0.0), _w(np.zeros((6, 4))), [_w(g)]) for s in (0, 0, 1)]
  (u0,), state = runs[0]
  p = np.asarray(_subspace(state).projection.projectors["w"], np.float64)
  np.testing.assert_allclose(p @ p.T, np.eye(2), atol=1e-6)
  r = g @ p.T
  np.testing.assert_allclose(u0, -(np.sign(r) @ p + np.sign(g - r @ p)), atol=1e-5)
  np.testing.assert_array_equal(u0, runs[1][0][0])
  assert np.max(np.abs(u0 - runs[2][0][0])) > 1e-2


@pytest.mark.parametrize("shape, projector", [
    ((12, 8), (2, 8)), ((8, 12), (8, 2)), ((20, 10), (2, 10)), ((28, 14), (4, 14)),
    ((8, 2), (1, 2))])
def test_rank_is_round_of_density_times_the_projected_side(shape, projector):
  # Python's round (as the official code): 2.5 -> 2, 3.5 -> 4; 0.5 -> 0 is clamped to 1.
  state = frugal().init({"w": jnp.zeros(shape)})
  assert _subspace(state).projection.projectors["w"].shape == projector


def test_fallback_leaves_are_optax_adamw():
  rng = np.random.default_rng(5)
  params = {"w": jnp.zeros((4, 3)), "b": jnp.ones(3), "s": jnp.ones(())}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
           for _ in range(4)]
  ours = run_updates(frugal(learning_rate=0.1), params, grads)
  want = run_updates(optax.adamw(0.1, eps=1e-8, weight_decay=0.01), params, grads)
  for a, b in zip(ours, want):
    for k in ("b", "s"):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-6)


def test_bf16_conv_kernel_follows_the_rule_on_its_matrix_view():
  """A (3, 3, 4, 8) bf16 kernel is the (36, 8) matrix G (leading axes merged):
  rank round(0.25 * 8) = 2 on the right, P the top-2 right singular vectors of
  G, and a first step -lr (sign(G P^T) P + sign(G - G P^T P)) - lr wd W."""
  rng = np.random.default_rng(6)
  params = {"conv": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.bfloat16),
            "b": jnp.zeros(8, jnp.bfloat16)}
  lr, wd = 1e-2, 0.01
  tx = gradkit.create("frugal", learning_rate=lr)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  u, state = jax.jit(tx.update)(grads, tx.init(params), params)
  chex.assert_trees_all_equal_dtypes(u, params)
  g = np.asarray(grads["conv"], np.float64).reshape(36, 8)
  w = np.asarray(params["conv"], np.float64).reshape(36, 8)
  p = np.linalg.svd(g)[2][:2]
  np.testing.assert_allclose(np.abs(np.asarray(
      _subspace(state).projection.projectors["conv"], np.float64) @ p.T), np.eye(2), atol=1e-5)
  r = g @ p.T
  residual = g - r @ p
  # Adam's first step is sign(R) when |R| >> eps; no residual sign is a rounding tie.
  assert np.abs(r).min() > 1e-3 and np.abs(residual).min() > 1e-4
  want = -lr * (np.sign(r) @ p + np.sign(residual)) - lr * wd * w
  got = np.asarray(u["conv"], np.float64).reshape(36, 8)
  # bf16 updates: 8 significant bits, rounded at more than one stage of the chain.
  np.testing.assert_allclose(got, want, rtol=1e-2, atol=2e-4)


def test_vector_routed_to_the_matrix_rule_is_rejected():
  tx = frugal(param_labels={"w": "matrix", "b": "matrix"})
  with pytest.raises(ValueError, match=r"acts on matrices.*\['b'\]"):
    tx.init({"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)})


@pytest.mark.parametrize("kwargs", [
    {"density": 1.5}, {"density": -0.1}, {"density": jnp.asarray(0.5)}, {"update_gap": 0},
    {"proj_type": "randperm"}, {"inactive_update_rule": "same"},
    {"proj_params_lr_scale": -1.0}, {"inactive_lr_scale": -0.1}, {"b1": 1.0},
    {"proj_side": "diagonal"}, {"weight_decay": -0.01}])
def test_invalid_hyperparameters_raise(kwargs):
  with pytest.raises(ValueError):
    frugal(**kwargs)
