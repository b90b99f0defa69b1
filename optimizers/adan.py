"""Adan: adaptive Nesterov momentum, with the official proximal weight decay."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register


class AdanState(NamedTuple):
  """Moments of g (m), of g_t - g_{t-1} (v), of the Nesterov term (n)."""

  count: jax.Array  # shape=(), int32.
  m: optax.Updates
  v: optax.Updates
  n: optax.Updates
  previous_grad: optax.Updates


def _scale_by_adan(b1: float, b2: float, b3: float, eps: float) -> optax.GradientTransformation:
  """Adan's direction in the official code's convention (betas are decay rates).

  d = g_t - g_{t-1} (0 at the first step); m <- b1 m + (1-b1) g;
  v <- b2 v + (1-b2) d; n <- b3 n + (1-b3) (g + b2 d)^2;
  u = (m_hat + b2 v_hat) / (sqrt(n_hat) + eps).
  `optax.scale_by_adan` (optax 0.2.8) weights d by 1 - b2 instead of b2 in
  both places, so it is not reused (optax PR #1715); the two agree at b2=0.5.
  """

  def init_fn(params):
    zeros = optax.tree.zeros_like(params)
    return AdanState(
        count=jnp.zeros([], jnp.int32), m=zeros, v=zeros, n=zeros, previous_grad=zeros)

  def update_fn(updates, state, params=None):
    del params
    diff = optax.tree.where(
        state.count == 0, optax.tree.zeros_like(updates),
        optax.tree.sub(updates, state.previous_grad))
    m = optax.tree.update_moment(updates, state.m, b1, 1)
    v = optax.tree.update_moment(diff, state.v, b2, 1)
    n = optax.tree.update_moment_per_elem_norm(
        optax.tree.add_scale(updates, b2, diff), state.n, b3, 2)
    count = optax.safe_increment(state.count)
    direction = optax.tree.add_scale(
        optax.tree.bias_correction(m, b1, count), b2, optax.tree.bias_correction(v, b2, count))
    n_hat = optax.tree.bias_correction(n, b3, count)
    direction = jax.tree.map(lambda u, nh: u / (jnp.sqrt(nh) + eps), direction, n_hat)
    return direction, AdanState(count, m, v, n, updates)

  return optax.GradientTransformation(init_fn, update_fn)


def _proximal_shrink(
    learning_rate: optax.ScalarOrSchedule, weight_decay: optax.ScalarOrSchedule
) -> optax.GradientTransformation:
  """Multiplies the step by 1 / (1 + lr_t wd_t), on the schedules' own count."""

  def factor(count):
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    wd = weight_decay(count) if callable(weight_decay) else weight_decay
    return 1.0 / (1.0 + lr * wd)

  return optax.scale_by_schedule(factor)


@register("adan")
def adan(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    proximal: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Adan with the official defaults and its proximal weight decay.

  Follows the official sail-sg/Adan code: lr 1e-3, betas (0.98, 0.92, 0.99),
  eps 1e-8, weight_decay 0, no_prox=False. Betas are decay rates (the paper's
  beta_i is 1 - b_i). With u the direction of `_scale_by_adan`, the default
  proximal decay of the paper's Algorithm 1 and the official code is
  p <- (p - lr u) / (1 + lr wd): the recipe tail's step p - lr (u + wd p),
  shrunk by 1 / (1 + lr wd) on decayed leaves. `proximal=False` (official
  `no_prox=True`) is the plain decoupled decay p <- p - lr (u + wd p), the
  form `optax.adan` uses. The official optional global-norm clipping
  (`max_grad_norm`, off by default) is left to `optax.clip_by_global_norm`
  in front.

  References:
    Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models, TPAMI 2024. https://arxiv.org/abs/2208.06677
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_unit_interval("b3", b3)
  _checks.check_non_negative("eps", eps)
  tx = recipe(
      _scale_by_adan(b1, b2, b3, eps),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )
  if not proximal:
    return tx
  shrink = _proximal_shrink(learning_rate, weight_decay)
  return optax.chain(tx, shrink if mask is None else optax.masked(shrink, mask))
