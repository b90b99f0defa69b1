"""Optimistic online mirror descent with the last gradient as the hint.

OMD with hint M_t keeps an internal point x^ and plays x_t from it:

  x_t = argmin_x <eta M_t, x> + B(x, x^_t),
  x^_{t+1} = argmin_x <eta g_t, x> + B(x, x^_t),  M_{t+1} = g_t,  M_1 = 0,

with B the Bregman divergence of the mirror map. Two maps are provided:

- Euclidean, unconstrained (`scale_by_optimistic_omd`): the played points
  follow x_{t+1} = x_t - eta (2 g_t - g_{t-1}) with g_0 = 0. That is optax's
  `scale_by_optimistic_gradient(alpha=1, beta=1)` except at the first step,
  where optax substitutes g_0 := g_1 (optax issue #1082) and moves by eta g_1
  while OMD with M_1 = 0 moves by 2 eta g_1; we reuse optax's transform and
  only start it with a zero previous gradient;
- entropy on the probability simplex (`optimistic_multiplicative_weights`):
  multiplicative weights with the optimistic correction.

References:
  S. Chen, Y.-J. Tu, P. Zhao, L. Zhang, Optimistic Online Mirror Descent for
  Bridging Stochastic and Adversarial Online Convex Optimization, ICML 2023.
  A. Rakhlin, K. Sridharan, Optimization, Learning, and Games with
  Predictable Sequences, NeurIPS 2013.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks


def scale_by_optimistic_omd() -> optax.GradientTransformation:
  """Euclidean optimistic OMD direction u_t = 2 g_t - g_{t-1}, g_0 = 0.

  optax's `scale_by_optimistic_gradient(1, 1)` with its state started as if a
  zero gradient had been seen (the hint M_1 = 0 of OMD), so the first output
  is 2 g_1 rather than optax's g_1; afterwards the two are identical. Chain
  with `optax.scale_by_learning_rate(eta)`. State: the previous gradient.

  References:
    Chen, Zhang, Tu, Zhao & Zhang, "Optimistic Online Mirror Descent for Bridging Stochastic and
    Adversarial Online Convex Optimization", ICML 2023. https://arxiv.org/abs/2302.04552

  Example:
    >>> import optax
    >>> tx = optax.chain(scale_by_optimistic_omd(), optax.scale_by_learning_rate(0.1))
  """
  inner = optax.scale_by_optimistic_gradient(alpha=1.0, beta=1.0)

  def init_fn(params):
    return inner.init(params)._replace(is_initial_step=jnp.array(False))

  return optax.GradientTransformation(init_fn, inner.update)


class OptimisticMultiplicativeWeightsState(NamedTuple):
  """Step count and log x^_t, the internal point of OMD with the entropy map.

  The hint M_{t+1} = g_t is used in the same step it arrives, so no gradient
  is stored.
  """

  count: jax.Array  # int32: steps taken (the schedule's argument)
  log_internal: optax.Params  # the params' dtype (float32 at least), normalized along `axis`


def optimistic_multiplicative_weights(
    learning_rate: optax.ScalarOrSchedule = 0.1, axis: int = -1
) -> optax.GradientTransformation:
  """Optimistic OMD with the (negative) entropy map on the probability simplex.

  Every leaf holds distributions along `axis` (positive entries summing to
  one). With the last gradient as the hint:

    x^_{t+1} ∝ x^_t exp(-eta g_t),   x_{t+1} ∝ x^_{t+1} exp(-eta g_t),

  starting from x^_1 = x_1 = the initial params (M_1 = 0); the normalisation
  is along `axis`, computed in log space. The output is the update
  x_{t+1} - x_t, so the caller's params are the played points; it already
  contains the step size (multiplicative rules do not end with -lr) and is
  the complete optimizer.

  Args:
    learning_rate: eta, a float or an optax schedule of the step count. Default 0.1.
    axis: the simplex axis of every leaf (static). Default -1.

  Returns:
    An `optax.GradientTransformation` that needs `params` in `update`.

  References:
    Chen, Zhang, Tu, Zhao & Zhang, "Optimistic Online Mirror Descent for Bridging Stochastic and
    Adversarial Online Convex Optimization", ICML 2023. https://arxiv.org/abs/2302.04552
  """
  _checks.check_rate("learning_rate", learning_rate)

  def eta(count):
    return learning_rate(count) if callable(learning_rate) else learning_rate

  def init_fn(params):
    log_internal = jax.tree.map(
        lambda p: jax.nn.log_softmax(
            jnp.log(p.astype(jnp.promote_types(p.dtype, jnp.float32))), axis=axis), params)
    return OptimisticMultiplicativeWeightsState(jnp.zeros([], jnp.int32), log_internal)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("optimistic_multiplicative_weights needs params (the played points)")
    step = eta(state.count)
    # Computed in the state's dtype, whatever an injected eta's dtype.
    grads = jax.tree.map(lambda g, log_x: g.astype(log_x.dtype), updates, state.log_internal)
    steps = jax.tree.map(lambda log_x: jnp.asarray(step, log_x.dtype), state.log_internal)
    log_internal = jax.tree.map(
        lambda g, log_x, eta_t: jax.nn.log_softmax(log_x - eta_t * g, axis=axis),
        grads, state.log_internal, steps)
    new_updates = jax.tree.map(
        lambda g, log_x, eta_t, p: (jax.nn.softmax(log_x - eta_t * g, axis=axis)
                                    - p.astype(log_x.dtype)).astype(p.dtype),
        grads, log_internal, steps, params)
    return new_updates, OptimisticMultiplicativeWeightsState(
        optax.safe_increment(state.count), log_internal)

  return optax.GradientTransformation(init_fn, update_fn)
