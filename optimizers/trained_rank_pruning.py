"""Trained Rank Pruning (TRP): SGD with periodic low-rank projection of the weights.

The official CIFAR recipe (cifar-TRP.py): every `period` steps, each weight
matrix is replaced by its truncated SVD (energy threshold 0.9 on s^2) and the
nuclear-norm sub-gradient lambda U_k V_k^T of the kept components is added to
that step's gradient; the optimizer is PyTorch SGD, momentum 0.9, lr 0.1,
coupled L2 weight decay 1e-4 (added to the gradient before momentum, as
torch.optim.SGD does: the paper's rule, so it is not decoupled here).

The official code projects at the start of a step and then takes the
gradient at the projected weights; here the projection is the last
transform of the step (u <- P_k(w + u) - w), so the weights after every
projection step are exactly low rank and the next gradient is taken there.
The sub-gradient uses the current weights' SVD on the same steps (the
official one uses the SVD of the weights it is about to project, one step
later in this ordering).
"""

from __future__ import annotations

import functools

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register
from gradkit.transforms.nuclear_norm import add_nuclear_norm_subgradient
from gradkit.transforms.trained_rank_pruning import (
    check_truncation,
    project_trained_rank,
    truncation_mask,
)


@register("trp")
def trp(
    learning_rate: optax.ScalarOrSchedule = 0.1,
    momentum: float = 0.9,
    nuclear_weight: float = 3e-4,
    energy: float | None = 0.9,
    rank: int | None = None,
    period: int | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """TRP: SGD-momentum with nuclear regularization and periodic SVD truncation.

  Args:
    learning_rate: SGD step (official 0.1, decayed x0.1 at epochs 81 and 122). Default 0.1.
    momentum: heavy-ball momentum (official 0.9). Default 0.9.
    nuclear_weight: lambda of the nuclear regularization (README: 3e-4). Default 3e-4.
    energy: kept fraction of sum(s^2) (official EnergyThreshold(0.9)), or None. Default 0.9.
    rank: keep at most this many components per matrix (static), or None. Default None.
    period: projection period m (static; None means 1, the official default
      `--decouple-period`; the shipped train_TPR.sh uses 5).
    weight_decay: coupled L2 coefficient (official 1e-4). Default 1e-4.
    mask: which leaves get weight decay (optax.add_decayed_weights). Default None (every leaf).

  References:
    Xu et al., "TRP: Trained Rank Pruning for Efficient Deep Neural Networks", IJCAI 2020.
    https://arxiv.org/abs/2004.14566 ; official code:
    https://github.com/yuhuixu1993/Trained-Rank-Pruning

  Example:
    >>> import gradkit
    >>> tx = gradkit.create("trp", learning_rate=0.05, period=20)
  """
  every = 1 if period is None else period
  check_truncation(rank, energy)
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_non_negative("weight_decay", weight_decay)
  kept = functools.partial(truncation_mask, rank=rank, energy=energy)
  return optax.chain(
      recipe(
          add_nuclear_norm_subgradient(nuclear_weight, every=every, truncation=kept),
          optax.add_decayed_weights(weight_decay, mask),
          optax.trace(decay=momentum),
          learning_rate=learning_rate,
      ),
      project_trained_rank(rank, energy, every=every),
  )
