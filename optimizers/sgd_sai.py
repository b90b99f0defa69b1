"""SGD-SaI: SGD with momentum and learning-rate scaling at initialization.

Two official versions (AnonymousAlethiometer/SGD_SaI, sgd_sai/sgd_sai.py):
v1.0.3 (the PyPI release, the default here) scales each tensor by the g-SNR
||g|| / (std(g, unbiased) + eps) of its first gradient; v1.1.0 (the
repository's later file, "a simplified version ... using the equivalent
sqrt(numel) to replace g-SNR calculation") by sqrt(numel), still fixed at
the first step. Momentum (buf_1 = g_1, then an EMA), the decoupled decay
p <- p (1 - lr wd) - lr scale buf and the defaults are the same in both;
v1.1.0's warm-up also no longer re-evaluates the closure (nothing here).
"""

from __future__ import annotations

from typing import Literal

import jax
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register
from gradkit.transforms.gsnr_scaling import scale_by_gsnr_at_init
from gradkit.transforms.moments import ema_from_first_update

_SCORES = {"v1.0.3": "gsnr", "v1.1.0": "sqrt_size"}


@register("sgd_sai")
def sgd_sai(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    momentum: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    mask: MaskOrFn = None,
    normalize_by_max: bool = False,
    version: Literal["v1.0.3", "v1.1.0"] = "v1.0.3",
) -> optax.GradientTransformationExtraArgs:
  """SGD-SaI (Xu et al., 2024, arXiv 2412.11768), as the official code.

  p <- p * (1 - lr * wd) - lr * gsnr * m, where m is the EMA momentum started
  at the first gradient (`ema_from_first_update`) and gsnr the per-leaf
  g-SNR of the first gradient (`scale_by_gsnr_at_init`), fixed thereafter.
  Both factors are linear and gsnr is constant, so scaling after the
  momentum equals the official order; the buffer holds the unscaled EMA as
  in the official code. momentum = 0 is plain SGD with the g-SNR scale.
  Raw g-SNR grows like sqrt(leaf size), so the usable base learning rate
  is small; `normalize_by_max=True` gives the paper's Algorithm 1 instead.
  `version="v1.1.0"` takes the official code's later score sqrt(numel) in
  place of the g-SNR (the same scale for a zero-mean block, independent of
  the gradient; `eps` unused).

  Args:
    learning_rate: base step size (float or schedule). Default 1e-2.
    momentum: EMA coefficient in [0, 1). Default 0.9.
    eps: added to the gradient std in the g-SNR. Default 1e-8.
    weight_decay: decoupled decay coefficient (float or schedule). Default 1e-2.
    mask: which leaves get weight decay (tree or callable), as in optax. Default None (every leaf).
    normalize_by_max: divide the scores by their maximum over all leaves. Default False.
    version: "v1.0.3" (g-SNR of the first gradient) or "v1.1.0" (sqrt(numel)),
      the official code's rule of that version. Static. Default "v1.0.3".

  References:
    Xu, Xiang, Cai & Wen, "No More Adam: Learning Rate Scaling at Initialization is All You Need",
    2024. https://arxiv.org/abs/2412.11768 ; official code:
    https://github.com/AnonymousAlethiometer/SGD_SaI

  Example:
    >>> import gradkit, jax.numpy as jnp
    >>> tx = gradkit.optimizers.sgd_sai(learning_rate=1e-3)
    >>> state = tx.init({"w": jnp.ones((2, 2))})
  """
  _checks.check_unit_interval("momentum", momentum)
  if version not in _SCORES:
    raise ValueError(f"version must be one of {tuple(_SCORES)}, got {version!r}")
  return recipe(
      ema_from_first_update(momentum),
      scale_by_gsnr_at_init(eps, normalize_by_max, _SCORES[version]),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )
