"""APOLLO and APOLLO-Mini: AdamW-like steps with SGD-like optimizer memory.

Matrix leaves get `gradkit.transforms.apollo.scale_by_apollo` (channel-wise
ratios at rank r for APOLLO, one tensor-wise ratio at rank 1 for
APOLLO-Mini); embeddings, heads, vectors and scalars get the official code's
second parameter group: AdamW with eps added to the uncorrected sqrt(v)
(`scale_by_adam_eps_before_correction`), at the same learning rate.
Leaves with more than two axes use the `matrix_view` rule (leading axes
merged); the rank is clamped to min(m, n) of each matrix.

`rank`, `update_proj_gap` and `param_labels` default to None (meaning 256,
200 and `matrix_labels`): `optax.inject_hyperparams` would turn an int
default into an array and call a callable default as a schedule, while it
leaves None alone. Pass explicit values there through `static_args`.

Weight decay is decoupled and applied with the step, p <- p - lr (d + wd p);
the official code decays after the update, p <- (1 - lr wd)(p - lr d),
which differs by O(lr^2 wd).

References:
  H. Zhu et al., APOLLO: SGD-like Memory, AdamW-level Performance, MLSys
  2025, https://arxiv.org/abs/2412.05270 (official code zhuhanqing/APOLLO).
"""

from __future__ import annotations

from typing import Literal

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import LabelsOrFn, MaskOrFn, descend, matrix_or_fallback
from gradkit.registry import register
from gradkit.transforms.apollo import Granularity, Limiter, scale_by_apollo
from gradkit.transforms.low_rank import Period, Rank, Scale, check_positive_int
from gradkit.transforms.moments import scale_by_adam_eps_before_correction

Projector = Literal["gaussian", "svd"]
RANK = 256  # the paper's 350M, 1B and 7B recipes
UPDATE_PROJ_GAP = 200  # the projector's default and every recipe's


def _check_limit_growth(limit_growth: float | None) -> None:
  """ValueError naming `limit_growth` (the limiter calls it gamma) unless None or > 0."""
  if isinstance(limit_growth, bool):
    raise ValueError(f"limit_growth must be None (no norm-growth limiter) or a number > 0 "
                     f"(the largest growth of the update norm per step), got {limit_growth!r}")
  if limit_growth is not None:
    _checks.check_positive("limit_growth", limit_growth)


def _apollo_recipe(
    learning_rate: optax.ScalarOrSchedule,
    rank: Rank | None,
    update_proj_gap: Period | None,
    weight_decay: optax.ScalarOrSchedule,
    mask: MaskOrFn,
    param_labels: LabelsOrFn | None,
    **apollo_options,
) -> optax.GradientTransformationExtraArgs:
  """APOLLO on "matrix" leaves, the official AdamW fallback on the rest."""
  check_positive_int("update_proj_gap", update_proj_gap)
  _check_limit_growth(apollo_options["limit_growth"])
  matrix_rule = scale_by_apollo(
      RANK if rank is None else rank,
      UPDATE_PROJ_GAP if update_proj_gap is None else update_proj_gap,
      **apollo_options)
  b1, b2, eps = (apollo_options[k] for k in ("b1", "b2", "eps"))
  tail = dict(learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)
  fallback = descend(scale_by_adam_eps_before_correction(b1, b2, eps), **tail)
  return matrix_or_fallback(descend(matrix_rule, **tail), fallback, param_labels)


