"""SaRA: AdamW on the small-magnitude weights of a pre-trained model.

`gradkit.transforms.sara.restrict_to_small_weights` around AdamW (optax's
`scale_by_adam`, then gradkit's decoupled weight decay and learning rate,
`descend`), applied to the trainable entries only: frozen weights get
neither update nor decay, as in the official optimizer (optim/adamw.py,
whose decay multiplies the trainable tensor only). Defaults: threshold
2e-3, progressive re-selection after 2500 steps and lambda_rank 5e-4
(finetune.sh), AdamW betas (0.9, 0.999), eps 1e-8, weight decay 1e-2
(finetune.py), learning rate 1e-3 * exp(-350 * threshold) (the official
optimizer's default when no rate is given: 4.97e-4 at 2e-3). Re-selection
restarts AdamW on the new set (zero moments, step count 1 again), as the
official code re-creates its optimizer; a learning-rate schedule keeps
running. The official
decay is applied before the step, p <- (1 - lr wd) p - lr d, which differs
from descend's p - lr (d + wd p) by O(lr^2 wd).
"""

from __future__ import annotations

import math

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, descend
from gradkit.registry import register
from gradkit.transforms.sara import restrict_to_small_weights
from gradkit.transforms.tree_checks import check_updates_match_params

# The official default 1e-3 * exp(-350 * threshold) at the default threshold 2e-3.
_DEFAULT_LEARNING_RATE = 1e-3 * math.exp(-350.0 * 2e-3)


@register("sara")
def sara(
    learning_rate: optax.ScalarOrSchedule = _DEFAULT_LEARNING_RATE,
    threshold: float = 2e-3,
    lambda_rank: float = 5e-4,
    progressive_iter: int | None = 2500,
    max_fraction: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    mask: MaskOrFn = None,
    min_dim: int | None = None,
) -> optax.GradientTransformation:
  """SaRA fine-tuning: AdamW on |w| < threshold, refined once, low-rank penalty.

  Args:
    learning_rate: default 1e-3 * exp(-350 * threshold) at the default
      threshold 2e-3 (the official rule; recompute it for another threshold).
    threshold: trainable where |w| < threshold. Default 2e-3.
    lambda_rank: weight of the nuclear-norm penalty on the sparse matrix. Default 5e-4.
    progressive_iter: steps after which the trainable set is re-selected and
      AdamW restarts on it (None: never). Default 2500.
    max_fraction: at most this fraction of each leaf is trainable (static;
      None means 0.05): the (k,) state size. Default None.
    b1: AdamW's first-moment decay rate. Default 0.9.
    b2: AdamW's second-moment decay rate. Default 0.999.
    eps: AdamW's eps. Default 1e-8.
    weight_decay: decoupled, on the trainable entries only. Default 1e-2.
    mask: weight-decay mask; a callable sees the tree of (k,) vectors. Default None (every leaf).
    min_dim: 2-D leaves with both sides > min_dim get the penalty (static;
      None means 64, official). Default None.

  References:
    Hu et al., "SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank
    Adaptation", ICLR 2025. https://arxiv.org/abs/2409.06633 ; official code:
    https://github.com/sjtuplayer/SaRA

  Example:
    >>> from gradkit.optimizers.sara import sara
    >>> tx = sara(learning_rate=1e-4)
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_positive("threshold", threshold)
  _checks.check_eps("eps", eps)
  _checks.check_non_negative("lambda_rank", lambda_rank)
  if progressive_iter is not None:
    _checks.check_non_negative("progressive_iter", progressive_iter)
  adamw = descend(optax.scale_by_adam(b1, b2, eps), learning_rate=learning_rate,
                  weight_decay=weight_decay, mask=mask)
  return optax.chain(
      check_updates_match_params(),
      restrict_to_small_weights(
          adamw, threshold, 0.05 if max_fraction is None else max_fraction,
          refine_at=progressive_iter, nuclear_weight=lambda_rank,
          min_dim=64 if min_dim is None else min_dim))
