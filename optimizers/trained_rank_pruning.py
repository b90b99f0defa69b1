"""Trained Rank Pruning (TRP): SGD with periodic low-rank projection of the weights.

The official CIFAR recipe (cifar-TRP.py): every `period` steps, each selected
convolution kernel is replaced by its truncated SVD (energy threshold 0.9 on
s^2) and the nuclear-norm sub-gradient lambda U_k V_k^T of the kept
components is added to that step's gradient; the optimizer is PyTorch SGD,
momentum 0.9, lr 0.1, coupled L2 weight decay 1e-4 (added to the gradient
before momentum, as torch.optim.SGD does: the paper's rule, so it is not
decoupled here).

Selected layers (`get_look_up_table`): every Conv2d whose kernel is not 1x1,
except the first such conv of the model. Dense layers (the final FC),
embeddings, 1x1 convolutions and the first conv keep full rank and get the
plain SGD step. `trp_labels` is that rule on a pytree; `param_labels`
overrides it.

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
from typing import Any

import jax
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import LabelsOrFn, MaskOrFn, checked_rate, recipe, resolve_labels
from gradkit.optimizers.matrix_labels import matrix_labels
from gradkit.registry import register
from gradkit.transforms.matrix_view import check_matrix
from gradkit.transforms.nuclear_norm import add_nuclear_norm_subgradient
from gradkit.transforms.trained_rank_pruning import (
    check_truncation,
    project_trained_rank,
    truncation_mask,
)

# "matrix" leaves are truncated and regularised; the others get plain SGD.
TRP_LABELS = ("matrix", "full_rank", "embedding", "head", "vector")


def _is_spatial_conv(leaf: Any) -> bool:
  """A Flax (kh, kw, in, out) convolution kernel with kh * kw > 1."""
  shape = getattr(leaf, "shape", ())
  return len(shape) == 4 and shape[0] * shape[1] > 1


def trp_labels(params: Any) -> Any:
  """The official TRP layer selection on a parameter tree.

  "matrix" on every 4-D Flax convolution kernel (kh, kw, in, out) with
  kh * kw > 1 except the model's first convolution; `matrix_labels`' label
  on every other leaf, its "matrix" (Dense kernels, 1x1 and first
  convolutions) renamed "full_rank". The first convolution is the one that
  reads the image: of the kernels above, the one with the fewest input
  channels (kernel.shape[2]), ties going to the first in the tree's
  flattening order. A flattening order alone is not the model's order (dict
  keys are sorted: "BottleneckBlock_0" before "Conv_0"), while the image's
  1-4 channels are fewer than any later convolution's in the official
  models (ResNet, PreResNet, WRN, VGG, DenseNet, ResNeXt, AlexNet).
  Networks with depthwise kernels (one input channel per group) need
  `param_labels`.

  Args:
    params: the parameter tree (shapes and key paths are read).

  Returns:
    A tree of label strings shaped like `params`.
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)
  convs = [i for i, leaf in enumerate(leaves) if _is_spatial_conv(leaf)]
  first = min(convs, key=lambda i: leaves[i].shape[2], default=None)
  base = treedef.flatten_up_to(matrix_labels(params))
  labels = ["matrix" if i in convs and i != first else
            "full_rank" if label == "matrix" else label for i, label in enumerate(base)]
  return treedef.unflatten(labels)


def _selection(param_labels: LabelsOrFn | None):
  """params -> bool tree of the "matrix" leaves, checking every label is known."""
  labels_fn = trp_labels if param_labels is None else param_labels

  def selected(params):
    labels = resolve_labels(labels_fn, params, TRP_LABELS, "trp")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    chosen = treedef.flatten_up_to(labels)
    for (path, leaf), label in zip(flat, chosen):
      if label == "matrix":
        check_matrix(leaf, jax.tree_util.keystr(path), "trp")
    return treedef.unflatten([label == "matrix" for label in chosen])

  return selected


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
    param_labels: LabelsOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """TRP: SGD-momentum with nuclear regularization and periodic SVD truncation.

  "matrix" leaves (by default the official selection, `trp_labels`: the
  non-1x1 convolution kernels after the first) get the nuclear sub-gradient
  and the truncation; every leaf gets the SGD step (coupled L2, momentum, lr).

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
    param_labels: label tree or callable params -> labels, from "matrix"
      (truncated and regularised), "full_rank", "embedding", "head" and
      "vector" (SGD only); `matrix_labels` selects every hidden matrix. None
      means `trp_labels`. Default None (`trp_labels`). Under
      `optax.inject_hyperparams` pass a callable through `static_args`.

  References:
    Xu et al., "TRP: Trained Rank Pruning for Efficient Deep Neural Networks", IJCAI 2020.
    https://arxiv.org/abs/2004.14566 ; official code:
    https://github.com/yuhuixu1993/Trained-Rank-Pruning

  Example:
    >>> import gradkit
    >>> tx = gradkit.create("trp", learning_rate=0.05, period=20)
  """
  _checks.check_static_int("period", period)
  every = 1 if period is None else period
  check_truncation(rank, energy)
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_non_negative("nuclear_weight", nuclear_weight)
  kept = functools.partial(truncation_mask, rank=rank, energy=energy)
  selected = _selection(param_labels)
  return optax.chain(
      recipe(
          optax.masked(
              add_nuclear_norm_subgradient(nuclear_weight, every=every, truncation=kept),
              selected),
          optax.add_decayed_weights(checked_rate("weight_decay", weight_decay), mask),
          optax.trace(decay=momentum),
          learning_rate=learning_rate,
      ),
      optax.masked(project_trained_rank(rank, energy, every=every), selected),
  )
