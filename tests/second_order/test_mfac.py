"""M-FAC against explicit float64 inverses of the damped window Fisher (numpy).

Accuracy at small damping. With window G (m x d, m < d) and x = x_s + x_o
split along span(G), F^{-1} x = F^{-1} x_s + x_o / lambda, and the in-span
part is the m x m problem with condition number
kappa = (m lambda + s_max) / (m lambda + s_min) (s: eigenvalues of G G^T).
A solve in precision eps can give: the in-span part to
~ eps (kappa |F^{-1} x_s| + |result|) (the second term is the rounding of the
result vector itself, whose out-of-span part can be far larger), and the
out-of-span part to ~ eps |x| / lambda (the rounding of x itself, 1/lambda
amplified: for x in the span it is all the result has there, so whole-vector
errors of in-span x are not a measure of the method at lambda = 1e-5).
The tests allow 4 m = 64 times these (the m x m triangular solves accumulate
~m roundings, and the product goes through several of them); over 20 seeds
the measured ratios stayed below 7 (in-span) and 15 (out-of-span, float64,
where the float64 oracle rounds as much as the code).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.second_order.mfac import mfac, mfac_inverse_product, precondition_mfac
from trajectories import f32


def _fisher_inverse(window, damping, m, x):
  """(damping I + (1/m) sum_{g in window} g g^T)^{-1} x, float64."""
  d = x.size
  fisher = damping * np.eye(d) + sum(np.outer(g, g) for g in window) / m
  return np.linalg.solve(fisher, x)


def _run(tx, grads, dtype=jnp.float32):
  update = jax.jit(tx.update)
  state = tx.init(jnp.zeros(grads[0].shape, dtype))
  outs = []
  for g in grads:
    u, state = update(jnp.asarray(g, dtype), state)
    outs.append(np.asarray(u, np.float64))
  return outs, state


def test_sheet_oracle_woodbury_product():
  grads = [np.array([1.0, 0.0, 1.0]), np.array([0.0, 2.0, -1.0])]
  _, state = _run(precondition_mfac(num_grads=2, damping=0.5), grads)
  got = jax.jit(mfac_inverse_product)(state, jnp.ones(3))
  np.testing.assert_allclose(got, np.array([8.0, 14.0, 18.0]) / 17.0, rtol=1e-5)


def test_preconditioned_gradient_matches_explicit_inverse_while_window_slides():
  m, d, damping = 4, 12, 0.1
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=d) * s for s in rng.uniform(0.5, 2.0, size=11)]
  outs, state = _run(precondition_mfac(num_grads=m, damping=damping), grads)
  for t, (g, out) in enumerate(zip(grads, outs)):
    window = grads[max(0, t + 1 - m): t + 1]  # partially filled for t < m - 1, then slides.
    np.testing.assert_allclose(out, _fisher_inverse(window, damping, m, g), rtol=2e-4, atol=1e-6)
  x = rng.normal(size=d)
  np.testing.assert_allclose(mfac_inverse_product(state, jnp.asarray(x, jnp.float32)),
                             _fisher_inverse(grads[-m:], damping, m, x), rtol=2e-4, atol=1e-5)
  assert float(state.damping) == pytest.approx(damping)  # no breakdown, no raised damping.


def test_tree_updates_are_flattened_jointly_and_keep_dtypes():
  m, damping = 3, 0.2
  rng = np.random.default_rng(1)
  trees = [{"w": rng.normal(size=(2, 3)), "b": rng.normal(size=(3,))} for _ in range(5)]
  tx = precondition_mfac(num_grads=m, damping=damping)
  state = tx.init(f32(trees[0]))
  update = jax.jit(tx.update)
  flat = [np.concatenate([t["b"], t["w"].ravel()]) for t in trees]  # ravel_pytree order: b, w.
  for t, tree in enumerate(trees):
    u, state = update(f32(tree), state)
    want = _fisher_inverse(flat[max(0, t + 1 - m): t + 1], damping, m, flat[t])
    np.testing.assert_allclose(np.concatenate([u["b"], np.ravel(u["w"])]), want, rtol=2e-4)
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), f32(trees[0]))
  u, _ = tx.update(bf16, tx.init(bf16))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))


def test_breakdown_raises_damping_instead_of_nan():
  # Six copies of one large gradient in a window of 8: G G^T has rank one and
  # float32 rounding makes G G^T + m lambda I indefinite for lambda = 1e-12.
  g = np.array([3e3, -4e3, 1e3])
  outs, state = _run(precondition_mfac(num_grads=8, damping=1e-12), [g] * 6)
  assert all(np.all(np.isfinite(o)) for o in outs)
  lam = float(state.damping)
  assert lam > 1e-6  # raised: at 1e-12 the factorisation fails.
  # The conditioning (~1/eps32) leaves only a rough F^{-1} g: a descent
  # direction of the right size.
  want = _fisher_inverse([g] * 6, lam, 8, g)
  assert np.dot(outs[-1], g) > 0
  assert 0.5 < np.linalg.norm(outs[-1]) / np.linalg.norm(want) < 2.0


def test_state_bytes_are_the_documented_memory():
  m, d = 5, 21
  state = precondition_mfac(num_grads=m).init(jnp.zeros(d))
  assert gradkit.state_nbytes(state) == 4 * (m * d + 2 * m * m) + 4 + 4


def test_optimizer_matches_reference_step_with_coupled_decay_and_momentum():
  m, damping, lr, momentum, wd = 3, 0.5, 0.05, 0.6, 0.1
  rng = np.random.default_rng(2)
  p = rng.normal(size=7)
  grads = [rng.normal(size=7) for _ in range(6)]
  tx = mfac(learning_rate=lr, num_grads=m, damping=damping, momentum=momentum, weight_decay=wd)
  update = jax.jit(tx.update)
  params = jnp.asarray(p, jnp.float32)
  state = tx.init(params)
  window, v = [], np.zeros(7)
  for g in grads:
    u, state = update(jnp.asarray(g, jnp.float32), state, params)
    params = optax.apply_updates(params, u)
    decayed = g + wd * p  # reference MFAC.step: L2 added before the window.
    window = (window + [decayed])[-m:]
    v = momentum * v + (1 - momentum) * _fisher_inverse(window, damping, m, decayed)
    p = p - lr * v
    np.testing.assert_allclose(params, p, rtol=1e-4, atol=1e-5)


def test_reduces_logistic_regression_loss_under_jit():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(256, 20)), jnp.float32)
  y = jnp.asarray(rng.normal(size=20) @ np.asarray(x).T > 0, jnp.float32)

  def loss(w, idx):
    logits = x[idx] @ w
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y[idx]))

  tx = gradkit.create("mfac", learning_rate=1e-2, num_grads=16, damping=1e-2)

  @jax.jit
  def step(w, state, idx):
    u, state = tx.update(jax.grad(loss)(w, idx), state, w)
    return optax.apply_updates(w, u), state

  w = jnp.zeros(20)
  state = tx.init(w)
  full = jnp.arange(256)
  start = float(loss(w, full))
  for _ in range(60):
    w, state = step(w, state, jnp.asarray(rng.choice(256, 32, replace=False)))
  assert float(loss(w, full)) < 0.5 * start


def _split_inverse(window, damping, x):
  """float64 F^{-1} x as (in-span part, out-of-span part, orthonormal basis of the span).

  An SVD of the window, not `np.linalg.solve` of F: that solve's error is
  eps64 cond(F) ~ 4e-7 at damping 1e-8, above what a float64 M-FAC reaches.
  """
  m = window.shape[0]
  _, s, vt = np.linalg.svd(window, full_matrices=False)
  c = vt @ x
  return vt.T @ (c / (damping + s**2 / m)), (x - vt.T @ c) / damping, vt


def _kappa(window, damping):
  """Condition number of F restricted to the window's span."""
  m = window.shape[0]
  s = np.linalg.svd(window, compute_uv=False) ** 2
  return (m * damping + s.max()) / (m * damping + s.min())


