"""FRUGAL: AdamW in a low-rank subspace, a state-free rule on the rest of the gradient.

The SVD ("galore") type of the official `GaloreOptimizer`: each matrix
gradient G splits into Pi(G) = G P^T P (or P P^T G) and the residual
E = G - Pi(G); Pi(G)'s coordinates get PyTorch-style Adam (optax.scale_by_adam,
eps added after bias correction) whose state is zeroed whenever the
projector is re-chosen, E gets signSGD (or SGD, or nothing), and

  p <- p - lr (a * back(Adam(R)) + a * c * rule(E) + wd p),

a = `proj_params_lr_scale`, c = `inactive_lr_scale`. This is
`gradkit.transforms.low_rank.project_low_rank` with a complement. Decay is
applied with the step, p <- (1 - lr wd) p - lr d: the official order.
Leaves labelled "embedding", "head" or "vector" get AdamW (PyTorch eps).

This is the SVD/random type, an ablation in the paper. The paper's
pre-training FRUGAL (the official `block_adamw`) is `frugal_block` and its
GLUE fine-tuning FRUGAL (`coord_adamw`) is `frugal_coord`, both in
`gradkit.optimizers.frugal_subsets`. Not ported: the `randperm` projector.
"""

from __future__ import annotations

from typing import Literal

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import LabelsOrFn, MaskOrFn, matrix_recipe
from gradkit.registry import register
from gradkit.transforms.low_rank import (
    Side,
    check_positive_int,
    check_side,
    project_low_rank,
    resolve_side,
)

DENSITY = 0.25  # official class, CLI and recipe default
UPDATE_GAP = 200  # official class default and pre-training recipes
_KINDS = {"svd": "svd", "random": "orthogonal"}
_RULES = {"sign_sgd": "sign", "sgd": "sgd", "no": None}


def _state_free(rule: str | None, step: float) -> optax.GradientTransformation:
  """The complement rule on the whole gradient (density 0: no subspace at all)."""
  if rule is None:
    return optax.set_to_zero()
  if rule == "sign":
    return optax.chain(optax.scale_by_sign(), optax.scale(step))
  return optax.scale(step)


@register("frugal")
def frugal(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    density: float | None = None,
    update_gap: int | None = None,
    proj_type: Literal["svd", "random"] = "svd",
    proj_side: Side = "std",
    inactive_update_rule: Literal["sign_sgd", "sgd", "no"] = "sign_sgd",
    inactive_lr_scale: float = 1.0,
    proj_params_lr_scale: float = 1.0,
    reset_statistics: bool = True,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.01,
    mask: MaskOrFn = None,
    param_labels: LabelsOrFn | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """FRUGAL (SVD type): full-rank updates with Adam state on a rho fraction of each matrix.

  Every `update_gap` steps (k mod T == 0, from the first step) the
  projector is re-chosen from the current gradient and, with
  `reset_statistics`, the subspace Adam restarts from zero (moments and bias
  correction). The rank of an (m, n) matrix is round(rho * side), side = n
  for a right projector (m >= n under "std"), m for a left one, min(m, n)
  for "full"; clamped to >= 1 (the official code would use rank 0, i.e.
  no subspace, when round() gives 0). density = 0 gives the state-free rule
  alone. With density = 1 and "sign_sgd" the residual is rounding noise
  whose sign is a full-size step, as in the official code.

  Defaults are the official class defaults: density 0.25, T 200, SVD
  projector on the "std" side, sign_sgd with inactive_lr_scale 1,
  proj_params_lr_scale 1, reset_statistics True, lr 1e-3, betas
  (0.9, 0.999), eps 1e-8, wd 0.01 on every leaf. `density` and `update_gap`
  are static (None means the default, which `optax.inject_hyperparams`
  leaves alone; pass explicit values there through `static_args`).

  Args:
    learning_rate: float or optax schedule. Default 1e-3.
    density: rho in [0, 1], the subspace fraction (static; None means 0.25). Default None.
    update_gap: T, steps between projector refreshes (static; None means 200). Default None.
    proj_type: "svd" (top-r singular vectors) or "random" (a random
      semi-orthogonal matrix from `seed`, redrawn each refresh). Default "svd".
    proj_side: side rule ("std", "reverse_std", "left", "right", "full"). Default "std".
    inactive_update_rule: "sign_sgd", "sgd" or "no" for the residual. Default "sign_sgd".
    inactive_lr_scale: c, the residual's step relative to the subspace's. Default 1.0.
    proj_params_lr_scale: a, scales both parts of a projected matrix's step. Default 1.0.
    reset_statistics: zero the subspace Adam state at each refresh (static). Default True.
    b1: Adam's first-moment decay rate. Default 0.9.
    b2: Adam's second-moment decay rate. Default 0.999.
    eps: Adam's eps, added after bias correction (PyTorch placement). Default 1e-8.
    weight_decay: decoupled decay on every leaf unless `mask` says otherwise. Default 0.01.
    mask: which leaves decay (tree or callable). Default None (every leaf).
    param_labels: label tree or callable (None means `matrix_labels`).
      Default None (`matrix_labels`).
    seed: seed of the random projectors. Default 0.

  References:
    Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable
    Training", ICML 2025. https://arxiv.org/abs/2411.07837 ; official code:
    https://github.com/fzmushko/FRUGAL
  """
  rho = _checks.check_static_fraction("density", DENSITY if density is None else density)
  _checks.check_eps("eps", eps)
  check_positive_int("update_gap", update_gap)
  check_side("proj_side", proj_side)
  if proj_type not in _KINDS:
    raise ValueError(f"proj_type must be one of {tuple(_KINDS)}, got {proj_type!r}")
  if inactive_update_rule not in _RULES:
    raise ValueError(
        f"inactive_update_rule must be one of {tuple(_RULES)}, got {inactive_update_rule!r}")
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("proj_params_lr_scale", proj_params_lr_scale)
  _checks.check_non_negative("inactive_lr_scale", inactive_lr_scale)
  complement = _RULES[inactive_update_rule]
  complement_scale = proj_params_lr_scale * inactive_lr_scale

  def rank(shape: tuple[int, int]) -> int:
    m, n = shape
    side = {"right": n, "left": m, "full": min(m, n)}[resolve_side(shape, proj_side)]
    return round(side * rho)

  if rho == 0:
    matrix_rule = _state_free(complement, complement_scale)
  else:
    matrix_rule = project_low_rank(
        optax.scale_by_adam(b1, b2, eps), rank,
        UPDATE_GAP if update_gap is None else update_gap,
        kind=_KINDS[proj_type], side=proj_side, seed=seed, scale=proj_params_lr_scale,
        complement=complement, complement_scale=complement_scale,
        reset_on_refresh=reset_statistics)
  return matrix_recipe(matrix_rule, optax.scale_by_adam(b1, b2, eps),
                       learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
                       param_labels=param_labels)