@register("apollo")
def apollo(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    rank: Rank | None = None,
    scale: Scale = 1.0,
    update_proj_gap: Period | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    seed: int = 0,
    projector: Projector = "gaussian",
    granularity: Granularity = "channel",
    limit_growth: float | None = 1.01,
    scale_front: bool = False,
    param_labels: LabelsOrFn | None = None,
    limiter: Limiter = "decaying_max",
) -> optax.GradientTransformationExtraArgs:
  """APOLLO: the raw gradient scaled per channel by low-rank Adam ratios.

  Defaults are the paper's pre-training recipes (scripts/pretrain_c4): lr
  1e-2 (used there with cosine decay and 10% warm-up; the official class
  default is 1e-3), rank 256 (350M-7B; the 60M run used 128 and 130M 192),
  scale 1, projector refresh every 200 steps, betas (0.9, 0.999), eps 1e-6,
  no weight decay, norm-growth limiter on.

  Args:
    learning_rate: step size (float or schedule), shared by both groups. Default 1e-2.
    rank: projection rank r (static; None means 256), or a rule of each
      matrix's (m, n) view, `lambda s: min(s) // 4`, or of (path, shape)
      for per-layer ranks. Default None.
    scale: heuristic constant; updates are multiplied by sqrt(scale), or a
      per-layer rule fn(path, shape) -> scale. Default 1.0.
    update_proj_gap: projector refresh period T (static int; None means 200),
      or a per-layer rule fn(path, shape) -> int. Default None.
    b1: first-moment decay rate (both groups). Default 0.9.
    b2: second-moment decay rate (both groups). Default 0.999.
    eps: Adam's eps, added to the uncorrected sqrt(v) (both groups). Default 1e-6.
    weight_decay: decoupled weight decay (float or schedule). Default 0.0.
    mask: which leaves are decayed (tree or callable), as in optax.adamw. Default None (every leaf).
    seed: seed of the random projectors. Default 0.
    projector: "gaussian" (paper) or "svd" (GaLore's projector). Default "gaussian".
    granularity: "channel" (APOLLO) or "tensor". Default "channel".
    limit_growth: the norm-growth limiter's gamma, or None to disable it. Default 1.01.
    scale_front: apply sqrt(scale) before the limiter (official flag). Default False.
    param_labels: label tree or callable (None means `matrix_labels`);
      "matrix" leaves get APOLLO, the others AdamW. Default None (`matrix_labels`).
    limiter: the norm-growth limiter's reference (`limit_norm_growth`):
      "decaying_max", which one zero or tiny gradient cannot lock, or
      "official", the official code's rule, which it locks. Default "decaying_max".

  References:
    Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", MLSys 2025.
    https://arxiv.org/abs/2412.05270 ; official code: https://github.com/zhuhanqing/APOLLO
  """
  return _apollo_recipe(
      learning_rate, rank, update_proj_gap, weight_decay, mask, param_labels,
      granularity=granularity, scale=scale, b1=b1, b2=b2, eps=eps, seed=seed,
      projector=projector, limit_growth=limit_growth, scale_front=scale_front,
      limiter=limiter)


@register("apollo_mini")
def apollo_mini(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    scale: Scale = 128.0,
    update_proj_gap: Period | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    seed: int = 0,
    limit_growth: float | None = 1.01,
    scale_front: bool = False,
    param_labels: LabelsOrFn | None = None,
    projector: Projector = "gaussian",
    limiter: Limiter = "decaying_max",
) -> optax.GradientTransformationExtraArgs:
  """APOLLO-Mini: one tensor-wise ratio from rank-1 Gaussian projections.

  State per m x n matrix: 2 max(m, n) floats of moments and a min(m, n)
  projector, i.e. O(m + n). Defaults are the paper's recipes: lr 1e-2,
  scale 128 (130M used 192, long-context runs 384), refresh every 200
  steps, betas (0.9, 0.999), eps 1e-6, limiter on; `scale_front` was set
  in the 60M and 130M scripts only and changes nothing but the limiter's
  1e-8 guard. Other leaves get AdamW at the same lr, as in `apollo`.
  `projector="svd"` (the official group option `proj="svd"`, `--proj svd`
  in its scripts) projects on the gradient's top singular vector instead,
  recomputed on the same schedule.

  Args:
    learning_rate: step size (float or schedule), shared by both groups. Default 1e-2.
    scale: heuristic constant; updates are multiplied by sqrt(scale), or a
      per-layer rule fn(path, shape) -> scale. Default 128.0.
    update_proj_gap: projector refresh period T (static int; None means 200),
      or a per-layer rule fn(path, shape) -> int. Default None.
    b1: first-moment decay rate (both groups). Default 0.9.
    b2: second-moment decay rate (both groups). Default 0.999.
    eps: Adam's eps, added to the uncorrected sqrt(v) (both groups). Default 1e-6.
    weight_decay: decoupled weight decay (float or schedule). Default 0.0.
    mask: which leaves are decayed (tree or callable). Default None (every leaf).
    seed: seed of the random projectors. Default 0.
    limit_growth: the norm-growth limiter's gamma, or None to disable it. Default 1.01.
    scale_front: apply sqrt(scale) before the limiter (official flag). Default False.
    param_labels: label tree or callable (None means `matrix_labels`).
      Default None (`matrix_labels`).
    projector: "gaussian" (paper) or "svd" (the top singular vector, GaLore's
      projector), as in `apollo`. Default "gaussian".
    limiter: "decaying_max" or "official", as in `apollo`. Default "decaying_max".

  References:
    Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", MLSys 2025.
    https://arxiv.org/abs/2412.05270 ; official code: https://github.com/zhuhanqing/APOLLO
  """
  return _apollo_recipe(
      learning_rate, 1, update_proj_gap, weight_decay, mask, param_labels,
      granularity="tensor", scale=scale, b1=b1, b2=b2, eps=eps, seed=seed,
      projector=projector, limit_growth=limit_growth, scale_front=scale_front,
      limiter=limiter)