@jax.jit
def _window_run(window, vectors, damping):
  """(last step, F^{-1} vectors, damping used) after the window's gradients, in one program."""
  tx = precondition_mfac(num_grads=window.shape[0], damping=damping)

  def step(state, g):
    u, state = tx.update(g, state)
    return state, u

  state, steps = jax.lax.scan(step, tx.init(window[0]), window)
  return steps[-1], jax.vmap(lambda x: mfac_inverse_product(state, x))(vectors), state.damping


def _windows(dtype):
  """A random window and a nearly collinear one (kappa ~ 1e4), m = 16, d = 200, as `dtype`."""
  rng = np.random.default_rng(4)
  random = rng.normal(size=(16, 200))
  collinear = rng.normal(size=200) + 0.05 * rng.normal(size=(16, 200))
  return [np.asarray(w.astype(dtype), np.float64) for w in (random, collinear)], rng


TOL = 64  # 4 m, see the module docstring.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inverse_product_is_accurate_along_the_span_at_small_damping(dtype):
  eps = np.finfo(dtype).eps
  windows, rng = _windows(dtype)
  with jax.enable_x64(dtype == np.float64):
    for window in windows:
      span = (window.T @ rng.normal(size=16)).astype(dtype).astype(np.float64)
      vectors = np.stack([span, window[-1], rng.normal(size=200).astype(dtype)])
      for damping in (1e-5, 1e-8):
        step, got, used = _window_run(jnp.asarray(window, dtype), jnp.asarray(vectors, dtype),
                                      jnp.asarray(damping, dtype))
        assert float(used) == pytest.approx(damping)
        kappa = _kappa(window, damping)
        # The step's push-through form has no out-of-span rounding at all.
        want = _split_inverse(window, damping, window[-1])[0]
        assert np.linalg.norm(np.asarray(step, np.float64) - want) <= (
            TOL * eps * kappa * np.linalg.norm(want))
        for x, y in zip(vectors[:2], np.asarray(got[:2], np.float64)):
          inside, outside, basis = _split_inverse(window, damping, x)
          y_in = basis.T @ (basis @ y)
          assert np.linalg.norm(y_in - inside) <= (
              TOL * eps * (kappa * np.linalg.norm(inside) + np.linalg.norm(y)))
          assert np.linalg.norm(y - y_in - outside) <= TOL * eps * np.linalg.norm(x) / damping
        inside, outside, _ = _split_inverse(window, damping, vectors[2])
        want = inside + outside  # a generic x: the result is ~ x / damping, accurate as a whole.
        assert np.linalg.norm(np.asarray(got[2], np.float64) - want) <= (
            TOL * eps * kappa * np.linalg.norm(want))


