"""Bias-variance optimal mixing of two gradient estimators (BVPO).

BVPO mixes the gradient of a preference loss on a sampled reasoning trace
(g_t: unbiased, high variance) with the gradient of the same loss with the
trace disabled (g_e: biased, low variance), g_c = alpha g_t + (1 - alpha) g_e.
With G the true gradient, biases b = E[g] - G, total variances
V = E||g - E g||^2 and cross-covariance C = E<g_t - E g_t, g_e - E g_e>,

  MSE(alpha) = ||alpha b_t + (1 - alpha) b_e||^2 + alpha^2 V_t
               + (1 - alpha)^2 V_e + 2 alpha (1 - alpha) C

is a convex quadratic in alpha, minimised at

  alpha* = (V_e - C + ||b_e||^2 - <b_t, b_e>) / (V_t + V_e - 2C + ||b_t - b_e||^2),

clipped to [0, 1]. The paper states an MSE-optimal closed form without a
readable derivation; this is the derivation of the algorithm sheet (with
C = 0 and b_t = 0 it is (V_e + ||b_e||^2) / (V_t + V_e + ||b_e||^2)).

References:
  Zhu et al., From Noisy Traces to Stable Gradients: Bias-Variance Optimized
  Preference Optimization for Aligning Large Reasoning Models, arXiv
  2510.05095, 2025.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks


def mse_optimal_mixing_weight(
    var_first: jax.typing.ArrayLike,
    var_second: jax.typing.ArrayLike,
    covariance: jax.typing.ArrayLike = 0.0,
    bias_first_sq: jax.typing.ArrayLike = 0.0,
    bias_second_sq: jax.typing.ArrayLike = 0.0,
    bias_inner: jax.typing.ArrayLike = 0.0,
) -> jax.Array:
  """alpha* in [0, 1], the weight of the first estimator minimising the MSE.

  Args:
    var_first: V_t, total variance E||g_t - E g_t||^2 of the first estimator.
    var_second: V_e, likewise for the second.
    covariance: C = E<g_t - E g_t, g_e - E g_e>. Default 0.0.
    bias_first_sq: ||b_t||^2 (0 for an unbiased first estimator). Default 0.0.
    bias_second_sq: ||b_e||^2. Default 0.0.
    bias_inner: <b_t, b_e>. Default 0.0.

  Returns:
    The float32 weight; 1/2 when the MSE does not depend on alpha.

  References:
    Zhu et al., "From Noisy Traces to Stable Gradients: Bias-Variance Optimized Preference
    Optimization for Aligning Large Reasoning Models", 2025. https://arxiv.org/abs/2510.05095
  """
  numerator = var_second - covariance + bias_second_sq - bias_inner
  denominator = var_first + var_second - 2.0 * covariance + (
      bias_first_sq + bias_second_sq - 2.0 * bias_inner)
  alpha = jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0),
                    0.5)
  return jnp.clip(jnp.asarray(alpha, jnp.float32), 0.0, 1.0)


def mixing_weight_from_samples(
    first_samples: Any, second_samples: Any, bias_second_sq: jax.typing.ArrayLike = 0.0
) -> jax.Array:
  """alpha* from paired samples (leading axis n >= 2) of both estimators.

  V_t, V_e and C are the unbiased sample estimates summed over every
  coordinate of the trees; the first estimator is taken as unbiased and the
  second's squared bias ||b_e||^2, which samples cannot reveal, is given.

  Args:
    first_samples: n >= 2 samples of the first (unbiased) estimator, a tree
      with a leading sample axis.
    second_samples: the paired samples of the second estimator, same
      structure.
    bias_second_sq: ||b_e||^2, the second estimator's squared bias. Default 0.0.

  Returns:
    The weight alpha* in [0, 1] of the first estimator, a scalar.

  References:
    Zhu et al., "From Noisy Traces to Stable Gradients: Bias-Variance Optimized Preference
    Optimization for Aligning Large Reasoning Models", 2025. https://arxiv.org/abs/2510.05095
  """

  def total(fn):
    return sum(jnp.sum(fn(a, b)) for a, b in zip(jax.tree.leaves(first_samples),
                                                  jax.tree.leaves(second_samples)))

  def centred(x):
    x = jnp.asarray(x, jnp.float32)
    return x - jnp.mean(x, axis=0)

  n = jax.tree.leaves(first_samples)[0].shape[0]
  if n < 2:
    raise ValueError(f"mixing_weight_from_samples needs n >= 2 samples, got {n}")
  var_first = total(lambda a, b: centred(a) ** 2) / (n - 1)
  var_second = total(lambda a, b: centred(b) ** 2) / (n - 1)
  covariance = total(lambda a, b: centred(a) * centred(b)) / (n - 1)
  return mse_optimal_mixing_weight(var_first, var_second, covariance,
                                   bias_second_sq=bias_second_sq)


def mix_gradients(alpha: jax.typing.ArrayLike = 0.5) -> optax.GradientTransformationExtraArgs:
  """g_c = alpha g + (1 - alpha) aux_grads: BVPO's combined gradient.

  `update(grads, state, params, aux_grads=...)` with `grads` the first
  estimator (trace-based) and `aux_grads` the second (empty-trace), a tree
  shaped like `grads`. Stateless. Chain it in front of any optimizer; pick
  alpha with `mse_optimal_mixing_weight` / `mixing_weight_from_samples`, or
  tune it (inject a schedule with `optax.inject_hyperparams`).

  Args:
    alpha: weight of `grads`, in [0, 1]. Default 0.5.

  References:
    Zhu et al., "From Noisy Traces to Stable Gradients: Bias-Variance Optimized Preference
    Optimization for Aligning Large Reasoning Models", 2025. https://arxiv.org/abs/2510.05095

  Example:
    >>> import optax, jax.numpy as jnp
    >>> tx = optax.chain(mix_gradients(0.3), optax.adam(1e-3))
    >>> p = jnp.zeros(2)
    >>> u, _ = tx.update(jnp.ones(2), tx.init(p), p, aux_grads=jnp.zeros(2))
  """
  _checks.check_unit_interval("alpha", alpha, closed=True)

  def update_fn(updates, state, params=None, *, aux_grads: Any = None, **extra_args):
    del params, extra_args
    if aux_grads is None:
      raise TypeError("mix_gradients needs the second estimator: call "
                      "update(grads, state, params, aux_grads=...)")

    def mix(g, e):
      # float32 at least (bf16 gradients mix in float32), float64 stays float64.
      dtype = jnp.promote_types(g.dtype, jnp.float32)
      return (jnp.asarray(alpha, dtype) * g.astype(dtype)
              + jnp.asarray(1.0 - alpha, dtype) * e.astype(dtype)).astype(g.dtype)

    mixed = jax.tree.map(mix, updates, aux_grads)
    return mixed, state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
