"""GaLore and Natural GaLore: Adam on low-rank projections of matrix gradients.

Both are `gradkit.transforms.low_rank.project_low_rank` around Hugging
Face-style Adam (`scale_by_adam_eps_before_correction`: eps added to the
uncorrected sqrt(v), bias correction folded into the step, as in the
official `galore_torch/adamw.py` and Natural GaLore's `SubSpaceAdamW`), with
SVD projectors refreshed every `update_proj_gap` steps and moments carried
across refreshes. Leaves labelled "embedding", "head" or "vector" by
`param_labels` get the same Adam unprojected (the official AdamW group).

`rank`, `update_proj_gap` and `natural_history` are shapes and periods, so
static: their defaults are None (meaning 128, 200 and 20), which
`optax.inject_hyperparams` leaves alone; pass explicit values there through
`static_args` (likewise a `param_labels` tree or callable). The rank is
clamped to min(m, n) of each matrix's 2-D view (`gradkit.transforms.
matrix_view`: leading axes merged).

Per-layer settings: as the official code's parameter groups give layers
their own rank, update_proj_gap and scale, `rank`, `update_proj_gap` and
`scale` each take a constant or a rule `fn(path, shape)` of the leaf's key
path (`jax.tree_util.keystr(path)` names it) and its (m, n) matrix view,
e.g. `rank=lambda path, shape: 64 if "attn" in jax.tree_util.keystr(path)
else 128`. Rules are static: `gradkit.inject_hyperparams` keeps them so by
itself; under `optax.inject_hyperparams` list them in `static_args` (it
takes a callable hyperparameter for a schedule).

SVD signs: each singular vector is defined up to sign, and which sign an
SVD returns is its library's convention (here XLA's, on CPU LAPACK's; the
official code uses torch's). Within one projector period the steps do not
depend on it, but Adam's moments are carried across refreshes in the old
coordinates, so from the first refresh on (k = T) the trajectory depends on
the signs the SVD picked, and runs with another library (or device) agree
only up to that choice.

Weight decay is decoupled and applied with the step, p <- p - lr (d + wd p);
the official codes decay after the update, p <- (1 - lr wd)(p - lr d), which
differs by O(lr^2 wd).
"""

from __future__ import annotations

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import LabelsOrFn, MaskOrFn, matrix_recipe
from gradkit.registry import register
from gradkit.transforms.low_rank import (
    Period,
    Rank,
    Scale,
    Side,
    check_positive_int,
    check_side,
    project_low_rank,
)
from gradkit.transforms.moments import scale_by_adam_eps_before_correction
from gradkit.transforms.natural_gradient import precondition_natural_fisher

RANK = 128  # official CLI and the 60M recipe
UPDATE_PROJ_GAP = 200  # official class default and recipes
NATURAL_HISTORY = 20  # Natural GaLore's class and CLI default


def _hf_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  return scale_by_adam_eps_before_correction(b1, b2, eps)


