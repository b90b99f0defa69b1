"""COSMOS: SOAP-like steps in a tracked eigen-subspace, Muon on its complement.

"matrix" leaves (`matrix_labels`) get `gradkit.transforms.cosmos.scale_by_cosmos`
(the current official rule, lliu606/COSMOS `COSMOS_optim.py`; the rule and its
deviations are in that module's docstring), whose step has Frobenius norm
lr * lr_ratio * sqrt(mn). "embedding", "head" and "vector" leaves get AdamW
(`optax.scale_by_adam`, PyTorch eps placement) at the full `learning_rate`
with the same betas, eps and weight decay, as the official class does for its
non-COSMOS parameters.

The official code routes by size (2-D with at most 10000 output rows); gradkit
routes by label, so embedding tables and heads go to AdamW whatever the
vocabulary size. Its Adam branch hard-codes M <- b1 M + 0.1 G with the bias
correction 1 - 0.9^t: that equals standard AdamW exactly at the class default
b1 = 0.9, which gradkit uses for every b1 (at the README's b1 = 0.95 the
official first moment is about 2x larger).

References:
  L. Liu, Z. Xu, Z. Zhang, H. Kang, Z. Li, C. Liang, W. Chen, T. Zhao, COSMOS:
  A Hybrid Adaptive Optimizer for Memory-Efficient Training of LLMs,
  arXiv 2502.17410 (2025); official code lliu606/COSMOS.
"""

from __future__ import annotations

import optax

from gradkit.optimizers._recipe import LabelsOrFn, MaskOrFn, descend, matrix_or_fallback
from gradkit.registry import register
from gradkit.transforms.cosmos import MomentumMode, scale_by_cosmos

RANK = 64


@register("cosmos")
def cosmos(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    lr_ratio: float = 0.1,
    rank: int | None = None,
    gamma: float = 0.2,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = True,
    momentum_mode: MomentumMode = "official",
    param_labels: LabelsOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """COSMOS on "matrix" leaves, AdamW on "embedding", "head" and "vector" leaves.

  Defaults are the official class's (the README recommends lr 2e-3,
  betas (0.95, 0.95), lr_ratio 0.2, weight_decay 0.1).

  Args:
    learning_rate: a float or a schedule; matrix steps have RMS
      learning_rate * lr_ratio, AdamW's use learning_rate itself. Default 1e-3.
    b1: COSMOS momentum coefficient and AdamW's first-moment decay. Default 0.9.
    b2: decay of COSMOS's covariance and second moment, and AdamW's. Default 0.999.
    eps: COSMOS's and AdamW's eps. Default 1e-8.
    lr_ratio: matrix rate over the fallback's rate. Default 0.1.
    rank: eigenbasis rank, clamped to each matrix's fan-in; None means 64 (an
      int must be listed in `static_args` under `optax.inject_hyperparams`). Default None.
    gamma: weight of the Newton–Schulz complement. Default 0.2.
    weight_decay: decoupled decay, p <- p - lr (d + wd p), for every leaf
      (the official code's (1 - lr wd) p before the step: the same map). Default 0.0.
    mask: decay mask (tree or callable). Default None (every leaf).
    nesterov: official `nestrov` (static). Default True.
    momentum_mode: the matrix direction without Nesterov (static; no effect
      with `nesterov=True`): "official", G / c1 as the official code, which
      never reads the stored momentum (so `nesterov=False` has none);
      "momentum", the bias-corrected momentum M / c1. Default "official".
    param_labels: label tree or callable params -> labels ("matrix",
      "embedding", "head", "vector"); None means `matrix_labels` (a tree or
      callable must be listed in `static_args` under `optax.inject_hyperparams`,
      which would otherwise take a callable for a schedule). Default None (`matrix_labels`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Liu et al., "COSMOS: A Hybrid Adaptive Optimizer for Memory-Efficient Training of LLMs", 2025.
    https://arxiv.org/abs/2502.17410 ; official code: https://github.com/lliu606/COSMOS
  """
  matrix = descend(
      scale_by_cosmos(b1, b2, eps, lr_ratio, RANK if rank is None else rank, gamma, nesterov,
                      momentum_mode=momentum_mode),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)
  fallback = descend(
      optax.scale_by_adam(b1, b2, eps),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)
  return matrix_or_fallback(matrix, fallback, param_labels)
