"""Learning rate and batch size: scaling rules, the Step Law, adaptive batch-size tests.

- `scale_learning_rate`: the maximal stable learning rate grows linearly with
  the batch size for SGD and with its square root for Adam (Granziol, Zohren,
  Roberts, Learning Rates as a Function of Batch Size: A Random Matrix Theory
  Approach to Neural Network Training, JMLR 2022). Both give ratios; the
  learning rate at the reference batch size must still be tuned.
- `step_law`: optimal peak learning rate and batch size (tokens per step) of
  AdamW LLM pre-training as power laws in non-embedding parameters N and
  tokens D (Li et al., Predictable Scale: Part I -- Optimal Hyperparameter
  Scaling Law in Large Language Model Pretraining, arXiv:2503.04715, 2025;
  repo step-law/steplaw).
- `norm_test`, `inner_product_test`, `orthogonality_test`,
  `augmented_inner_product_test`, `next_batch_size` and
  `AdaptiveBatchSizeController`: AdAdaGrad's adaptive batch sizes (Lau, Liu,
  Kolar, AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient
  Methods, arXiv:2402.11215; official code timlautk/AdAdaGrad), from the
  per-example gradients of the current batch (`jax.vmap(jax.grad(loss),
  in_axes=(None, 0))`; leading batch axis on every leaf).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from gradkit import _checks

# Predictable Scale, Part I (Step Law): eta* = 1.79 N^-0.713 D^0.307, B* = 0.58 D^0.571.
_STEP_LAW_LR = (1.79, -0.713, 0.307)
_STEP_LAW_BATCH = (0.58, 0.571)

TESTS = ("norm", "inner_product", "augmented_inner_product")
STATISTICS = ("per_tensor", "global")


def scale_learning_rate(
    base_learning_rate: float, base_batch_size: int, batch_size: int, rule: str = "linear"
) -> float:
  """eta(B) = eta(B0) (B/B0) for rule "linear" (SGD), eta(B0) sqrt(B/B0) for "sqrt" (Adam).

  Args:
    base_learning_rate: the tuned learning rate eta(B0) at the reference batch size.
    base_batch_size: the reference batch size B0.
    batch_size: the batch size B to scale to.
    rule: "linear" (SGD) or "sqrt" (Adam). Default "linear".

  Returns:
    The scaled learning rate eta(B).

  References:
    Granziol et al., "Learning Rates as a Function of Batch Size: A Random Matrix Theory Approach to
    Neural Network Training", JMLR 2022. https://arxiv.org/abs/2006.09092
  """
  _checks.check_non_negative("base_learning_rate", base_learning_rate)
  _checks.check_positive("base_batch_size", base_batch_size)
  _checks.check_positive("batch_size", batch_size)
  ratio = batch_size / base_batch_size
  if rule == "linear":
    return base_learning_rate * ratio
  if rule == "sqrt":
    return base_learning_rate * math.sqrt(ratio)
  raise ValueError(f"rule must be 'linear' (SGD) or 'sqrt' (Adam), got {rule!r}")


def step_law(n_params: float, n_tokens: float) -> tuple[float, float]:
  """(optimal peak lr, optimal batch size in tokens) by the Step Law.

  eta* = 1.79 N^-0.713 D^0.307 and B* = 0.58 D^0.571, with N the number of
  non-embedding parameters and D the number of training tokens; divide B* by
  the sequence length for sequences per step. Fitted on dense and MoE decoder
  LMs trained with AdamW and a fixed final learning rate of 1e-5: a default
  for experiment configs, not a law for other settings.

  Args:
    n_params: N, the number of non-embedding parameters.
    n_tokens: D, the number of training tokens.

  Returns:
    A tuple (learning rate, batch size in tokens).

  References:
    Li et al., "Predictable Scale: Part I -- Optimal Hyperparameter Scaling Law in Large Language
    Model Pretraining", 2025. https://arxiv.org/abs/2503.04715
  """
  _checks.check_positive("n_params", n_params)
  _checks.check_positive("n_tokens", n_tokens)
  c_lr, a_n, a_d = _STEP_LAW_LR
  c_b, b_d = _STEP_LAW_BATCH
  return c_lr * n_params**a_n * n_tokens**a_d, c_b * n_tokens**b_d


def _batch_stats(per_example_grads: Any) -> tuple[list[jax.Array], list[jax.Array], int]:
  """Leaves of the per-example gradients (float32, flattened per example) and their mean."""
  leaves = [jnp.reshape(g, (g.shape[0], -1)).astype(jnp.float32)
            for g in jax.tree.leaves(per_example_grads)]
  sizes = {g.shape[0] for g in leaves}
  if len(sizes) != 1 or min(sizes) < 2:
    raise ValueError("per_example_grads need the same leading batch axis, of size >= 2, "
                     f"on every leaf; got sizes {sorted(sizes)}")
  return leaves, [g.mean(axis=0) for g in leaves], sizes.pop()


def _ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  # A zero mean gradient makes every test fail: the statistic is +inf.
  return jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0),
                   jnp.inf)


def norm_test(per_example_grads: Any, eta: jax.typing.ArrayLike) -> jax.Array:
  """T = sum_j Var_i(g_ij) / (eta^2 ||g_bar||^2), unbiased 1/(b-1) variance.

  The batch passes the norm test when T <= b (AdAdaGrad's b_{k+1} = ceil(T)).

  Args:
    per_example_grads: gradient tree with a leading batch axis of size b >= 2
      on every leaf.
    eta: the norm test's tolerance (AdAdaGrad uses 0.1).

  Returns:
    The scalar statistic T (+inf when the mean gradient is zero).

  References:
    Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", 2024.
    https://arxiv.org/abs/2402.11215 ; official code: https://github.com/timlautk/AdAdaGrad
  """
  leaves, means, b = _batch_stats(per_example_grads)
  variance = sum(jnp.sum((g - m) ** 2) for g, m in zip(leaves, means)) / (b - 1)
  mean_sq = sum(jnp.sum(m**2) for m in means)
  return _ratio(variance, eta**2 * mean_sq)


def _check_statistics(statistics: str) -> None:
  if statistics not in STATISTICS:
    raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}")


def _unbiased_variance(x: jax.Array) -> jax.Array:
  """Sum over trailing axes of the 1/(b-1) variance along the batch axis 0."""
  return jnp.sum((x - x.mean(axis=0)) ** 2) / (x.shape[0] - 1)


def _projection_coefficients(leaves, means, statistics):
  """Per leaf, the (b,) coefficients <g_i, g_bar> / ||g_bar||^2 of the projection on g_bar.

  "per_tensor": each leaf on its own mean (zero for a leaf whose mean is
  zero: the projection on the zero vector); "global": every leaf on the
  whole mean vector.
  """
  dots = [g @ m for g, m in zip(leaves, means)]
  squares = [jnp.sum(m**2) for m in means]
  if statistics == "global":
    coef = _ratio(sum(dots), sum(squares))
    return [coef] * len(leaves)
  return [jnp.where(sq > 0, d / jnp.where(sq > 0, sq, 1.0), 0.0) for d, sq in zip(dots, squares)]


def inner_product_test(
    per_example_grads: Any, theta: jax.typing.ArrayLike, statistics: str = "per_tensor"
) -> jax.Array:
  """T = Var_i(<g_i, g_bar>) / (theta^2 ||g_bar||^4), unbiased 1/(b-1) variance.

  With `statistics="per_tensor"` (the official tests.py) the variance is
  sum_l Var_i(<g_i^l, g_bar^l>) over the leaves l; with "global" it is the
  variance of the inner product of the whole concatenated vectors,
  Var_i(sum_l <g_i^l, g_bar^l>), which adds the covariances between leaves.
  ||g_bar||^2 = sum_l ||g_bar^l||^2 either way; one leaf gives the same T.

  Args:
    per_example_grads: gradient tree with a leading batch axis of size b >= 2
      on every leaf.
    theta: the inner-product test's tolerance (AdAdaGrad uses 0.1).
    statistics: "per_tensor" (official) or "global" (static). Default "per_tensor".

  Returns:
    The scalar statistic T (+inf when the mean gradient is zero).

  References:
    Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", 2024.
    https://arxiv.org/abs/2402.11215 ; official code: https://github.com/timlautk/AdAdaGrad
  """
  _check_statistics(statistics)
  leaves, means, _ = _batch_stats(per_example_grads)
  dots = [g @ m for g, m in zip(leaves, means)]
  if statistics == "global":
    variance = _unbiased_variance(sum(dots))
  else:
    variance = sum(_unbiased_variance(d) for d in dots)
  mean_sq = sum(jnp.sum(m**2) for m in means)
  return _ratio(variance, theta**2 * mean_sq**2)


def orthogonality_test(
    per_example_grads: Any, nu: jax.typing.ArrayLike, statistics: str = "per_tensor"
) -> jax.Array:
  """T = sum_j Var_i([g_i - (<g_i,g_bar>/||g_bar||^2) g_bar]_j) / (nu^2 ||g_bar||^2).

  With `statistics="per_tensor"` (the official tests.py) each leaf's
  per-example gradients are projected off that leaf's own mean,
  g_i^l - (<g_i^l, g_bar^l>/||g_bar^l||^2) g_bar^l, and the variances are
  summed over leaves (a leaf with a zero mean keeps g_i^l whole); with
  "global" the projection is on the whole concatenated mean vector. The
  denominator is nu^2 sum_l ||g_bar^l||^2 either way; one leaf gives the same T.

  Args:
    per_example_grads: gradient tree with a leading batch axis of size b >= 2
      on every leaf.
    nu: the orthogonality test's tolerance (AdAdaGrad uses 0.1).
    statistics: "per_tensor" (official) or "global" (static). Default "per_tensor".

  Returns:
    The scalar statistic T (+inf when the mean gradient is zero).

  References:
    Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", 2024.
    https://arxiv.org/abs/2402.11215 ; official code: https://github.com/timlautk/AdAdaGrad
  """
  _check_statistics(statistics)
  leaves, means, _ = _batch_stats(per_example_grads)
  coefs = _projection_coefficients(leaves, means, statistics)
  variance = sum(_unbiased_variance(g - c[:, None] * m[None, :])
                 for g, m, c in zip(leaves, means, coefs))
  mean_sq = sum(jnp.sum(m**2) for m in means)
  return _ratio(variance, nu**2 * mean_sq)


def augmented_inner_product_test(
    per_example_grads: Any,
    theta: jax.typing.ArrayLike,
    nu: jax.typing.ArrayLike,
    statistics: str = "per_tensor",
) -> jax.Array:
  """max(inner-product test with theta, orthogonality test with nu).

  Args:
    per_example_grads: gradient tree with a leading batch axis of size b >= 2
      on every leaf.
    theta: tolerance of the inner-product test.
    nu: tolerance of the orthogonality test.
    statistics: "per_tensor" (official) or "global" (static); see
      `inner_product_test`. Default "per_tensor".

  Returns:
    The scalar statistic T.

  References:
    Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", 2024.
    https://arxiv.org/abs/2402.11215 ; official code: https://github.com/timlautk/AdAdaGrad
  """
  return jnp.maximum(inner_product_test(per_example_grads, theta, statistics),
                     orthogonality_test(per_example_grads, nu, statistics))


def adaptive_batch_statistic(
    per_example_grads: Any,
    test: str = "norm",
    eta: jax.typing.ArrayLike = 0.1,
    theta: jax.typing.ArrayLike = 0.1,
    nu: jax.typing.ArrayLike = 0.1,
    statistics: str = "per_tensor",
) -> jax.Array:
  """The statistic of `test` ("norm", "inner_product" or "augmented_inner_product").

  Args:
    per_example_grads: gradient tree with a leading batch axis of size b >= 2
      on every leaf.
    test: "norm", "inner_product" or "augmented_inner_product". Default "norm".
    eta: tolerance of the norm test. Default 0.1.
    theta: tolerance of the inner-product test. Default 0.1.
    nu: tolerance of the orthogonality test. Default 0.1.
    statistics: "per_tensor" (official: per-leaf inner products and
      projections, summed) or "global" (the concatenated vector) for the
      inner-product and orthogonality tests; the norm test is the same
      either way. Default "per_tensor".

  Returns:
    The scalar statistic T.

  References:
    Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", 2024.
    https://arxiv.org/abs/2402.11215 ; official code: https://github.com/timlautk/AdAdaGrad
  """
  _check_statistics(statistics)
  if test == "norm":
    return norm_test(per_example_grads, eta)
  if test == "inner_product":
    return inner_product_test(per_example_grads, theta, statistics)
  if test == "augmented_inner_product":
    return augmented_inner_product_test(per_example_grads, theta, nu, statistics)
  raise ValueError(f"test must be one of {TESTS}, got {test!r}")


def next_batch_size(
    per_example_grads: Any,
    batch_size: jax.typing.ArrayLike,
    max_batch_size: jax.typing.ArrayLike,
    test: str = "norm",
    eta: jax.typing.ArrayLike = 0.1,
    theta: jax.typing.ArrayLike = 0.1,
    nu: jax.typing.ArrayLike = 0.1,
    statistics: str = "per_tensor",
) -> jax.Array:
  """b_{k+1} = min(max(b_k, ceil(T)), max_batch_size), T = `adaptive_batch_statistic` (int32).

  Pure and jit-able with `test` static; the batch never shrinks. Defaults are
  the official code's (eta = theta = nu = 0.1); a vanishing mean gradient
  sends the batch to `max_batch_size`.

  Args:
    per_example_grads: gradient tree with a leading batch axis of size b >= 2
      on every leaf.
    batch_size: the current batch size b_k.
    max_batch_size: the cap on the batch size.
    test: "norm", "inner_product" or "augmented_inner_product" (static under
      jit). Default "norm".
    eta: tolerance of the norm test. Default 0.1.
    theta: tolerance of the inner-product test. Default 0.1.
    nu: tolerance of the orthogonality test. Default 0.1.
    statistics: "per_tensor" (official) or "global" (static); see
      `adaptive_batch_statistic`. Default "per_tensor".

  Returns:
    The next batch size as an int32 scalar.

  References:
    Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", 2024.
    https://arxiv.org/abs/2402.11215 ; official code: https://github.com/timlautk/AdAdaGrad
  """
  statistic = adaptive_batch_statistic(per_example_grads, test, eta, theta, nu, statistics)
  cap = jnp.asarray(max_batch_size, jnp.float32)
  # The 1e-6 relative slack keeps float32 round-off on an integer-valued
  # statistic (40.000004 for 40) from adding a sample.
  grown = jnp.ceil(jnp.minimum(statistic, cap) * (1.0 - 1e-6))
  return jnp.minimum(jnp.maximum(jnp.asarray(batch_size, jnp.float32), grown), cap).astype(
      jnp.int32)


class AdaptiveBatchSizeController:
  """The batch size for the next step of a training loop (host-side state).

  Every `test_interval` steps while the batch is below `max_batch_size`,
  `update(per_example_grads)` applies `next_batch_size` (jitted once per
  input shape) to the current batch's per-example gradients. Defaults are the
  official code's: norm test, eta = theta = nu = 0.1, interval 1, initial
  batch 64, maximum 50,000, per-tensor statistics. The caller maps the global batch onto
  micro-batches / accumulation steps (bucketing sizes limits recompiles).

  Args:
    initial_batch_size: the batch size of the first steps. Default 64.
    max_batch_size: the cap on the batch size. Default 50_000.
    test: "norm", "inner_product" or "augmented_inner_product". Default "norm".
    eta: tolerance of the norm test. Default 0.1.
    theta: tolerance of the inner-product test. Default 0.1.
    nu: tolerance of the orthogonality test. Default 0.1.
    test_interval: steps between two tests. Default 1.
    statistics: "per_tensor" (official) or "global"; see
      `adaptive_batch_statistic`. Default "per_tensor".

  References:
    Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", 2024.
    https://arxiv.org/abs/2402.11215 ; official code: https://github.com/timlautk/AdAdaGrad

  Example:
    >>> controller = AdaptiveBatchSizeController(initial_batch_size=4, max_batch_size=100)
    >>> grads = jnp.array([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0], [2.0, -1.0, 1.0], [2.0, 0.0, 1.0]])
    >>> controller.update(grads)
    40
  """

  def __init__(
      self,
      initial_batch_size: int = 64,
      max_batch_size: int = 50_000,
      test: str = "norm",
      eta: float = 0.1,
      theta: float = 0.1,
      nu: float = 0.1,
      test_interval: int = 1,
      statistics: str = "per_tensor",
  ):
    if test not in TESTS:
      raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    _check_statistics(statistics)
    for name, value in (("eta", eta), ("theta", theta), ("nu", nu)):
      _checks.check_positive(name, value)
    for name, value in (("initial_batch_size", initial_batch_size),
                        ("max_batch_size", max_batch_size), ("test_interval", test_interval)):
      if int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if max_batch_size < initial_batch_size:
      raise ValueError("max_batch_size must be >= initial_batch_size, got "
                       f"{max_batch_size} < {initial_batch_size}")
    self.batch_size = int(initial_batch_size)
    self.max_batch_size = int(max_batch_size)
    self.test_interval = int(test_interval)
    self.step = 0
    self._next = jax.jit(lambda g, b: next_batch_size(
        g, b, self.max_batch_size, test, eta, theta, nu, statistics))

  def update(self, per_example_grads: Any) -> int:
    """Runs the test if due and returns the batch size for the next step."""
    due = self.step % self.test_interval == 0 and self.batch_size < self.max_batch_size
    self.step += 1
    if due:
      self.batch_size = int(self._next(per_example_grads, self.batch_size))
    return self.batch_size
