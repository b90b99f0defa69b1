"""Oracles for clip_coordinates_top_fraction and the clipped-first-moment Adam."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.coordinate_clipping import (
    clip_coordinates_top_fraction,
    scale_by_adam_clipped_first_moment,
)

G = np.array([0.1, -5.0, 0.3, 2.0, -0.05, 0.7, -1.2, 0.0, 4.0, 0.2])
SHEET = {
    0.1: np.array([0.1, -4.0, 0.3, 2.0, -0.05, 0.7, -1.2, 0.0, 4.0, 0.2]),
    0.5: np.array([0.1, -0.3, 0.3, 0.3, -0.05, 0.3, -0.3, 0.0, 0.3, 0.2]),
}


def _numpy_clip(leaves, fraction, scale=1.0):
  """Brute force: sort every |g| descending, threshold at floor(fraction d)."""
  flat = np.concatenate([np.abs(np.asarray(x, np.float64)).ravel() for x in leaves])
  index = int(flat.size * fraction)
  tau = 0.0 if index >= flat.size else np.sort(flat)[::-1][index]
  return [np.clip(x, -tau * scale, tau * scale) for x in leaves], tau * scale


def _apply(tx, updates):
  return jax.jit(tx.update)(updates, tx.init(updates))[0]


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_sheet_oracle(fraction):
  got = _apply(clip_coordinates_top_fraction(fraction), jnp.asarray(G, jnp.float32))
  np.testing.assert_allclose(got, SHEET[fraction], rtol=1e-6)
  np.testing.assert_allclose(_numpy_clip([G], fraction)[0][0], SHEET[fraction])


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_threshold_is_global_over_the_tree(fraction):
  tree = {"a": jnp.asarray(G[:6].reshape(2, 3), jnp.float32), "b": jnp.asarray(G[6:], jnp.float32)}
  got = _apply(clip_coordinates_top_fraction(fraction), tree)
  np.testing.assert_allclose(got["a"], SHEET[fraction][:6].reshape(2, 3), rtol=1e-6)
  np.testing.assert_allclose(got["b"], SHEET[fraction][6:], rtol=1e-6)
  # Per-leaf thresholds give a different result (0.1: leaf a keeps -5;
  # 0.5: leaf b is clipped at 0.2).
  per_leaf = np.concatenate([_numpy_clip([G[:6]], fraction)[0][0],
                             _numpy_clip([G[6:]], fraction)[0][0]])
  assert not np.allclose(per_leaf, SHEET[fraction])


def test_endpoints_and_threshold_scale():
  g = jnp.asarray(G, jnp.float32)
  np.testing.assert_array_equal(_apply(clip_coordinates_top_fraction(0.0), g), g)
  np.testing.assert_array_equal(_apply(clip_coordinates_top_fraction(1.0), g), np.zeros(10))
  got = _apply(clip_coordinates_top_fraction(0.5, threshold_scale=2.0), g)
  np.testing.assert_allclose(got, np.clip(G, -0.6, 0.6), rtol=1e-6)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 0.5, 0.9, 0.999])
def test_random_tree_matches_numpy_sort_and_invariants(fraction):
  rng = np.random.default_rng(int(fraction * 1000))
  leaves = [rng.standard_cauchy(size=(13, 7)), rng.normal(size=(50,)),
            np.round(rng.normal(size=(4, 2, 3)), 1)]  # rounding makes ties.
  tree = [jnp.asarray(x, jnp.float32) for x in leaves]
  got = _apply(clip_coordinates_top_fraction(fraction), tree)
  leaves32 = [np.asarray(x) for x in tree]
  expected, tau = _numpy_clip(leaves32, fraction)
  chex.assert_trees_all_close(got, expected, rtol=1e-6)
  flat_g = np.concatenate([x.ravel() for x in leaves32])
  flat_c = np.concatenate([np.asarray(x).ravel() for x in got])
  assert np.sum(np.abs(flat_g) > tau) <= int(flat_g.size * fraction)
  assert np.max(np.abs(flat_c)) == pytest.approx(tau, rel=1e-6)
  assert np.all(np.sign(flat_c) == np.sign(flat_g) * (tau > 0))
  assert np.all(np.abs(flat_c) <= np.abs(flat_g))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_traced_fraction_matches_static(fraction):
  rng = np.random.default_rng(3)
  tree = {"a": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(10,)), jnp.float32)}
  traced = jax.jit(lambda f, u: clip_coordinates_top_fraction(f).update(u, None)[0])
  got = traced(jnp.float32(fraction), tree)
  expected, _ = _numpy_clip([tree["a"], tree["b"]], fraction)
  chex.assert_trees_all_close(got, {"a": expected[0], "b": expected[1]}, rtol=1e-6)


def test_dtypes_are_kept():
  tree = {"a": jnp.asarray(G[:4], jnp.bfloat16), "b": jnp.asarray(G[4:], jnp.float32)}
  got = _apply(clip_coordinates_top_fraction(0.5), tree)
  assert got["a"].dtype == jnp.bfloat16 and got["b"].dtype == jnp.float32
  tau = float(jnp.bfloat16(0.3))  # the threshold entry is the bfloat16 0.3.
  np.testing.assert_allclose(np.asarray(got["b"]), np.clip(G[4:], -tau, tau), rtol=1e-6)


def test_adam_with_zero_fraction_is_optax_adam():
  rng = np.random.default_rng(4)
  tree = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}
  ours, ref = scale_by_adam_clipped_first_moment(0.0, 0.8, 0.95, 1e-6), optax.scale_by_adam(
      0.8, 0.95, 1e-6)
  s_ours, s_ref = ours.init(tree), ref.init(tree)
  for _ in range(5):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), tree)
    u_ours, s_ours = jax.jit(ours.update)(g, s_ours)
    u_ref, s_ref = jax.jit(ref.update)(g, s_ref)
    chex.assert_trees_all_close(u_ours, u_ref, rtol=1e-6, atol=1e-7)


def test_adam_first_moment_sees_clipped_second_moment_unclipped():
  b1, b2, eps = 0.9, 0.99, 1e-8
  g1, g2 = G, G[::-1] * np.linspace(0.5, 2.0, 10)
  m, v, expected = np.zeros(10), np.zeros(10), []
  for t, g in enumerate([g1, g2], start=1):
    m = b1 * m + (1 - b1) * _numpy_clip([g], 0.1)[0][0]
    v = b2 * v + (1 - b2) * g**2
    expected.append((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
  # Step 1 by hand: the clipped entry -5 -> -4 moves by -4 / sqrt(25) = -0.8,
  # the others by sign(g) as in plain Adam.
  np.testing.assert_allclose(expected[0][1], -0.8, rtol=1e-6)
  tx = scale_by_adam_clipped_first_moment(0.1, b1, b2, eps)
  state = tx.init(jnp.zeros(10))
  for g, e in zip([g1, g2], expected):
    u, state = jax.jit(tx.update)(jnp.asarray(g, jnp.float32), state)
    np.testing.assert_allclose(u, e, rtol=1e-5)


@pytest.mark.parametrize(
    "build",
    [lambda: clip_coordinates_top_fraction(-0.1), lambda: clip_coordinates_top_fraction(1.5),
     lambda: clip_coordinates_top_fraction(0.1, threshold_scale=-1.0),
     lambda: clip_coordinates_top_fraction(lambda count: 0.1),
     lambda: scale_by_adam_clipped_first_moment(0.5, b1=1.0),
     lambda: scale_by_adam_clipped_first_moment(0.5, eps=-1.0)],
)
def test_invalid_hyperparameters_raise(build):
  with pytest.raises(ValueError):
    build()
