"""SinkGD: SGD on the SR-Sinkhorn (alternating row/column) normalized gradient.

Scetbon, Ma, Gong, Meeds, "Gradient Multi-Normalization for Stateless and
Scalable LLM Training", arXiv 2502.06742. No official code was found; the
rule follows the paper's SR-Sinkhorn procedure.
"""

from __future__ import annotations

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import LabelsOrFn, MaskOrFn, descend, matrix_or_fallback
from gradkit.registry import register
from gradkit.transforms.normalization import normalize_sinkhorn

NUM_ITERATIONS = 5
AXIS = 0


@register("sinkgd")
def sinkgd(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    num_iterations: int | None = None,
    axis: int | None = None,
    eps: float = 1e-8,
    b1: float = 0.9,
    b2: float = 0.999,
    adam_eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    param_labels: LabelsOrFn | None = None,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
  """SinkGD: W <- W - lr * SR-Sinkhorn_L(G) on "matrix" leaves.

  `normalize_sinkhorn(L, axis)`: L rounds of "every output unit's gradient to
  RMS 1 over its inputs, then every input's to RMS 1 over the outputs"
  (Flax (in, out) kernel with axis 0; the paper's rows-then-columns on the
  PyTorch (out, in) layout), norms clamped at eps. Every matrix step has
  entries of RMS 1 (Frobenius norm lr * sqrt(mn)). Matrices keep no state.

  "embedding", "head" and "vector" leaves get AdamW (`optax.scale_by_adam`,
  eps added to sqrt(v_hat)) at `adam_learning_rate`, by default the same
  learning rate. Weight decay is decoupled, p <- p - lr (d + wd p) with each
  branch's lr, on every branch, restricted by `mask`.

  Args:
    learning_rate: float or optax schedule, for the matrix leaves (and the AdamW
      leaves unless `adam_learning_rate` is given). Default 1e-3.
    num_iterations: SR-Sinkhorn rounds L (static int; None means 5). Default None.
    axis: axis of the 2-D view normalized first in each round (static; None
      means 0). Default None.
    eps: lower clamp on every row/column RMS. Default 1e-8.
    b1: AdamW's first-moment decay on the fallback leaves. Default 0.9.
    b2: AdamW's second-moment decay on the fallback leaves. Default 0.999.
    adam_eps: AdamW's eps. Default 1e-8.
    weight_decay: decoupled weight decay (float or schedule). Default 0.0.
    mask: weight-decay mask (tree of bools or callable), as optax.adamw's.
      Default None (every leaf).
    param_labels: label tree or callable params -> labels ("matrix",
      "embedding", "head", "vector"); None means `matrix_labels`. Default None (`matrix_labels`).
    adam_learning_rate: float or optax schedule for the AdamW leaves; None
      means `learning_rate`. Default None.

  `num_iterations`, `axis` and `param_labels` default to None so that
  `optax.inject_hyperparams` keeps them static (it would inject ints and take
  a callable for a schedule); pass explicit values there via `static_args`.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Scetbon, Ma, Gong & Meeds, "Gradient Multi-Normalization for Stateless and Scalable LLM
    Training", 2025. https://arxiv.org/abs/2502.06742
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("adam_eps", adam_eps)
  if adam_learning_rate is not None:
    _checks.check_rate("adam_learning_rate", adam_learning_rate)
  direction = descend(
      normalize_sinkhorn(NUM_ITERATIONS if num_iterations is None else num_iterations,
                         AXIS if axis is None else axis, eps),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)
  adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
  adamw = descend(optax.scale_by_adam(b1, b2, adam_eps),
                  learning_rate=adam_lr, weight_decay=weight_decay, mask=mask)
  return matrix_or_fallback(direction, adamw, param_labels)
