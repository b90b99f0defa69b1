"""SaRA's sparse trainable set: frozen weights never move; refinement restarts AdamW."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.optimizers._recipe import descend
from gradkit.transforms.sara import restrict_to_small_weights

B1, B2, EPS, LR, WD, THRESHOLD = 0.9, 0.999, 1e-8, 0.2, 0.01, 0.5


def adamw():
  return descend(optax.scale_by_adam(B1, B2, EPS), learning_rate=LR, weight_decay=WD)


def numpy_masked_adamw(w, grads, refine_at=None, lr=lambda t: LR):
  """AdamW on |w| < THRESHOLD; at refine_at the mask is re-selected on the current
  weights and AdamW restarts there (zero moments, step count 1 again), as the
  official optimizer re-creates its torch AdamW; the learning-rate schedule lr(t)
  runs on the global step t. Float64."""
  w = w.copy()
  mask = np.abs(w) < THRESHOLD
  masks = [mask]
  m, v = np.zeros_like(w), np.zeros_like(w)
  history, start = [], 0
  for t, g in enumerate(grads):
    if t == refine_at:
      mask = np.abs(w) < THRESHOLD
      masks.append(mask)
      m, v, start = np.zeros_like(w), np.zeros_like(w), t
    n = t - start + 1  # AdamW's own step count
    m = np.where(mask, B1 * m + (1 - B1) * g, 0.0)
    v = np.where(mask, B2 * v + (1 - B2) * g * g, 0.0)
    step = (m / (1 - B1 ** n)) / (np.sqrt(v / (1 - B2 ** n)) + EPS) + WD * w
    w = np.where(mask, w - lr(t) * step, w)
    history.append(w.copy())
  return history, masks


def run(tx, w, grads):
  params = {"w": jnp.asarray(w, jnp.float32)}
  update = jax.jit(tx.update)
  state = tx.init(params)
  history = []
  for g in grads:
    u, state = update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, u)
    history.append(np.asarray(params["w"], np.float64))
  return history, state


def problem(seed, steps=6):
  rng = np.random.default_rng(seed)
  w = rng.uniform(-1.0, 1.0, size=(6, 5))
  return w, [rng.normal(size=(6, 5)) for _ in range(steps)]


def test_weights_outside_the_mask_never_change_and_inside_follow_adamw():
  w, grads = problem(0)
  got, _ = run(restrict_to_small_weights(adamw(), THRESHOLD, max_fraction=1.0), w, grads)
  want, _ = numpy_masked_adamw(w, grads)
  frozen = np.abs(w) >= THRESHOLD
  assert frozen.any() and (~frozen).any()
  for g, h in zip(got, want):
    np.testing.assert_array_equal(g[frozen], np.float32(w)[frozen])
    np.testing.assert_allclose(g, h, atol=2e-5)


def test_refinement_restarts_adamw_on_the_new_selection():
  w, grads = problem(1, steps=7)
  tx = restrict_to_small_weights(adamw(), THRESHOLD, max_fraction=1.0, refine_at=3)
  got, state = run(tx, w, grads)
  want, masks = numpy_masked_adamw(w, grads, refine_at=3)
  before, after = masks
  assert (before & ~after).any() and (before & after).any()
  for g, h in zip(got, want):
    np.testing.assert_allclose(g, h, atol=2e-5)
  # After the refinement the weights that left the mask are frozen.
  left = before & ~after
  np.testing.assert_array_equal(got[-1][left], np.float32(got[3])[left])
  active = np.zeros(w.size, bool)
  active[np.asarray(state.indices["w"])[np.asarray(state.active["w"])]] = True
  np.testing.assert_array_equal(active.reshape(w.shape), after)


def test_refinement_keeps_the_learning_rate_schedule_running():
  w, grads = problem(4, steps=5)
  schedule = optax.exponential_decay(LR, transition_steps=1, decay_rate=0.5)
  inner = descend(optax.scale_by_adam(B1, B2, EPS), learning_rate=schedule, weight_decay=WD)
  got, _ = run(restrict_to_small_weights(inner, THRESHOLD, max_fraction=1.0, refine_at=2),
               w, grads)
  want, _ = numpy_masked_adamw(w, grads, refine_at=2, lr=lambda t: LR * 0.5 ** t)
  for g, h in zip(got, want):
    np.testing.assert_allclose(g, h, atol=2e-5)


def test_moments_are_stored_for_k_positions_only_and_the_smallest_are_chosen():
  w, grads = problem(2, steps=2)
  tx = restrict_to_small_weights(adamw(), threshold=10.0, max_fraction=0.2)
  got, state = run(tx, w, grads)
  k = 6  # ceil(0.2 * 30)
  assert state.indices["w"].shape == (k,)
  assert all(x.shape == (k,) for x in jax.tree.leaves(state.inner) if np.ndim(x) == 1)
  smallest = np.argsort(np.abs(w).ravel())[:k]
  moved = np.flatnonzero(got[-1].ravel() != np.float32(w).ravel())
  np.testing.assert_array_equal(np.sort(moved), np.sort(smallest))


def test_nuclear_penalty_is_the_masked_subgradient_of_the_sparse_matrix():
  w, grads = problem(3, steps=1)
  tx = restrict_to_small_weights(optax.identity(), THRESHOLD, max_fraction=1.0,
                                 nuclear_weight=0.1, min_dim=0)
  params = {"w": jnp.asarray(w, jnp.float32)}
  out, _ = jax.jit(tx.update)({"w": jnp.asarray(grads[0], jnp.float32)}, tx.init(params), params)
  mask = np.abs(w) < THRESHOLD
  u, _, vt = np.linalg.svd(np.where(mask, np.float32(w), 0.0), full_matrices=False)
  np.testing.assert_allclose(out["w"], np.where(mask, grads[0] + 0.1 * u @ vt, 0.0), atol=1e-5)
  skipped = restrict_to_small_weights(optax.identity(), THRESHOLD, max_fraction=1.0,
                                      nuclear_weight=0.1, min_dim=5)
  out, _ = skipped.update({"w": jnp.asarray(grads[0], jnp.float32)}, skipped.init(params), params)
  np.testing.assert_allclose(out["w"], np.where(mask, grads[0], 0.0), atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"threshold": 0.0}, {"threshold": -1.0},
                                    {"max_fraction": 0.0}, {"max_fraction": 1.5},
                                    {"nuclear_weight": -1.0}, {"refine_at": -2}])
def test_invalid_hyperparameters_are_rejected(kwargs):
  with pytest.raises(ValueError):
    restrict_to_small_weights(optax.identity(), **kwargs)
