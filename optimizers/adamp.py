"""AdamP and SGDP (Heo et al., ICLR 2021): momentum without radial norm growth."""

from __future__ import annotations

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register
from gradkit.transforms.moments import scale_by_adam_lookahead, trace_with_dampening
from gradkit.transforms.radial_projection import project_radial


@register("adamp")
def adamp(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    nesterov: bool = False,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamP: Adam whose step loses its radial part on scale-invariant weights.

  Per leaf, following clovaai/AdamP adamp.py:

    d = optax.scale_by_adam direction (eps after bias correction)
    d, r = project_radial test on (g, p): tangential d and r = wd_ratio if a
           view fired, else d and r = 1 (ndim <= 1 leaves: never tested)
    p <- p (1 - lr wd r) - lr d

  The decay is decoupled and applied by `project_radial` (it needs the
  per-leaf ratio), so the recipe tail's own decay stays 0. Where nothing
  fires this is exactly optax.adamw. The output-channel axis is the last one
  (Flax layout). `nesterov` is static: under optax.inject_hyperparams list it
  in `static_args` if you pass it.

  Args:
    learning_rate: step size, float or optax schedule. Default 1e-3.
    b1: Adam's first-moment decay rate. Default 0.9.
    b2: Adam's second-moment decay rate. Default 0.999.
    eps: Adam's eps, also guarding the norms of the projection test. Default 1e-8.
    weight_decay: decoupled decay coefficient, float or schedule. Default 0.0.
    delta: threshold of the cosine test, delta / sqrt(row length). Default 0.1.
    wd_ratio: factor on weight decay where the projection fired. Default 0.1.
    nesterov: use the look-ahead moment (b1 m + (1 - b1) g). Default False.
    mask: tree or callable selecting the leaves that get weight decay. Default None (every leaf).

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021. https://arxiv.org/abs/2006.08217 ; official code:
    https://github.com/clovaai/AdamP

  Example:
    >>> import gradkit
    >>> tx = gradkit.optimizers.adamp(learning_rate=1e-3, weight_decay=1e-2)
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("eps", eps)
  moments = (
      scale_by_adam_lookahead(b1, b2, eps)
      if nesterov
      else optax.scale_by_adam(b1, b2, eps)
  )
  return recipe(
      project_radial(
          moments, delta=delta, wd_ratio=wd_ratio, eps=eps,
          weight_decay=weight_decay, mask=mask,
      ),
      learning_rate=learning_rate,
  )


@register("sgdp")
def sgdp(
    learning_rate: optax.ScalarOrSchedule = 0.1,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    nesterov: bool = False,
    eps: float = 1e-8,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """SGDP: SGD with momentum whose step loses its radial part where needed.

  Per leaf, following clovaai/AdamP sgdp.py:

    buf <- momentum buf + (1 - dampening) g   (buf_0 = 0)
    d = g + momentum buf if nesterov else buf
    d, r = project_radial test on (g, p) as in `adamp`
    p <- p (1 - lr wd r / (1 - momentum)) - lr d

  Note the official 1 / (1 - momentum) on the decay: at momentum 0.9 it is
  10x a plain decoupled decay. Defaults are the official class's
  (momentum 0, no Nesterov); the README's example uses lr 0.1, momentum 0.9,
  nesterov=True, weight_decay 1e-5. The official class has no default lr;
  0.1 is the README's. `nesterov` is static (see `adamp`).

  Args:
    learning_rate: step size, float or optax schedule. Default 0.1.
    momentum: momentum coefficient in [0, 1). Default 0.0.
    dampening: dampening of the gradient added to the buffer, in [0, 1]. Default 0.0.
    weight_decay: decoupled decay coefficient, float or schedule. Default 0.0.
    nesterov: use g + momentum buf as the direction. Default False.
    eps: guards the norms of the projection test. Default 1e-8.
    delta: threshold of the cosine test, delta / sqrt(row length). Default 0.1.
    wd_ratio: factor on weight decay where the projection fired. Default 0.1.
    mask: tree or callable selecting the leaves that get weight decay. Default None (every leaf).

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021. https://arxiv.org/abs/2006.08217 ; official code:
    https://github.com/clovaai/AdamP

  Example:
    >>> import gradkit
    >>> tx = gradkit.optimizers.sgdp(0.1, momentum=0.9, nesterov=True)
  """
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_unit_interval("dampening", dampening, closed=True)
  _checks.check_non_negative("weight_decay", weight_decay)
  if callable(weight_decay):
    def decay(count):
      return weight_decay(count) / (1 - momentum)
  else:
    decay = weight_decay / (1 - momentum)
  return recipe(
      project_radial(
          trace_with_dampening(momentum, dampening, nesterov),
          delta=delta, wd_ratio=wd_ratio, eps=eps,
          weight_decay=decay, mask=mask,
      ),
      learning_rate=learning_rate,
  )
