"""AdaBelief: Adam whose denominator tracks the belief (g - m)^2, not g^2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register

# RAdam's tractability threshold on the length of the approximated SMA.
_RHO_THRESHOLD = 5.0


def _scale_by_rectified_belief(
    b1: float, b2: float, eps: float
) -> optax.GradientTransformation:
  """AdaBelief's rectified direction, as `rectify=True` in the official code.

  The moments (and state, optax.ScaleByBeliefState) are
  `optax.scale_by_belief`'s; only the direction is recomputed from them:
  with rho_inf = 2 / (1 - b2) - 1 and rho_t = rho_inf - 2 t b2^t / (1 - b2^t),
  u = r_t sqrt(1 - b2^t) m_hat / (sqrt(s) + eps) when rho_t >= 5, where r_t
  is RAdam's rectification, and u = m_hat (SGD with momentum) otherwise.
  The official code adds eps to the *uncorrected* sqrt(s) in this branch.
  """
  belief = optax.scale_by_belief(b1, b2, eps=eps, eps_root=eps)

  def update_fn(updates, state, params=None):
    _, state = belief.update(updates, state, params)
    t = state.count
    b2_t = b2**t
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho = rho_inf - 2.0 * t * b2_t / (1.0 - b2_t)
    # Clamped so the branch that jnp.where discards stays finite.
    rectification = jnp.sqrt(jnp.maximum(
        (rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho), 0.0))
    scale = rectification * jnp.sqrt(1.0 - b2_t)
    mu_hat = optax.tree.bias_correction(state.mu, b1, t)

    def direction(m_hat, s):
      adaptive = scale.astype(m_hat.dtype) * m_hat / (jnp.sqrt(s) + eps)
      return jnp.where(rho >= _RHO_THRESHOLD, adaptive, m_hat)

    return jax.tree.map(direction, mu_hat, state.nu), state

  return optax.GradientTransformation(belief.init, update_fn)


@register("adabelief")
def adabelief(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    rectify: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """AdaBelief with decoupled weight decay, as the official adabelief-pytorch 0.2.

  m <- b1 m + (1-b1) g;  s <- b2 s + (1-b2) (g-m)^2 + eps;  bias-correct both;
  u = m_hat / (sqrt(s_hat) + eps);  p <- p - lr (u + wd p).

  `rectify=False` is the paper's Algorithm 2 and equals `optax.adabelief(lr,
  b1, b2, eps=eps, eps_root=eps)` plus the decay: its direction *is*
  `optax.scale_by_belief`. `rectify=True` (the official default since
  adabelief-pytorch 0.1.0) applies RAdam's rectification and takes bias-
  corrected momentum SGD steps while the variance is intractable (the first
  ~5 steps); see `_scale_by_rectified_belief`. Decay is decoupled
  (`weight_decouple=True`, official default). eps=1e-16 enters twice, inside
  s (kept in the state) and in the denominator, as in the official code.

  References:
    Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients, NeurIPS 2020. https://arxiv.org/abs/2010.07468
    (official code: juntang-zhuang/Adabelief-Optimizer).
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  if rectify:
    direction = _scale_by_rectified_belief(b1, b2, eps)
  else:
    direction = optax.scale_by_belief(b1, b2, eps=eps, eps_root=eps)
  return recipe(
      direction, learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)
