"""Normalized momentum with implicit gradient transport (N-PG-IGT) and HARPG.

Both keep a momentum d of gradients and step along d / ||d|| (||.|| the
global norm over the whole tree, as the paper's parameter vector); they
differ in how the momentum is kept free of the bias stale gradients bring:

- `scale_by_normalized_igt` (N-PG-IGT): the gradient is taken at the
  extrapolated point th~_t = th_t + ((1 - eta)/eta)(th_t - th_{t-1}). The
  parameters the caller holds ARE that point, so an ordinary gradient of the
  loss at the caller's params is what the rule needs;
- `scale_by_harpg` ((N-)HARPG): the recursive correction
  v_t = H(th^_t)(th_t - th_{t-1}) at a uniformly random point
  th^_t = q th_t + (1 - q) th_{t-1} (q ~ U[0, 1]) makes the momentum an
  unbiased gradient estimate, since E_q[H(th^)(th_t - th_{t-1})] =
  grad(th_t) - grad(th_{t-1}).

Sign convention: these minimise a loss (ascent on the return J is descent on
-J); chain them with a negative learning rate (`optax.scale_by_learning_rate`).

References:
  I. Fatkhullin, A. Barakat, A. Kireeva, N. He, Stochastic Policy Gradient
  Methods: Improved Sample Complexity for Fisher-non-degenerate Policies,
  ICML 2023 (Algorithms N-PG-IGT and (N-)HARPG; no official code found).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.curvature_products import hessian_vector_product


def _normalized(tree: Any) -> Any:
  """tree / ||tree|| (global norm); zero where the norm is zero."""
  norm = optax.tree.norm(tree)
  scale = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
  return jax.tree.map(lambda x: x * scale.astype(x.dtype), tree)


class ScaleByNormalizedIgtState(NamedTuple):
  """Step count, momentum d_{t-1} and the extrapolation offset held in the caller's params."""

  count: jax.Array  # int32: steps taken; a schedule eta is read at count and count + 1
  momentum: optax.Updates  # d_{t-1}, float32; zeros at t = 0
  offset: optax.Updates  # ((1 - eta_t)/eta_t) * (last normalized direction); zeros at t = 0


def scale_by_normalized_igt(eta: optax.ScalarOrSchedule = 0.1) -> optax.GradientTransformation:
  """N-PG-IGT: normalized momentum of gradients taken at an extrapolated point.

  The caller's params are the extrapolated point th~_t, where the gradient
  is evaluated; the true iterate th_t = th~_t + lr * offset_t is kept
  implicit. With D_t = d_t / ||d_t|| and the momentum

    d_t = (1 - eta_t) d_{t-1} + eta_t g(th~_t),  d_{-1} = 0,

  the true iterate moves th_{t+1} = th_t - lr D_t; the output moves the
  caller's params from th~_t to the next gradient point, extrapolated with
  the next step's weight as in the paper,
  th~_{t+1} = th_{t+1} + ((1 - eta_{t+1})/eta_{t+1})(th_{t+1} - th_t):

    u_t = D_t + offset_{t+1} - offset_t,
    offset_{t+1} = ((1 - eta_{t+1})/eta_{t+1}) D_t,

  in units of the learning rate that follows (exact for a constant learning
  rate; a scheduled learning rate transports the previous offset at the
  current rate).

  Args:
    eta: momentum weight eta_t in (0, 1], a float or a schedule of the step
      count (paper: eta_t). A schedule passed here is exact: step t reads
      eta_t and eta_{t+1}. Under `optax.inject_hyperparams` only the current
      value is seen, so the point th~_{t+1} is extrapolated with eta_t
      instead of eta_{t+1} (exact only for a constant eta). Default 0.1.

  Returns:
    An `optax.GradientTransformation`; state: a step count and two
    parameter-sized buffers.

  References:
    Fatkhullin, Barakat, Kireeva & He, "Stochastic Policy Gradient Methods: Improved Sample
    Complexity for Fisher-non-degenerate Policies", ICML 2023. https://arxiv.org/abs/2302.01734

  Example:
    >>> import optax
    >>> tx = optax.chain(scale_by_normalized_igt(0.1), optax.scale_by_learning_rate(1e-2))
  """
  _checks.check_positive("eta", eta)
  _checks.check_unit_interval("eta", eta, closed=True)

  def eta_at(count):
    return eta(count) if callable(eta) else eta

  def init_fn(params):
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    return ScaleByNormalizedIgtState(jnp.zeros([], jnp.int32), momentum=zeros, offset=zeros)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    eta_now, eta_next = eta_at(state.count), eta_at(count)
    momentum = jax.tree.map(
        lambda d, g: (1.0 - eta_now) * d + eta_now * g.astype(jnp.float32),
        state.momentum, updates)
    direction = _normalized(momentum)
    offset = jax.tree.map(lambda x: (1.0 - eta_next) / eta_next * x, direction)
    new_updates = jax.tree.map(
        lambda g, x, o_new, o_old: (x + o_new - o_old).astype(g.dtype),
        updates, direction, offset, state.offset)
    return new_updates, ScaleByNormalizedIgtState(count, momentum, offset)

  return optax.GradientTransformation(init_fn, update_fn)


