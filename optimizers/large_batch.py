"""Layer-wise trust-ratio optimizers for large batches: LAMB and LARS.

Both add the weight decay *before* the per-leaf trust ratio
||p|| / ||d + wd p||, so the decay is scaled with the step, as in
`optax.lamb` / `optax.lars` (whose order these recipes keep). That order does
not fit `recipe()`'s tail (decay, then lr), so the chains are spelt out from
the same pieces: tree check, direction, `optax.add_decayed_weights`,
`optax.scale_by_trust_ratio` (under `optax.masked`), lr.

Masks: `mask` selects the leaves that are decayed; `trust_ratio_mask` those
that get the trust ratio and defaults to `mask`, as `exclude_from_layer_adaptation`
defaults to `exclude_from_weight_decay` in the TensorFlow LAMB/LARS
implementations. Both `None` means every leaf (optax's behaviour). BERT and
SimCLR practice excludes biases and normalization scales from both, e.g.
`mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)`.
"""

from __future__ import annotations

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, checked_rate
from gradkit.registry import register
from gradkit.transforms.tree_checks import check_updates_match_params


def _decay_then_trust_ratio(
    weight_decay: optax.ScalarOrSchedule,
    mask: MaskOrFn,
    trust_ratio_mask: MaskOrFn,
    trust_coefficient: float,
    eps: float,
) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  _checks.check_positive("trust_coefficient", trust_coefficient)
  _checks.check_non_negative("eps", eps)
  trust_ratio = optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
  trust_mask = mask if trust_ratio_mask is None else trust_ratio_mask
  if trust_mask is not None:
    trust_ratio = optax.masked(trust_ratio, trust_mask)
  return (optax.add_decayed_weights(checked_rate("weight_decay", weight_decay), mask),
          trust_ratio)


@register("lamb")
def lamb(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    trust_ratio_mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """LAMB: p <- p - lr ||p|| / ||r + wd p|| (r + wd p), r the Adam direction.

  r = m_hat / (sqrt(v_hat) + eps) is `optax.scale_by_adam`; the ratio is
  `optax.scale_by_trust_ratio` (1 where ||p|| or ||r + wd p|| is 0), with
  the paper's scaling function phi the identity. Same chain as `optax.lamb`
  (eps_root=0), plus `trust_ratio_mask`. Defaults are the paper's (b1 0.9,
  b2 0.999, eps 1e-6) with optax's lr 1e-3 and no decay; the paper's BERT
  runs use wd 0.01 and an lr found by a square-root scaling rule.

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-3.
    b1: Decay rate of the first moment. Default 0.9.
    b2: Decay rate of the second moment. Default 0.999.
    eps: Added to sqrt(v_hat). Default 1e-6.
    weight_decay: Weight-decay rate added before the trust ratio. Default 0.0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    trust_ratio_mask: Leaves that get the trust ratio; None falls back to
      `mask`. Default None.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    You et al., Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes, ICLR 2020. https://arxiv.org/abs/1904.00962
  """
  learning_rate = checked_rate("learning_rate", learning_rate)
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("eps", eps, 1e-6)
  return optax.chain(
      check_updates_match_params(),
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      *_decay_then_trust_ratio(weight_decay, mask, trust_ratio_mask, 1.0, 0.0),
      optax.scale_by_learning_rate(learning_rate),
  )


@register("lars")
def lars(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    momentum: float = 0.9,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    nesterov: bool = False,
    mask: MaskOrFn = None,
    trust_ratio_mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """LARS: v <- momentum v + lr eta ||p|| / (||g + wd p|| + eps) (g + wd p); p <- p - v.

  The paper's Algorithm 1 with eta = `trust_coefficient` (0.001 in the
  paper), as `optax.lars`: decayed gradient, masked `optax.scale_by_trust_ratio`
  (1 where a norm is 0), global lr, then `optax.trace` momentum, so the
  momentum accumulates lr-scaled steps and the decay is coupled (it passes
  through the momentum). The paper writes the denominator ||g|| + wd ||p||;
  like optax (and LAMB's ||r + wd p||) gradkit uses ||g + wd p||, equal when
  wd = 0. The global lr multiplies eta ||p|| / ||g||, so it is O(1-10), not
  SGD's; the paper tunes it with warm-up and polynomial decay and gives no
  single default: 1.0 here.

  Args:
    learning_rate: Global step size, a scalar or an optax schedule; it
      multiplies eta ||p|| / ||g + wd p||, so useful values are ~1-10.
      Default 1.0.
    momentum: Momentum on the lr-scaled steps. Default 0.9.
    weight_decay: Coupled weight-decay rate (added to the gradient).
      Default 0.0.
    trust_coefficient: eta, the paper's trust coefficient. Default 0.001.
    eps: Added to the trust ratio's denominator. Default 0.0.
    nesterov: Use Nesterov momentum. Default False.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    trust_ratio_mask: Leaves that get the trust ratio; None falls back to
      `mask`. Default None.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    You, Gitman & Ginsburg, Large Batch Training of Convolutional Networks,
    2017. https://arxiv.org/abs/1708.03888
  """
  learning_rate = checked_rate("learning_rate", learning_rate)
  _checks.check_unit_interval("momentum", momentum)
  return optax.chain(
      check_updates_match_params(),
      *_decay_then_trust_ratio(weight_decay, mask, trust_ratio_mask, trust_coefficient, eps),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum, nesterov=nesterov),
  )
