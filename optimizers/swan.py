"""SWAN: SGD on the normalized and whitened gradient, stateless on matrices.

Ma, Gong, Scetbon, Meeds, "SWAN: SGD with Normalization and Whitening
Enables Stateless LLM Training", ICML 2025 (arXiv 2412.13148). No official
code was released; the rule follows the paper's operators.
"""

from __future__ import annotations

import jax
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import LabelsOrFn, MaskOrFn, descend, matrix_or_fallback
from gradkit.optimizers.matrix_labels import matrix_labels
from gradkit.registry import register
from gradkit.transforms.newton_schulz import whiten_newton_schulz
from gradkit.transforms.matrix_view import matrix_shape
from gradkit.transforms.normalization import normalize_axis

NS_STEPS = 10
AXIS = 0


def _single_entry_matrices_to_adamw(param_labels: LabelsOrFn | None, axis: int):
  """`param_labels` with "matrix" leaves whose 2-D view has one entry along
  GradNorm's `axis` (a (1, n) kernel, a (1, 1, 1, c) convolution) relabelled
  "vector": centring a single entry leaves exactly zero, so SWAN would never
  move them."""
  labels_of = matrix_labels if param_labels is None else param_labels

  def labels(params):
    base = labels_of(params) if callable(labels_of) else labels_of

    def one(label, leaf):
      shape = getattr(leaf, "shape", ())
      degenerate = len(shape) >= 2 and matrix_shape(shape)[axis] == 1
      return "vector" if label == "matrix" and degenerate else label

    return jax.tree.map(one, base, params)

  return labels


@register("swan")
def swan(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    ns_steps: int | None = None,
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
  """SWAN-0: W <- W - lr * GradWhitening(GradNorm(G)) on "matrix" leaves.

  GradNorm standardises every output unit's gradient over its inputs
  (`normalize_axis(axis, center=True)`: subtract the mean, divide by the
  population std clamped at eps); GradWhitening is (G G^T)^{-1/2} G by
  `ns_steps` coupled Newton–Schulz steps (`whiten_newton_schulz`), in
  float32. For an out x in layer with out <= in - 1 the direction has
  orthonormal rows, so every matrix step has Frobenius norm lr * sqrt(out)
  whatever the gradient's scale. Matrices keep no state.

  "embedding", "head" and "vector" leaves get AdamW (`optax.scale_by_adam`,
  eps added to sqrt(v_hat)) at `adam_learning_rate`, by default the same
  learning rate, as in the GaLore benchmark the paper follows. Weight decay
  is decoupled, p <- p - lr (d + wd p) with each branch's lr, on every
  branch, restricted by `mask`. A "matrix" whose 2-D view has a single entry
  along GradNorm's axis (a (1, n) kernel, a (1, 1, 1, c) convolution) also
  gets AdamW: its centred gradient is exactly zero, so SWAN would never move it.

  Args:
    learning_rate: float or optax schedule, for the matrix leaves (and the AdamW
      leaves unless `adam_learning_rate` is given). Default 1e-3.
    ns_steps: coupled Newton–Schulz steps (static int; None means 10). Default None.
    axis: axis of the 2-D view GradNorm reduces over (static; None means 0:
      each output unit of a Flax (in, out) kernel over its fan-in). Default None.
    eps: clamp on GradNorm's std and guard of the whitening's scaling. Default 1e-8.
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

  `ns_steps` and `axis` default to None so that `optax.inject_hyperparams`
  keeps them static; likewise `param_labels`, which it would otherwise take
  for a schedule. Pass explicit values there through `static_args`.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Ma, Gong, Scetbon & Meeds, "SWAN: SGD with Normalization and Whitening Enables Stateless LLM
    Training", ICML 2025. https://arxiv.org/abs/2412.13148

  Example:
    >>> import gradkit, jax.numpy as jnp
    >>> tx = gradkit.create("swan", learning_rate=1e-3)
    >>> state = tx.init({"w": jnp.ones((8, 4)), "b": jnp.zeros(4)})
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("adam_eps", adam_eps)
  if adam_learning_rate is not None:
    _checks.check_rate("adam_learning_rate", adam_learning_rate)
  direction = descend(
      normalize_axis(AXIS if axis is None else axis, center=True, eps=eps),
      whiten_newton_schulz(NS_STEPS if ns_steps is None else ns_steps, eps),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)
  adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
  adamw = descend(optax.scale_by_adam(b1, b2, adam_eps),
                  learning_rate=adam_lr, weight_decay=weight_decay, mask=mask)
  axis = AXIS if axis is None else axis
  return matrix_or_fallback(direction, adamw, _single_entry_matrices_to_adamw(param_labels, axis))
