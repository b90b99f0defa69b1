"""Batch-size rules: scaling laws, Step Law, and AdAdaGrad's adaptive batch-size tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradkit.batch_size import (
    AdaptiveBatchSizeController,
    adaptive_batch_statistic,
    augmented_inner_product_test,
    inner_product_test,
    next_batch_size,
    norm_test,
    orthogonality_test,
    scale_learning_rate,
    step_law,
)

# Sheet oracle: b = 4 per-sample gradients in R^3, mean (2, 0, 1), coordinate variances 2/3.
SHEET = jnp.array([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0], [2.0, -1.0, 1.0], [2.0, 0.0, 1.0]])


@pytest.mark.parametrize("batch, sgd, adam", [
    (512, 0.2, 0.001414214), (1024, 0.4, 0.002), (4096, 1.6, 0.004), (256, 0.1, 1e-3)])
def test_linear_and_sqrt_rules(batch, sgd, adam):
  assert scale_learning_rate(0.1, 256, batch, "linear") == pytest.approx(sgd, rel=1e-12)
  assert scale_learning_rate(1e-3, 256, batch, "sqrt") == pytest.approx(adam, rel=1e-6)


@pytest.mark.parametrize("n, d, lr, batch", [
    (1e9, 1e11, 1.632499e-3, 1.107715e6),
    (1e8, 2e10, 5.143624e-3, 4.418920e5),
    (7e9, 2e12, 1.022620e-3, 6.127963e6),
])
def test_step_law_sheet_values(n, d, lr, batch):
  got_lr, got_batch = step_law(n, d)
  assert got_lr == pytest.approx(lr, rel=1e-6)
  assert got_batch == pytest.approx(batch, rel=1e-6)


def test_sheet_statistics():
  np.testing.assert_allclose(norm_test(SHEET, 0.5), 1.6, rtol=1e-5)
  np.testing.assert_allclose(norm_test(SHEET, 0.1), 40.0, rtol=1e-5)
  np.testing.assert_allclose(inner_product_test(SHEET, 0.5), 0.10666667, rtol=1e-5)
  np.testing.assert_allclose(inner_product_test(SHEET, 0.1), 2.6666667, rtol=1e-5)
  np.testing.assert_allclose(orthogonality_test(SHEET, 1.0), 0.37333333, rtol=1e-5)
  np.testing.assert_allclose(orthogonality_test(SHEET, 0.1), 37.333333, rtol=1e-5)
  np.testing.assert_allclose(augmented_inner_product_test(SHEET, 0.5, 0.1), 37.333333, rtol=1e-5)


@pytest.mark.parametrize("test, kwargs, expected", [
    ("norm", dict(eta=0.5), 4), ("norm", dict(eta=0.1), 40),
    ("inner_product", dict(theta=0.5), 4), ("inner_product", dict(theta=0.1), 4),
    ("augmented_inner_product", dict(theta=0.5, nu=1.0), 4),
    ("augmented_inner_product", dict(theta=0.5, nu=0.1), 38),
])
def test_sheet_next_batch_size(test, kwargs, expected):
  step = jax.jit(lambda g, b: next_batch_size(g, b, 1000, test, **kwargs))
  assert int(step(SHEET, 4)) == expected


def test_global_statistics_treat_the_tree_as_one_concatenated_vector():
  tree = {"a": SHEET[:, :2], "b": SHEET[:, 2:]}
  np.testing.assert_allclose(norm_test(tree, 0.1), norm_test(SHEET, 0.1), rtol=1e-6)
  for test in (inner_product_test, orthogonality_test):
    np.testing.assert_allclose(test(tree, 0.1, statistics="global"), test(SHEET, 0.1),
                               rtol=1e-6)


# Two leaves, b = 5 per-example gradients: a (5, 3) vector leaf and a (5, 2, 2) matrix leaf.
TWO_LEAVES = {
    "a": np.array([[1.13, -0.63, 0.94], [1.1, -1.04, 0.66], [2.3, 0.45, -0.4],
                   [-0.27, -1.12, 0.34], [-1.33, -0.72, -0.95]]),
    "b": np.array([[[0.03, -0.07], [-0.96, 0.31]], [[0.92, 0.14], [-0.12, -0.23]],
                   [[0.58, 0.65], [-0.75, -0.27]], [[-0.06, -0.03], [-0.69, -0.4]],
                   [[0.3, 0.12], [-0.53, 0.21]]]),
}


def _numpy_inner_product_and_orthogonality(leaves, theta, nu):
  """Float64 (T_ip, T_orth) with the variances summed over `leaves`, each on its own mean,
  as timlautk/AdAdaGrad tests.py (`inner_product_test`, `orthogonality_test`) does."""
  ip_variance = orth_variance = mean_sq = 0.0
  for g in leaves:
    g = g.reshape(g.shape[0], -1)
    mean = g.mean(axis=0)
    dots = g @ mean
    ip_variance += np.var(dots, ddof=1)
    orth = g - np.outer(dots, mean) / (mean @ mean)
    orth_variance += np.var(orth, axis=0, ddof=1).sum()
    mean_sq += mean @ mean
  return ip_variance / (theta**2 * mean_sq**2), orth_variance / (nu**2 * mean_sq)


def test_inner_product_and_orthogonality_sum_per_tensor_statistics_by_default():
  theta, nu = 0.1, 0.2
  tree = {k: jnp.asarray(v, jnp.float32) for k, v in TWO_LEAVES.items()}
  per_tensor = _numpy_inner_product_and_orthogonality(list(TWO_LEAVES.values()), theta, nu)
  concatenated = np.concatenate([v.reshape(5, -1) for v in TWO_LEAVES.values()], axis=1)
  whole = _numpy_inner_product_and_orthogonality([concatenated], theta, nu)
  assert abs(per_tensor[0] / whole[0] - 1) > 0.05 and abs(per_tensor[1] / whole[1] - 1) > 0.05
  for statistics, (ip, orth) in (("per_tensor", per_tensor), ("global", whole)):
    np.testing.assert_allclose(inner_product_test(tree, theta, statistics=statistics), ip,
                               rtol=1e-5)
    np.testing.assert_allclose(orthogonality_test(tree, nu, statistics=statistics), orth,
                               rtol=1e-5)
    np.testing.assert_allclose(
        augmented_inner_product_test(tree, theta, nu, statistics=statistics), max(ip, orth),
        rtol=1e-5)
    np.testing.assert_allclose(adaptive_batch_statistic(
        tree, "augmented_inner_product", theta=theta, nu=nu, statistics=statistics),
        max(ip, orth), rtol=1e-5)
  np.testing.assert_allclose(inner_product_test(tree, theta), per_tensor[0], rtol=1e-5)
  np.testing.assert_allclose(orthogonality_test(tree, nu), per_tensor[1], rtol=1e-5)
  step = jax.jit(lambda g: next_batch_size(g, 5, 10_000, "augmented_inner_product",
                                           theta=theta, nu=nu))
  assert int(step(tree)) == int(np.ceil(max(per_tensor)))
  controller = AdaptiveBatchSizeController(5, 10_000, "inner_product", theta=theta,
                                           statistics="global")
  assert controller.update(tree) == max(5, int(np.ceil(whole[0])))


def test_per_tensor_orthogonality_keeps_a_zero_mean_leaf_whole():
  zero_mean = np.array([[1.0, -2.0], [-1.0, 2.0], [0.0, 0.0]])
  tree = {"a": jnp.asarray(TWO_LEAVES["a"][:3], jnp.float32),
          "z": jnp.asarray(zero_mean, jnp.float32)}
  a = TWO_LEAVES["a"][:3]
  mean = a.mean(axis=0)
  orth = a - np.outer(a @ mean, mean) / (mean @ mean)
  variance = np.var(orth, axis=0, ddof=1).sum() + np.var(zero_mean, axis=0, ddof=1).sum()
  np.testing.assert_allclose(orthogonality_test(tree, 0.5), variance / (0.25 * mean @ mean),
                             rtol=1e-5)


def _constructed(mean, sigma, batch):
  """Per-example gradients with exactly `mean` and unbiased coordinate variance sigma^2."""
  signs = np.where(np.arange(batch) % 2 == 0, 1.0, -1.0)  # zero mean, batch even
  z = signs / np.sqrt(np.sum(signs**2) / (batch - 1))  # unbiased variance exactly 1
  return jnp.asarray(np.asarray(mean)[None, :] + sigma * z[:, None], jnp.float32)


@pytest.mark.parametrize("target", [3.9, 4.1, 6.5, 7.5])
def test_norm_test_grows_exactly_when_statistic_crosses_batch(target):
  mean, eta, batch = np.array([1.0, -2.0, 0.5]), 0.3, 4
  # T = d sigma^2 / (eta^2 ||mean||^2); choose sigma so that T = target.
  sigma = np.sqrt(target * eta**2 * np.sum(mean**2) / mean.size)
  grads = _constructed(mean, sigma, batch)
  np.testing.assert_allclose(norm_test(grads, eta), target, rtol=1e-5)
  expected = batch if target <= batch else int(np.ceil(target))
  assert int(jax.jit(next_batch_size)(grads, batch, 100, eta=eta)) == expected


def test_batch_never_shrinks_and_is_capped():
  assert int(next_batch_size(SHEET, 10, 1000, eta=0.5)) == 10  # T = 1.6
  assert int(next_batch_size(SHEET, 4, 25, eta=0.1)) == 25  # T = 40 capped
  zero_mean = jnp.array([[1.0, 1.0], [-1.0, -1.0]])
  assert int(next_batch_size(zero_mean, 4, 77)) == 77


def test_controller_interval_and_stop_at_max():
  calm = _constructed(np.array([1.0, 1.0]), 0.01, 4)  # T ~ 0: no growth
  noisy = SHEET  # eta 0.1: T = 40
  controller = AdaptiveBatchSizeController(4, max_batch_size=50, eta=0.1, test_interval=2)
  assert controller.update(calm) == 4  # step 0: tested
  assert controller.update(noisy) == 4  # step 1: not due
  assert controller.update(noisy) == 40  # step 2: tested
  strong = _constructed(np.array([1.0, 1.0]), 100.0, 4)
  assert controller.update(strong) == 40  # step 3: not due
  assert controller.update(strong) == 50  # step 4: capped
  assert controller.update(calm) == 50


def test_statistic_dispatch():
  np.testing.assert_allclose(adaptive_batch_statistic(SHEET, "inner_product", theta=0.1),
                             inner_product_test(SHEET, 0.1))
  with pytest.raises(ValueError, match="test must be"):
    adaptive_batch_statistic(SHEET, "mean")


@pytest.mark.parametrize("call", [
    lambda: scale_learning_rate(0.1, 256, 512, "cubic"),
    lambda: scale_learning_rate(-0.1, 256, 512),
    lambda: scale_learning_rate(0.1, 0, 512),
    lambda: step_law(-1.0, 1e9),
    lambda: step_law(1e9, 0.0),
    lambda: norm_test({"a": jnp.ones((3, 2)), "b": jnp.ones((4,))}, 0.1),
    lambda: norm_test(jnp.ones((1, 3)), 0.1),
    lambda: AdaptiveBatchSizeController(test="mean"),
    lambda: AdaptiveBatchSizeController(eta=0.0),
    lambda: AdaptiveBatchSizeController(initial_batch_size=100, max_batch_size=10),
    lambda: AdaptiveBatchSizeController(test_interval=0),
    lambda: AdaptiveBatchSizeController(statistics="per_leaf"),
    lambda: inner_product_test(SHEET, 0.1, statistics="tensor"),
    lambda: adaptive_batch_statistic(SHEET, "norm", statistics="tensor"),
])
def test_invalid_arguments(call):
  with pytest.raises(ValueError):
    call()