@register("galore")
def galore(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    rank: Rank | None = None,
    update_proj_gap: Period | None = None,
    scale: Scale = 0.25,
    proj_type: Side = "std",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    param_labels: LabelsOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """GaLore-AdamW: Adam moments kept only for a rank-r projection of each matrix.

  For a matrix gradient G (m x n) with `proj_type="std"`: every T steps
  (k mod T == 0, from the first step) P = top-r right singular vectors
  (r x n) if m >= n, else left ones (m x r), of the current G; then
  R = G P^T (or P^T G), N = HF-Adam(R), update = scale * N P (or P N), and
  p <- p - lr (update + wd p). The projector sits on the smaller side, as
  in the official `galore_projector.py`; `optax.contrib.galore` puts it on
  the larger side (its default dimension numbers), so the two agree only on
  square matrices with swapped dimension numbers. Adam's moments and step
  count are carried across refreshes, as in the official AdamW, so after the
  first refresh the numbers depend on the SVD's sign convention (module
  docstring).

  Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-6, wd 0 and T = 200 are the
  official class defaults; rank 128 is the CLI / 60M recipe value and
  scale 0.25 the paper's pre-training recipes (the class default is 1.0).

  Args:
    learning_rate: float or optax schedule. Default 1e-3.
    rank: r (static int, or a per-layer rule fn(path, shape); None means 128),
      clamped per matrix. Default None.
    update_proj_gap: T, steps between SVD refreshes (static int, or a per-layer
      rule; None means 200). Default None.
    scale: alpha, multiplies the projected-back Adam step (not the decay); a
      number or a per-layer rule. Default 0.25.
    proj_type: "std", "reverse_std", "left", "right" or "full" (U^T G V). Default "std".
    b1: Adam's first-moment decay rate. Default 0.9.
    b2: Adam's second-moment decay rate. Default 0.999.
    eps: Adam's eps, added before bias correction (HF placement). Default 1e-6.
    weight_decay: decoupled decay (float or schedule). Default 0.0.
    mask: which leaves decay (tree or callable), as in optax.adamw. Default None (every leaf).
    param_labels: label tree or callable (None means `matrix_labels`).
      Default None (`matrix_labels`).

  References:
    Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", ICML 2024.
    https://arxiv.org/abs/2403.03507 ; official code: https://github.com/jiaweizzhao/GaLore
  """
  check_positive_int("update_proj_gap", update_proj_gap)
  check_side("proj_type", proj_type)
  adam = _hf_adam(b1, b2, eps)
  subspace = project_low_rank(
      adam,
      RANK if rank is None else rank,
      UPDATE_PROJ_GAP if update_proj_gap is None else update_proj_gap,
      kind="svd", side=proj_type, scale=scale)
  return matrix_recipe(subspace, adam, learning_rate=learning_rate, weight_decay=weight_decay,
                       mask=mask, param_labels=param_labels)


@register("natural_galore")
def natural_galore(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    rank: Rank | None = None,
    update_proj_gap: Period | None = None,
    scale: Scale = 0.25,
    natural_history: int | None = None,
    damping: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    param_labels: LabelsOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Natural GaLore: GaLore whose low-rank gradient is first Fisher-preconditioned.

  As the official `SubSpaceAdamW` with proj_type "natural_galore": a
  two-sided projection C = U^T G V (U, V the top-r left/right singular
  vectors of G, refreshed every T steps — the official Tucker decomposition
  of a matrix), then c_nat = (damping I + Gh Gh^T)^{-1} vec(C) over the last
  s cores (`precondition_natural_fisher`, history kept across refreshes as
  in the official code), then HF-Adam on c_nat, update = scale * U N V^T.

  Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-6, wd 0 (class defaults),
  rank 128, T 200, s 20, damping 1e-3 (official), scale 0.25 (the
  recipes; CLI 1.0). The recipes use lr 0.01 and wd 0.01 for the 60M model.

  Args:
    learning_rate: float or optax schedule. Default 1e-3.
    rank: r on both sides (static int, or a per-layer rule fn(path, shape);
      None means 128), clamped per matrix. Default None.
    update_proj_gap: T (static int, or a per-layer rule; None means 200). Default None.
    scale: alpha, multiplies the projected-back step; a number or a per-layer rule.
      Default 0.25.
    natural_history: s, cores kept for the Fisher (static int; None means 20). Default None.
    damping: lambda of the Fisher (official: 1e-3, hard-coded). Default 1e-3.
    b1: Adam's first-moment decay rate. Default 0.9.
    b2: Adam's second-moment decay rate. Default 0.999.
    eps: Adam's eps, added before bias correction (HF placement). Default 1e-6.
    weight_decay: decoupled decay (float or schedule). Default 0.0.
    mask: which leaves decay (tree or callable). Default None (every leaf).
    param_labels: label tree or callable (None means `matrix_labels`).
      Default None (`matrix_labels`).

  References:
    Das, "Natural GaLore: Accelerating GaLore for memory-efficient LLM Training and Fine-tuning",
    2024. https://arxiv.org/abs/2410.16029 ; official code:
    https://github.com/selfsupervised-ai/Natural-GaLore

    Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", ICML 2024.
    https://arxiv.org/abs/2403.03507 ; official code: https://github.com/jiaweizzhao/GaLore
  """
  check_positive_int("update_proj_gap", update_proj_gap)
  check_positive_int("natural_history", natural_history)
  adam = _hf_adam(b1, b2, eps)
  fisher = precondition_natural_fisher(
      NATURAL_HISTORY if natural_history is None else natural_history, damping)
  subspace = project_low_rank(
      optax.chain(fisher, adam),
      RANK if rank is None else rank,
      UPDATE_PROJ_GAP if update_proj_gap is None else update_proj_gap,
      kind="svd", side="full", scale=scale)
  return matrix_recipe(subspace, adam, learning_rate=learning_rate, weight_decay=weight_decay,
                       mask=mask, param_labels=param_labels)
