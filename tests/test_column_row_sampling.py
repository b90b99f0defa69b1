"""WTA-CRS (gradkit.column_row_sampling, gradkit.layers.WTACRSLinear) against the
sheet's enumerated oracle (shared/algorithms/wta-crs.md) and closed forms.

The pairs of the sheet's example: A (2 x 4, columns = pairs) is x^T and B
(4 x 2) is dy, so the kernel gradient x^T dy is AB. Monte Carlo means are
checked within 5 standard errors computed from the exact variances, which
the sheet derives in float64 by enumerating every outcome.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gradkit.column_row_sampling import (
    pair_probabilities,
    sampling_budget,
    select_pairs,
    winner_count,
    wta_crs_dense,
)
from gradkit.layers import WTACRSLinear

A = np.array([[3, 1, 0.5, 0.2], [1, -1, 0.5, 0.1]])
B = np.array([[2, 1], [1, 0], [-1, 1], [0.5, 0.5]])
SHEET_P = [0.7332550023, 0.1466510005, 0.1036979169, 0.0163960803]
# E||G - AB||_F^2 by enumeration (sheet): CRS with k = 2; WTA-CRS with C = {0}, s = 1.
CRS_VARIANCE, WTA_VARIANCE = 16.885036043747, 3.491868486263
SAMPLES = 20000


def _kernel_grads(x, dy, k, winners, grad_norms, samples=SAMPLES):
  """The kernel gradient of sum(wta_crs_dense(x, K) * dy) for `samples` keys."""
  kernel = jnp.zeros((x.shape[-1], dy.shape[-1]), x.dtype)

  def grad(key):
    f = lambda w: jnp.sum(wta_crs_dense(x, w, key, k, grad_norms=grad_norms,  # noqa: E731
                                        winners=winners) * dy)
    return jax.grad(f)(kernel)

  return np.asarray(jax.jit(jax.vmap(grad))(jax.random.split(jax.random.key(0), samples)),
                    np.float64)


def test_probabilities_are_the_sheets():
  x, dy = jnp.asarray(A.T, jnp.float32), jnp.asarray(B, jnp.float32)
  p = pair_probabilities(jnp.linalg.norm(x, axis=1), jnp.linalg.norm(dy, axis=1))
  np.testing.assert_allclose(p, SHEET_P, rtol=1e-6)


@pytest.mark.parametrize("winners, variance", [(0, CRS_VARIANCE), ("adaptive", WTA_VARIANCE)])
def test_estimate_is_unbiased_with_the_enumerated_variance(winners, variance):
  """CRS (no winners) and WTA-CRS (the adaptive rule picks C = {0} here) on the
  sheet's 4 pairs, k = 2, with the exact output-gradient norms."""
  with jax.enable_x64(True):
    x, dy = jnp.asarray(A.T), jnp.asarray(B)
    grads = _kernel_grads(x, dy, 2, winners, jnp.linalg.norm(dy, axis=1))
  exact = A @ B
  standard_error = np.sqrt(variance / SAMPLES)  # bounds each entry's
  assert np.max(np.abs(grads.mean(0) - exact)) < 5 * standard_error
  errors = np.sum((grads - exact) ** 2, axis=(1, 2))
  spread = errors.std() / np.sqrt(SAMPLES)  # the standard error of the mean squared error
  assert abs(errors.mean() - variance) < 5 * spread, (errors.mean(), variance)


def test_winner_count_follows_the_official_rule():
  # Sheet oracle 2: scores [0.25, 0.3] -> one winner; uniform p: 0.45 > 1/3 -> none.
  assert int(winner_count(jnp.array([0.5, 0.2, 0.15]))) == 1
  assert int(winner_count(jnp.full((3,), 0.1))) == 0
  # The sheet's pairs, k = 2: (1 - 0.7333) / 1 = 0.267 < 1/2 -> C = {0}.
  assert int(winner_count(jnp.array(SHEET_P[:2]))) == 1


def test_winners_are_kept_exactly_and_draws_avoid_them():
  p = jnp.array([0.5, 0.2, 0.15, 0.1, 0.05])
  indices, weights = jax.vmap(lambda key: select_pairs(key, p, 3))(
      jax.random.split(jax.random.key(1), 500))
  assert np.all(indices[:, 0] == 0) and np.all(weights[:, 0] == 1.0)
  draws = np.asarray(indices[:, 1:])
  assert np.all(draws != 0)
  # A draw j weighs (1 - P_C) / (s p_j) with P_C = 0.5, s = 2.
  np.testing.assert_allclose(weights[:, 1:], 0.25 / np.asarray(p)[draws], rtol=1e-6)


