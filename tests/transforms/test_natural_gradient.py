"""Oracles for Natural GaLore's inverse empirical Fisher (sheet values and dense solves).

Every expected value is either a literal from the sheet (numpy float64) or
a float64 dense solve (lambda I + H H^T)^{-1} g over the last s inserted
vectors, written here independently of the module's push-through form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradkit.transforms.natural_gradient import precondition_natural_fisher

LAMBDA = 1e-3


def _outputs(vectors, history, damping=LAMBDA):
  tx = precondition_natural_fisher(history, damping)
  update, state, out = jax.jit(tx.update), tx.init(jnp.zeros(len(vectors[0]))), []
  for v in vectors:
    u, state = update(jnp.asarray(v, jnp.float32), state)
    out.append(np.asarray(u, np.float64))
  return out, state


def _dense(window, g, damping=LAMBDA):
  h = np.stack([np.asarray(x, np.float64) for x in window], axis=1)
  return np.linalg.solve(damping * np.eye(h.shape[0]) + h @ h.T, np.asarray(g, np.float64))


def test_sheet_oracle_single_history_vector():
  (out,), _ = _outputs([[3.0, 4.0]], history=20)
  np.testing.assert_allclose(out, [0.1199952002, 0.1599936003], rtol=1e-6)


def test_sheet_oracle_two_step_history():
  out, _ = _outputs([[3.0, 4.0], [1.0, 0.0]], history=20)
  np.testing.assert_allclose(out[1], [0.9984399726, -0.7487831805], rtol=1e-5)


def test_sheet_oracle_k4_s2():
  out, _ = _outputs([[1.0, 2.0, 0.0, -1.0], [0.0, 1.0, 1.0, 1.0]], history=2)
  np.testing.assert_allclose(
      out[1], [-0.0587924006, 0.2352283947, 0.3528131958, 0.4116055964], rtol=1e-5)


def test_zero_vectors_in_the_history_change_nothing():
  # A zero gradient anywhere in the window (or the zero-initialised slots)
  # is the same as its absence; the zero gradient itself maps to zero.
  out, _ = _outputs([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], history=5)
  np.testing.assert_array_equal(out[1], [0.0, 0.0])
  np.testing.assert_allclose(out[2], [0.9984399726, -0.7487831805], rtol=1e-5)
  out, _ = _outputs([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], history=3)
  np.testing.assert_allclose(out[2], [0.9984399726, -0.7487831805], rtol=1e-5)


def test_agrees_with_a_dense_solve_over_the_last_s_vectors():
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(9, 12))
  out, state = _outputs(vectors, history=4)
  for t in range(len(vectors)):
    window = vectors[max(0, t - 3):t + 1]
    np.testing.assert_allclose(out[t], _dense(window, vectors[t]), rtol=1e-4, atol=1e-6)
  assert int(state.count) == 9


def test_fifo_evicts_the_oldest_after_s_plus_one_vectors():
  rng = np.random.default_rng(1)
  vectors = rng.normal(size=(4, 5))
  out, state = _outputs(vectors, history=3)
  want = _dense(vectors[1:], vectors[3])
  np.testing.assert_allclose(out[3], want, rtol=1e-4, atol=1e-6)
  assert np.max(np.abs(_dense(vectors, vectors[3]) - want)) > 1e-2
  # The ring buffer holds exactly the last three vectors (slot order aside).
  held = np.asarray(state.history, np.float64)
  distances = np.abs(held[:, None, :] - vectors[None, 1:, :]).max(axis=-1)
  assert sorted(distances.argmin(axis=1)) == [0, 1, 2] and distances.min(axis=1).max() < 1e-6


@pytest.mark.parametrize("k, s, scale", [(9, 4, 100.0), (4, 6, 1000.0)])
def test_accurate_for_large_gradients(k, s, scale):
  # lambda = 1e-3: the official Woodbury expression g / lambda -
  # Gh S^{-1} Gh^T g / lambda^2 cancels O(|g| / lambda) terms and loses every
  # digit in float32 at |g| ~ 300; with k < s a float32 Gram matrix
  # Gh^T Gh + lambda I is singular (lambda below its rounding) at |g| ~ 2000.
  rng = np.random.default_rng(2)
  vectors = scale * rng.normal(size=(s + 2, k))
  out, _ = _outputs(vectors, history=s)
  for t in range(len(vectors)):
    want = _dense(vectors[max(0, t - s + 1):t + 1], vectors[t])
    np.testing.assert_allclose(out[t], want, rtol=1e-3, atol=1e-3 * np.max(np.abs(want)))


def test_any_leaf_shape_and_dtype():
  rng = np.random.default_rng(3)
  tree = [{"m": rng.normal(size=(2, 3)), "t": rng.normal(size=(2, 1, 2)), "s": rng.normal()}
          for _ in range(3)]
  tx = precondition_natural_fisher(2)
  zeros = {"m": jnp.zeros((2, 3), jnp.bfloat16), "t": jnp.zeros((2, 1, 2)), "s": jnp.zeros(())}
  update, state = jax.jit(tx.update), tx.init(zeros)
  for t, g in enumerate(tree):
    g32 = {k: jnp.asarray(v, zeros[k].dtype) for k, v in g.items()}
    u, state = update(g32, state)
    assert all(u[k].shape == zeros[k].shape and u[k].dtype == zeros[k].dtype for k in zeros)
    for k in ("t", "s"):
      window = [np.ravel(x[k]) for x in tree[max(0, t - 1):t + 1]]
      np.testing.assert_allclose(np.ravel(u[k]), _dense(window, np.ravel(g[k])), rtol=1e-4)


@pytest.mark.parametrize("kwargs", [
    {"history": 0}, {"history": 2.0}, {"history": True}, {"damping": 0.0},
    {"damping": -1e-3}])
def test_invalid_hyperparameters_raise(kwargs):
  with pytest.raises(ValueError):
    precondition_natural_fisher(**kwargs)
