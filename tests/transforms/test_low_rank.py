"""Oracles for the shared low-rank projector and the subspace wrapper.

Closed forms (Eckart–Young energy of the top-r singular vectors), random
orthonormal competitors drawn in numpy, statistics of the random kinds, and
algebraic invariants of project / project_back; nothing here reuses the
module's own arithmetic as the expected value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.low_rank import (
    effective_rank,
    make_projector,
    project,
    project_back,
    project_low_rank,
    projected_shape,
    projector_shape,
    resolve_side,
)

KEY = jax.random.key(0)


def _matrix(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape)


def _random_orthonormal_rows(rng, r, n):
  q, _ = np.linalg.qr(rng.normal(size=(n, r)))
  return q.T


@pytest.mark.parametrize("shape", [(8, 5), (5, 8)])
def test_svd_projector_captures_the_most_energy(shape):
  g = _matrix(shape)
  r = 2
  side = resolve_side(shape, "std")
  p = make_projector(jnp.asarray(g, jnp.float32), KEY, r, "std", "svd")
  energy = float(jnp.sum(project(jnp.asarray(g, jnp.float32), p, side) ** 2))
  top = np.sum(np.linalg.svd(g, compute_uv=False)[:r] ** 2)
  np.testing.assert_allclose(energy, top, rtol=1e-5)
  rng = np.random.default_rng(1)
  for _ in range(200):
    q = _random_orthonormal_rows(rng, r, min(shape))
    other = np.sum((g @ q.T) ** 2) if side == "right" else np.sum((q @ g) ** 2)
    assert energy >= other * (1 - 1e-6)


def test_full_svd_projector_captures_the_top_singular_values():
  g = _matrix((7, 6))
  stacked = make_projector(jnp.asarray(g, jnp.float32), KEY, 3, "full", "svd")
  assert stacked.shape == (7 + 6, 3)
  u, v = stacked[:7], stacked[7:]  # U over V
  energy = float(jnp.sum((u.T @ jnp.asarray(g, jnp.float32) @ v) ** 2))
  np.testing.assert_allclose(energy, np.sum(np.linalg.svd(g, compute_uv=False)[:3] ** 2),
                             rtol=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", "orthogonal"])
def test_random_projector_is_reproduced_from_its_seed(kind):
  params = {"w": jnp.zeros((9, 4)), "v": jnp.zeros((3, 10))}
  grads = [{k: jnp.asarray(_matrix(p.shape, s), jnp.float32) for k, p in params.items()}
           for s in range(5)]

  def projectors(seed, update_every=2):
    tx = project_low_rank(optax.identity(), 2, update_every, kind=kind, seed=seed)
    update, state, out = jax.jit(tx.update), tx.init(params), []
    for g in grads:
      _, state = update(g, state)
      out.append(state.projection.projectors)
    return jax.device_get(out)

  first, again, other = projectors(0), projectors(0), projectors(1)
  for a, b, c in zip(first, again, other):
    for k in params:
      np.testing.assert_array_equal(a[k], b[k])
      assert np.max(np.abs(a[k] - c[k])) > 1e-2
  # Redrawn at each refresh (steps 1, 3, 5) and kept in between.
  np.testing.assert_array_equal(first[0]["w"], first[1]["w"])
  assert np.max(np.abs(first[1]["w"] - first[2]["w"])) > 1e-2
  # Independent of the gradient: only the seed and the refresh index matter.
  g0 = jnp.asarray(_matrix((9, 4), 7), jnp.float32)
  np.testing.assert_array_equal(make_projector(g0, KEY, 2, "std", kind),
                                make_projector(2 * g0 + 1, KEY, 2, "std", kind))


@pytest.mark.parametrize(
    "shape, side, proj, low",
    [((8, 5), "std", (2, 5), (8, 2)), ((5, 8), "std", (5, 2), (2, 8)),
     ((8, 5), "reverse_std", (8, 2), (2, 5)), ((5, 8), "reverse_std", (2, 8), (5, 2)),
     ((5, 8), "right", (2, 8), (5, 2)), ((8, 5), "left", (8, 2), (2, 5)),
     ((8, 5), "full", (8 + 5, 2), (2, 2))])
def test_side_rule_shapes(shape, side, proj, low):
  assert projector_shape(shape, 2, side) == proj
  assert projected_shape(shape, 2, side) == low
  g = jnp.asarray(_matrix(shape), jnp.float32)
  for kind in ("svd", "gaussian", "orthogonal"):
    p = make_projector(g, KEY, 2, side, kind)
    assert p.shape == proj
    low_g = project(g, p, resolve_side(shape, side))
    assert low_g.shape == low
    assert project_back(low_g, p, resolve_side(shape, side), shape).shape == shape


def test_rank_is_clamped_and_may_be_a_function_of_the_shape():
  assert effective_rank((8, 5), 128) == 5
  assert effective_rank((8, 5), lambda s: round(0.25 * s[1])) == 1
  assert effective_rank((8, 5), lambda s: 0) == 1


def test_projectors_refresh_every_period_and_not_in_between():
  params = {"w": jnp.zeros((6, 4))}
  grads = [jnp.asarray(_matrix((6, 4), s), jnp.float32) for s in range(7)]
  tx = project_low_rank(optax.identity(), 2, 3, kind="svd")
  update, state = jax.jit(tx.update), tx.init(params)
  span = []
  for g in grads:
    _, state = update({"w": g}, state)
    p = np.asarray(state.projection.projectors["w"], np.float64)
    span.append(p.T @ p)  # orthogonal projection onto the row space of P
  for step in range(len(grads)):
    refresh_step = step - step % 3
    _, _, vt = np.linalg.svd(np.asarray(grads[refresh_step], np.float64))
    np.testing.assert_allclose(span[step], vt[:2].T @ vt[:2], atol=1e-5)
  assert np.max(np.abs(span[2] - span[3])) > 1e-2


def test_gaussian_projector_entries_have_variance_one_over_rank():
  r = 16
  p = np.asarray(make_projector(jnp.zeros((4000, 4000)), KEY, r, "std", "gaussian"))
  assert p.shape == (r, 4000)
  # 64000 draws: the sample variance's relative std is sqrt(2 / 64000) ~ 0.6%.
  np.testing.assert_allclose(p.var(), 1.0 / r, rtol=0.03)
  assert abs(p.mean()) < 4 * np.sqrt(1.0 / r / p.size)


@pytest.mark.parametrize("side", ["std", "reverse_std", "full"])
@pytest.mark.parametrize("kind", ["svd", "orthogonal"])
def test_project_and_back_invariants(side, kind):
  g = jnp.asarray(_matrix((7, 5)), jnp.float32)
  s = resolve_side(g.shape, side)
  p = make_projector(g, KEY, 3, side, kind)
  x = jnp.asarray(_matrix(projected_shape(g.shape, 3, side), 3), jnp.float32)
  # Orthonormal frames: project(back(x)) = x, back(project(.)) is an
  # orthogonal projection (idempotent, residual orthogonal to the image).
  np.testing.assert_allclose(project(project_back(x, p, s, g.shape), p, s), x, atol=1e-5)
  pi = project_back(project(g, p, s), p, s, g.shape)
  np.testing.assert_allclose(project_back(project(pi, p, s), p, s, g.shape), pi, atol=1e-5)
  assert abs(float(jnp.sum(pi * (g - pi)))) < 1e-4


def test_identity_inner_with_sgd_complement_reconstructs_the_gradient():
  g = {"w": jnp.asarray(_matrix((6, 4)), jnp.float32)}
  tx = project_low_rank(optax.identity(), 2, kind="svd", complement="sgd")
  u, _ = jax.jit(tx.update)(g, tx.init(g))
  np.testing.assert_allclose(u["w"], g["w"], atol=1e-5)
  tx = project_low_rank(optax.identity(), 2, kind="svd", scale=0.5, complement="sign",
                        complement_scale=0.25)
  u, _ = jax.jit(tx.update)(g, tx.init(g))
  _, _, vt = np.linalg.svd(np.asarray(g["w"], np.float64))
  pi = np.asarray(g["w"], np.float64) @ vt[:2].T @ vt[:2]
  np.testing.assert_allclose(u["w"], 0.5 * pi + 0.25 * np.sign(g["w"] - pi), atol=1e-5)


def test_wrong_rank_leaf_is_rejected_clearly():
  tx = project_low_rank(optax.identity(), 2)
  with pytest.raises(ValueError, match=r"project_low_rank acts on matrices.*\['b'\]"):
    tx.init({"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)})


@pytest.mark.parametrize("kwargs", [
    {"rank": 0}, {"rank": -2}, {"rank": 2.5}, {"rank": True}, {"update_every": 0},
    {"update_every": 1.5}, {"side": "diagonal"}, {"kind": "hadamard"},
    {"complement": "adam"}, {"complement": "sign", "kind": "gaussian"}, {"scale": -1.0},
    {"complement_scale": -0.5}])
def test_invalid_options_raise(kwargs):
  args = {"rank": 2, "update_every": 10, **kwargs}
  with pytest.raises(ValueError):
    project_low_rank(optax.identity(), args.pop("rank"), args.pop("update_every"), **args)
