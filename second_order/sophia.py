"""Sophia with the Hutchinson (Sophia-H) or Gauss-Newton-Bartlett (Sophia-G) estimator.

Liu, Li, Hall, Liang & Ma, "Sophia: A Scalable Stochastic Second-order
Optimizer for Language Model Pre-training", ICLR 2024 (arXiv 2305.14342);
official code Liuhong99/Sophia (SophiaG). The step is optax.contrib.sophia's
(0.2.8; its `scale_by_sophia` is not exported, so gradkit carries the few
lines, checked against `optax.contrib.sophia`): u = clip(m̂ / max(γ h, eps), ±1),
m̂ the bias-corrected momentum, h the EMA of the estimate (not corrected),
refreshed in a `lax.cond` when the step count before the update is a
multiple of `update_interval` (steps 1, k+1, ...; the step that refreshes h
still uses the old h). gradkit supplies the estimators and the shared tail
(decoupled weight decay added after clipping, then -lr).

Gauss-Newton-Bartlett (paper, Algorithm 2): with labels ŷ sampled from the
model's own predictive distribution and L̂ the mean loss over the B label
positions, ĥ = B · ∇L̂ ⊙ ∇L̂, whose expectation is the diagonal of the
batch-mean Gauss-Newton matrix. gradkit folds B into the sampled objective:
`sampled_obj_fn(params, key)` returns √B · L̂ (= Σ_b ℓ_b / √B), and the
estimator is the square of its gradient. `sampled_cross_entropy` builds it
from a logits function, taking B from the logits' shape (or from a mask).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, optax_alias, recipe
from gradkit.registry import register
from gradkit.second_order.hutchinson import estimate_hutchinson_diagonal

Params = Any


def sampled_cross_entropy(
    logits_fn: Callable[[Params], jax.Array], where: jax.Array | None = None
) -> Callable[[Params, jax.Array], jax.Array]:
  """`sampled_obj_fn` for a categorical model: (params, key) -> Σ_b CE(logits_b, ŷ_b) / √B.

  `logits_fn(params)` returns logits of shape (..., vocab) for the current
  batch (same batch and randomness as the gradient). Labels ŷ_b ~
  categorical(logits_b) are drawn from `key` without gradient. B, the
  number of label positions, is the product of the leading dimensions, or
  `where.sum()` when a boolean/0-1 mask `where` of shape (...) marks the
  positions that count (padding excluded), as the paper's B counts tokens.

  Example, inside a jitted Flax NNX train step on inputs `x` (the model's
  other state, BatchNorm statistics and RNG counts, held fixed as plain
  arrays; `gradkit.flax_helpers.nnx_param_function(model, lambda m: m(x),
  mode="current")` builds the same `logits_fn`):
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    rest = nnx.as_pure(rest)
    sampled = sampled_cross_entropy(lambda p: nnx.merge(graphdef, p, rest)(x))
    optimizer.update(model, grads, sampled_obj_fn=sampled)

  Args:
    logits_fn: params -> logits of shape (..., vocab) for the current batch.
    where: boolean or 0-1 mask of shape (...) marking the positions that count;
      None counts every position. Default None.

  Returns:
    The `sampled_obj_fn(params, key)` for `sophia_g`.

  References:
    Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training", ICLR 2024. https://arxiv.org/abs/2305.14342 ; official code:
    https://github.com/Liuhong99/Sophia
  """

  def sampled_obj_fn(params: Params, key: jax.Array) -> jax.Array:
    logits = logits_fn(params).astype(jnp.float32)
    labels = jax.random.categorical(key, jax.lax.stop_gradient(logits))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if where is None:
      return jnp.sum(losses) / jnp.sqrt(losses.size)
    weights = jnp.asarray(where, jnp.float32)
    return jnp.sum(losses * weights) / jnp.sqrt(jnp.sum(weights))

  return sampled_obj_fn


class EstimateGaussNewtonBartlettState(NamedTuple):
  """PRNG key of the next label draw."""

  key: jax.Array


def estimate_gauss_newton_bartlett_diagonal(seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Replaces the updates by ∇s ⊙ ∇s, s = sampled_obj_fn(params, key): GNB's ĥ.

  `update(..., params, sampled_obj_fn=...)` is required (see the module
  docstring for its √B scaling); each call splits the carried key
  (`jax.random.PRNGKey(seed)` at init) and passes the subkey to it.

  Args:
    seed: seed of the label draws, carried in the state. Default 0.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` needs
    `sampled_obj_fn=` and `params`.

  References:
    Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training", ICLR 2024. https://arxiv.org/abs/2305.14342 ; official code:
    https://github.com/Liuhong99/Sophia
  """

  def init_fn(params):
    del params
    return EstimateGaussNewtonBartlettState(key=jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None, sampled_obj_fn=None, **extra_args):
    del updates, extra_args
    if sampled_obj_fn is None:
      raise ValueError(
          "the Gauss-Newton-Bartlett estimator needs sampled_obj_fn= ((params, key) -> "
          "sqrt(B) x mean loss on labels sampled from the model; see "
          "gradkit.second_order.sampled_cross_entropy) in update")
    if params is None:
      raise ValueError("the Gauss-Newton-Bartlett estimator needs params in update")
    key, subkey = jax.random.split(state.key)
    grads = jax.grad(sampled_obj_fn)(params, subkey)
    return jax.tree.map(jnp.square, grads), EstimateGaussNewtonBartlettState(key=key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleBySophiaState(NamedTuple):
  """Step count, momentum, EMA of the Hessian-diagonal estimate, the estimator's state."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  estimator_state: Any


def _scale_by_sophia(b1, b2, eps, gamma, clip_threshold, update_interval, estimator):
  """optax.contrib.sophia's step: clip(m̂ / max(γ h, eps)), h refreshed by `estimator`."""
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("eps", eps)
  _checks.check_non_negative("gamma", gamma)
  _checks.check_positive("clip_threshold", clip_threshold)
  _checks.check_positive("update_interval", update_interval)
  estimator = optax.with_extra_args_support(estimator)

  def init_fn(params):
    return ScaleBySophiaState(
        count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
        nu=optax.tree.zeros_like(params), estimator_state=estimator.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("sophia needs params in update")
    count = optax.safe_increment(state.count)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    direction = jax.tree.map(lambda m, h: m / jnp.maximum(gamma * h, eps), mu_hat, state.nu)
    if clip_threshold is not None:
      direction = jax.tree.map(lambda u: jnp.clip(u, -clip_threshold, clip_threshold), direction)

    def refresh(estimator_state, nu):
      estimate, estimator_state = estimator.update(updates, estimator_state, params, **extra_args)
      return estimator_state, optax.tree.update_moment(estimate, nu, b2, 1)

    # The refresh after this step's direction, when the count before it is a multiple of k.
    estimator_state, nu = jax.lax.cond(
        state.count % update_interval == 0, refresh, lambda s, n: (s, n),
        state.estimator_state, state.nu)
    return direction, ScaleBySophiaState(count, mu, nu, estimator_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("sophia")
def sophia(
    learning_rate: optax.ScalarOrSchedule = 6e-4,
    b1: float = 0.965,
    b2: float = 0.99,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    gamma: float = 0.01,
    clip_threshold: float = 1.0,
    update_interval: int = 10,
    num_probes: int | None = None,
    seed: int = 0,
    mask: MaskOrFn = None,
    *,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """Sophia-H: p <- p - lr (clip(m̂ / max(γ h, eps), ±1) + wd p), h the Hutchinson EMA.

  Equals `optax.contrib.sophia` with the same hyperparameters (its defaults
  here; with one probe and seed 0 the very same probes). lr defaults to the
  official GPT-2 small value 6e-4 (the README: about AdamW's lr), since
  optax has no default. `update` needs `obj_fn=` (params -> scalar loss of
  the current batch) on every step, as optax's. optax's argument name
  `weight_decay_mask` is accepted for `mask`.

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 6e-4.
    b1: EMA rate of the gradient. Default 0.965.
    b2: EMA rate of the Hessian diagonal h. Default 0.99.
    eps: Lower bound of γ h in the denominator. Default 1e-8.
    weight_decay: Decoupled weight-decay rate, applied after the clip.
      Default 1e-4.
    gamma: γ, scale of h in the denominator. Default 0.01.
    clip_threshold: the per-coordinate bound of the direction. Default 1.0.
    update_interval: k, steps between Hessian refreshes. Default 10.
    num_probes: Rademacher probes per refresh (static; None means 1). Default None.
    seed: probe seed, carried in the state. Default 0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    weight_decay_mask: optax.contrib.sophia's name for `mask` (an alias;
      passing both is a ValueError). Default None.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` needs `obj_fn=`.

  References:
    Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training", ICLR 2024. https://arxiv.org/abs/2305.14342 ; official code:
    https://github.com/Liuhong99/Sophia
  """
  return recipe(
      _scale_by_sophia(b1, b2, eps, gamma, clip_threshold, update_interval,
                       estimate_hutchinson_diagonal(num_probes, seed)),
      learning_rate=learning_rate, weight_decay=weight_decay,
      mask=optax_alias("mask", mask, None, "weight_decay_mask", weight_decay_mask),
  )


@register("sophia_g")
def sophia_g(
    learning_rate: optax.ScalarOrSchedule = 1e-4,
    b1: float = 0.965,
    b2: float = 0.99,
    eps: float = 1e-15,
    weight_decay: optax.ScalarOrSchedule = 0.1,
    gamma: float = 0.04,
    clip_threshold: float = 1.0,
    update_interval: int = 10,
    seed: int = 0,
    mask: MaskOrFn = None,
    *,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """Sophia-G: Sophia with the Gauss-Newton-Bartlett estimator ĥ = B ĝ ⊙ ĝ.

  Defaults are the official `SophiaG` class's (lr 1e-4, betas (0.965, 0.99),
  rho 0.04, weight decay 0.1, eps 1e-15, refresh every 10 steps). The
  official rho multiplies the batch's token count times the EMA of ĝ⊙ĝ,
  i.e. it is γ for h = EMA(B ĝ⊙ĝ), which is what gradkit stores. `update`
  needs `sampled_obj_fn=` ((params, key) -> √B × mean loss on labels sampled
  from the model; `sampled_cross_entropy` builds it).

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-4.
    b1: EMA rate of the gradient. Default 0.965.
    b2: EMA rate of the Hessian diagonal h. Default 0.99.
    eps: Lower bound of γ h in the denominator. Default 1e-15.
    weight_decay: Decoupled weight-decay rate, applied after the clip.
      Default 0.1.
    gamma: γ, the official rho. Default 0.04.
    clip_threshold: the per-coordinate bound of the direction. Default 1.0.
    update_interval: k, steps between Hessian refreshes. Default 10.
    seed: seed of the label draws, carried in the state. Default 0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    weight_decay_mask: optax.contrib.sophia's name for `mask` (an alias;
      passing both is a ValueError). Default None.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` needs
    `sampled_obj_fn=`.

  References:
    Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training", ICLR 2024. https://arxiv.org/abs/2305.14342 ; official code:
    https://github.com/Liuhong99/Sophia
  """
  return recipe(
      _scale_by_sophia(b1, b2, eps, gamma, clip_threshold, update_interval,
                       estimate_gauss_newton_bartlett_diagonal(seed)),
      learning_rate=learning_rate, weight_decay=weight_decay,
      mask=optax_alias("mask", mask, None, "weight_decay_mask", weight_decay_mask),
  )