def _block_inverse(window, damping, m, block, x):
  """Block-diagonal (damping I + (1/m) G_k^T G_k)^{-1} x over contiguous blocks, float64."""
  return np.concatenate([_fisher_inverse(window[:, i:i + block], damping, m, x[i:i + block])
                         for i in range(0, x.size, block)])


def test_blocks_match_a_block_diagonal_inverse_while_window_slides():
  m, d, block, damping = 6, 50, 16, 1e-3  # blocks of 16, 16, 16 and 2 entries.
  rng = np.random.default_rng(5)
  grads = rng.normal(size=(9, d)) * rng.uniform(0.5, 2.0, size=(9, 1))
  x = rng.normal(size=d)
  with jax.enable_x64(True):
    tx = precondition_mfac(num_grads=m, damping=damping, block_size=block)
    outs, state = _run(tx, list(grads), jnp.float64)
    got = np.asarray(mfac_inverse_product(state, jnp.asarray(x)))
  for t, out in enumerate(outs):
    window = grads[max(0, t + 1 - m): t + 1]
    np.testing.assert_allclose(out, _block_inverse(window, damping, m, block, grads[t]),
                               rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(got, _block_inverse(grads[-m:], damping, m, block, x), rtol=1e-9)
  assert state.grads.shape == (4, m, block) and state.factor.shape == (4, m, m)
  assert gradkit.state_nbytes(state) == 8 * (4 * m * block + 2 * 4 * m * m + 4) + 4


@pytest.mark.parametrize("kwargs", [
    {"num_grads": 0}, {"num_grads": 2.5}, {"damping": 0.0}, {"damping": -1.0},
    {"momentum": 1.0}, {"momentum": -0.1}, {"weight_decay": -1.0}, {"learning_rate": -1.0},
    {"block_size": 0}, {"block_size": 4.0}, {"block_size": True},
])
def test_invalid_hyperparameters_raise(kwargs):
  with pytest.raises(ValueError):
    mfac(**kwargs)
