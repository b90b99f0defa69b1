"""AdaHessian: Adam with the Hutchinson Hessian diagonal in place of g².

Yao et al., "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine
Learning", AAAI 2021 (arXiv 2006.00719); official code amirgholami/adahessian
(image_classification/optim_adahessian.py, instruction/adahessian.py).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register
from gradkit.second_order.hutchinson import (
    EstimateHutchinsonDiagonalState,
    estimate_hutchinson_diagonal,
    spatial_average,
)


class ScaleByAdaHessianState(NamedTuple):
  """count: steps taken; mu: EMA of g; nu: EMA of D²; diag: the last D (None
  when D is refreshed every step); estimator: the probe key."""

  count: jax.Array  # int32 scalar
  mu: optax.Updates
  nu: optax.Updates
  diag: optax.Updates | None
  estimator: EstimateHutchinsonDiagonalState


def scale_by_adahessian(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    spatial_average_block: int | None = None,
    conv_window_average: bool = True,
    update_interval: int | None = None,
    num_probes: int | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """m̂_t / ((sqrt(v̂_t))^k + eps), v the EMA of D², D the averaged |Hutchinson diagonal|.

  Per step t (official rule): D_t = spatial_average(|z ⊙ H z|) of
  `obj_fn` (required keyword of `update`); m_t = b1 m + (1-b1) g;
  v_t = b2 v + (1-b2) D_t²; both bias-corrected. With `update_interval`
  k, D is recomputed only on steps 1, k+1, 2k+1, ... (state count % k == 0,
  optax.contrib.sophia's convention) and the stored D is reused in between
  (delayed Hessian of davda54/ada-hessian); the HVP then runs in a
  `lax.cond` and costs nothing on the other steps. Moments use optax's
  `tree.update_moment(_per_elem_norm)` and `tree.bias_correction`.

  Args:
    b1: EMA rate of g. Default 0.9.
    b2: EMA rate of D². Default 0.999.
    eps: added to the denominator after the power (official placement). Default 1e-4.
    hessian_power: k in [0, 1]; 0 gives bias-corrected momentum SGD. Default 1.0.
    spatial_average_block: 2-D rule of `spatial_average` (static; None means
      1, no averaging of Dense kernels, as the image-classification code). Default None.
    conv_window_average: average rank >= 3 kernels over their window (static). Default True.
    update_interval: refresh D every this many steps (None: every step, and
      no D is stored). Default None.
    num_probes: Rademacher probes per refresh (static; None means 1). Default None.
    seed: probe seed, carried in the state. Default 0.

  References:
    Yao et al., "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning", AAAI 2021.
    https://arxiv.org/abs/2006.00719 ; official code: https://github.com/amirgholami/adahessian
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  _checks.check_unit_interval("hessian_power", hessian_power, closed=True)
  _checks.check_static_int("update_interval", update_interval)
  block = 1 if spatial_average_block is None else spatial_average_block
  if not isinstance(block, int) or not (block == -1 or block >= 1):
    raise ValueError(f"spatial_average_block must be None, -1 or an int >= 1, got {block!r}")
  estimator = estimate_hutchinson_diagonal(num_probes, seed)

  def init_fn(params):
    return ScaleByAdaHessianState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params),
        nu=optax.tree.zeros_like(params),
        diag=None if update_interval is None else optax.tree.zeros_like(params),
        estimator=estimator.init(params),
    )

  def update_fn(updates, state, params=None, obj_fn=None, **extra_args):
    del extra_args

    def fresh_diag(estimator_state):
      diag, estimator_state = estimator.update(updates, estimator_state, params, obj_fn=obj_fn)
      diag = spatial_average(jax.tree.map(jnp.abs, diag), block, conv_window_average)
      return diag, estimator_state

    if update_interval is None:
      diag, estimator_state = fresh_diag(state.estimator)
    else:
      diag, estimator_state = jax.lax.cond(
          state.count % update_interval == 0, fresh_diag,
          lambda s: (state.diag, s), state.estimator)

    count = optax.safe_increment(state.count)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(diag, state.nu, b2, 2)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)
    direction = jax.tree.map(
        lambda m, v: (m / (jnp.sqrt(v) ** hessian_power + eps)).astype(m.dtype), mu_hat, nu_hat)
    new_state = ScaleByAdaHessianState(
        count=count, mu=mu, nu=nu, diag=None if update_interval is None else diag,
        estimator=estimator_state)
    return direction, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("adahessian")
def adahessian(
    learning_rate: optax.ScalarOrSchedule = 0.15,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    hessian_power: float = 1.0,
    spatial_average_block: int | None = None,
    conv_window_average: bool = True,
    update_interval: int | None = None,
    num_probes: int | None = None,
    seed: int = 0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """AdaHessian (Yao et al., AAAI 2021): p <- p - lr (m̂ / ((√v̂)^k + eps) + wd p).

  `scale_by_adahessian` then gradkit's shared tail (decoupled weight decay on
  every leaf `mask` selects, then -lr), which is the official update
  p - lr (m̂/denom + wd p). Defaults are the official optimizer's (lr 0.15,
  betas (0.9, 0.999), eps 1e-4, k 1, no decay). `update` needs
  `obj_fn=` (params -> scalar loss of the current batch, the same batch
  and randomness as the gradient). Static options (`spatial_average_block`,
  `num_probes`) default to None, so `optax.inject_hyperparams` leaves them
  static; give non-default ones through its `static_args`.

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 0.15.
    b1: EMA rate of g. Default 0.9.
    b2: EMA rate of D^2. Default 0.999.
    eps: added to the denominator after the power. Default 1e-4.
    weight_decay: Decoupled weight-decay rate. Default 0.0.
    hessian_power: k in [0, 1]; 0 gives bias-corrected momentum SGD.
      Default 1.0.
    spatial_average_block: 2-D rule of `spatial_average` (static; None means
      1, no averaging of Dense kernels). Default None.
    conv_window_average: average rank >= 3 kernels over their window (static).
      Default True.
    update_interval: refresh D every this many steps (None: every step).
      Default None.
    num_probes: Rademacher probes per refresh (static; None means 1).
      Default None.
    seed: probe seed, carried in the state. Default 0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` needs `obj_fn=`.

  References:
    Yao et al., "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning", AAAI 2021.
    https://arxiv.org/abs/2006.00719 ; official code: https://github.com/amirgholami/adahessian

  Example:
    >>> import jax.numpy as jnp, gradkit
    >>> loss = lambda p: jnp.sum(p ** 2)
    >>> tx = gradkit.create("adahessian")
    >>> params = jnp.ones(3); state = tx.init(params)
    >>> updates, state = tx.update(2 * params, state, params, obj_fn=loss)
  """
  return recipe(
      scale_by_adahessian(b1, b2, eps, hessian_power, spatial_average_block,
                          conv_window_average, update_interval, num_probes, seed),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )

