"""AdaBelief: Adam whose denominator tracks the belief (g - m)^2, not g^2."""

from __future__ import annotations

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register
from gradkit.transforms.moments import scale_by_adabelief


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
    eps_root: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """AdaBelief with decoupled weight decay, as the official adabelief-pytorch 0.2.

  m <- b1 m + (1-b1) g;  s <- b2 s + (1-b2) (g-m)^2 + eps_root;  bias-correct
  both;  u = m_hat / (sqrt(s_hat) + eps);  p <- p - lr (u + wd p).

  The official code has one `eps` (1e-16), added inside s (kept in the state)
  and to the denominator; here `eps` is the one outside the root and
  `eps_root` the one inside, None meaning eps, as officially (optax.adabelief
  has the same two, both 1e-16). `rectify=False` is the paper's Algorithm 2
  and equals `optax.adabelief(lr, b1, b2, eps=eps, eps_root=eps_root)` plus
  the decay: its direction *is* `optax.scale_by_belief`. `rectify=True` (the
  official default since adabelief-pytorch 0.1.0) applies RAdam's
  rectification and takes bias-corrected momentum SGD steps while the
  variance is intractable (the first ~5 steps); see
  `gradkit.transforms.scale_by_rectified_belief`. Decay is decoupled
  (`weight_decouple=True`, official default).

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-3.
    b1: Decay rate of the first moment m. Default 0.9.
    b2: Decay rate of the belief s. Default 0.999.
    eps: Added to the denominator, outside the square root (and inside s
      too unless `eps_root` is given). Default 1e-16.
    weight_decay: Decoupled weight-decay rate, a scalar or a schedule.
      Default 0.0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    rectify: Apply RAdam's rectification (keyword only). Default True.
    eps_root: Added inside s at every step, kept in the state (keyword
      only); None means `eps`, the official code's single eps. Default None.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients", NeurIPS 2020. https://arxiv.org/abs/2010.07468 ; official code: https://github.com/juntang-zhuang/Adabelief-Optimizer
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  direction = scale_by_adabelief(b1, b2, eps, rectify, eps_root)
  return recipe(
      direction, learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)