def _closed_form_variances(x, dy, k):
  """E||G - x^T dy||_F^2 of CRS and of WTA-CRS (p proportional to w, the
  official winner rule), in float64: ((sum w)^2 - ||x^T dy||^2) / k and
  ((1 - P_C)^2 (sum w)^2 - ||F_R||^2) / s (the sheet's derivation)."""
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  w = np.linalg.norm(x, axis=1) * np.linalg.norm(dy, axis=1)
  total, p = w.sum(), w / w.sum()
  order = np.argsort(-p)
  top = p[order[:k]]
  scores = (1 - np.cumsum(top)[:-1]) / (k - np.arange(1, k))
  c = int(np.argmin(scores)) + 1 if scores.min() < 1 / k else 0
  rest = order[c:]
  crs = (total**2 - np.sum((x.T @ dy) ** 2)) / k
  wta = ((1 - top[:c].sum()) ** 2 * total**2 - np.sum((x[rest].T @ dy[rest]) ** 2)) / (k - c)
  return crs, wta, c


def test_wta_has_the_closed_form_variance_below_plain_sampling_on_heavy_rows():
  """Rows of x with log-normal norms (a few tokens carry most of the mass),
  k = 16 of 128, exact output-gradient norms: each estimator's measured
  squared error is its closed form, and WTA-CRS's is the lower."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(128, 6)) * np.exp(1.5 * rng.normal(size=(128, 1)))
  dy = rng.normal(size=(128, 3))
  crs, wta, num_winners = _closed_form_variances(x, dy, 16)
  assert num_winners > 0 and wta < crs
  exact = x.T @ dy
  with jax.enable_x64(True):
    for winners, variance in ((0, crs), ("adaptive", wta)):
      grads = _kernel_grads(jnp.asarray(x), jnp.asarray(dy), 16, winners,
                            jnp.linalg.norm(jnp.asarray(dy), axis=1), 4000)
      errors = np.sum((grads - exact) ** 2, axis=(1, 2))
      spread = errors.std() / np.sqrt(errors.size)
      assert abs(errors.mean() - variance) < 5 * spread, (winners, errors.mean(), variance)


def test_all_rows_kept_and_input_gradient_are_exact():
  rng = np.random.default_rng(2)
  x, kernel = jnp.asarray(rng.normal(size=(2, 5, 4))), jnp.asarray(rng.normal(size=(4, 3)))
  dy = jnp.asarray(rng.normal(size=(2, 5, 3)))
  key = jax.random.key(3)
  f = lambda x, w, k: jnp.sum(wta_crs_dense(x, w, key, k) * dy)  # noqa: E731
  gx, gw = jax.grad(f, argnums=(0, 1))(x, kernel, 10)
  np.testing.assert_allclose(gw, jnp.einsum("bti,bto->io", x, dy), rtol=1e-5)
  gx_sampled, _ = jax.grad(f, argnums=(0, 1))(x, kernel, 3)
  np.testing.assert_allclose(gx_sampled, dy @ kernel.T, rtol=1e-5)
  np.testing.assert_allclose(gx, dy @ kernel.T, rtol=1e-5)
  np.testing.assert_allclose(wta_crs_dense(x, kernel, key, 3), x @ kernel, rtol=1e-6)


@pytest.mark.parametrize("k", [8, 32])
def test_saved_residual_is_the_kept_rows(k):
  """The backward pass holds k rows of x (plus k indices and weights and the
  kernel), never the N = 256 rows."""
  x, kernel = jnp.ones((4, 64, 32)), jnp.ones((32, 16))
  _, backward = jax.vjp(lambda x, w: wta_crs_dense(x, w, jax.random.key(0), k), x, kernel)
  saved = sum(leaf.nbytes for leaf in jax.tree.leaves(backward))
  assert saved == k * 32 * 4 + 2 * k * 4 + kernel.nbytes


def test_budget_is_the_official_rule():
  assert sampling_budget(1000, 0.3) == 300
  assert sampling_budget(20, 0.3) == 10  # minimal_k
  assert sampling_budget(6, 0.3) == 6  # never more than N: exact
  with pytest.raises(ValueError, match="sampling_ratio"):
    sampling_budget(10, 0.0)


def test_linear_layer_matches_nnx_linear_and_is_exact_in_eval_mode():
  layer = WTACRSLinear(6, 3, sampling_ratio=0.25, rngs=nnx.Rngs(0))
  reference = nnx.Linear(6, 3, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(4), (4, 20, 6))
  np.testing.assert_allclose(layer(x), reference(x), rtol=1e-6)

  def kernel_grad(model):
    return nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(model)

  exact = kernel_grad(reference)
  layer.eval()
  np.testing.assert_allclose(kernel_grad(layer).kernel[...], exact.kernel[...], rtol=1e-5)
  layer.train()
  sampled = kernel_grad(layer)
  np.testing.assert_allclose(sampled.bias[...], exact.bias[...], rtol=1e-5)
  assert not np.allclose(sampled.kernel[...], exact.kernel[...])