class ScaleByHarpgState(NamedTuple):
  """Step count, momentum d_{t-1}, the previous params and the seed's key."""

  count: jax.Array  # int32: steps taken; q_t is drawn from fold_in(key, count)
  key: jax.Array  # uint32 key data of jax.random.key(seed)
  momentum: optax.Updates  # d_{t-1}, float32
  previous_params: optax.Params  # th_{t-1}, float32; unused at t = 0


def scale_by_harpg(
    eta: jax.typing.ArrayLike = 0.1, normalize: bool = True, seed: int = 0
) -> optax.GradientTransformationExtraArgs:
  """(N-)HARPG: recursive momentum with a Hessian-vector correction.

  `update(grads, state, params, obj_fn=...)`, with `grads` the gradient at
  the current params th_t and `obj_fn(params) -> scalar` the loss on the
  current batch. With q_t ~ U[0, 1] drawn from fold_in(key(seed), t),
  th^_t = q_t th_t + (1 - q_t) th_{t-1} and the exact Hessian-vector product
  of `obj_fn` (`gradkit.curvature_products.hessian_vector_product`; the
  paper's policy-Hessian estimator B(tau, th) is its unbiased estimate):

    d_0 = g_0,  d_t = (1 - eta)(d_{t-1} + H(th^_t)(th_t - th_{t-1})) + eta g_t,

  and the output is d_t / ||d_t|| (N-HARPG, `normalize=True`) or d_t (HARPG).

  Args:
    eta: momentum weight eta in (0, 1]. Default 0.1.
    normalize: N-HARPG's normalized step (static). Default True.
    seed: seed of the interpolation points q_t. Default 0.

  Returns:
    A `GradientTransformationExtraArgs`; state holds two parameter-sized
    buffers (momentum, previous params). Each step costs one HVP (about two
    gradients) on top of the caller's gradient.

  References:
    Fatkhullin, Barakat, Kireeva & He, "Stochastic Policy Gradient Methods: Improved Sample
    Complexity for Fisher-non-degenerate Policies", ICML 2023. https://arxiv.org/abs/2302.01734
  """
  _checks.check_positive("eta", eta)
  _checks.check_unit_interval("eta", eta, closed=True)

  def init_fn(params):
    as32 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    return ScaleByHarpgState(
        count=jnp.zeros([], jnp.int32),
        key=jax.random.key_data(jax.random.key(seed)),
        momentum=jax.tree.map(jnp.zeros_like, as32),
        previous_params=as32)

  def update_fn(updates, state, params=None, *, obj_fn: Callable | None = None, **extra_args):
    del extra_args
    if obj_fn is None:
      raise TypeError("scale_by_harpg needs the loss for its Hessian-vector product: call "
                      "update(grads, state, params, obj_fn=...) with obj_fn(params) -> scalar")
    if params is None:
      raise ValueError("scale_by_harpg needs params")
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.count)
    q = jax.random.uniform(key, (), jnp.float32)
    current = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    step = jax.tree.map(jnp.subtract, current, state.previous_params)
    point = jax.tree.map(lambda p, s: (p - (1.0 - q) * s).astype(jnp.result_type(p)),
                         params, step)
    correction = hessian_vector_product(
        obj_fn, point, jax.tree.map(lambda s, p: s.astype(jnp.result_type(p)), step, params))
    first = state.count == 0
    momentum = jax.tree.map(
        lambda d, v, g: jnp.where(
            first, g.astype(jnp.float32),
            (1.0 - eta) * (d + v.astype(jnp.float32)) + eta * g.astype(jnp.float32)),
        state.momentum, correction, updates)
    out = _normalized(momentum) if normalize else momentum
    new_updates = jax.tree.map(lambda g, x: x.astype(g.dtype), updates, out)
    return new_updates, ScaleByHarpgState(
        optax.safe_increment(state.count), state.key, momentum, current)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
