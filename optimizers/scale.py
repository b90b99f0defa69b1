"""SCALE: column-normalized SGD, with momentum only on the last layer.

Glentis, Li, Han, Hong, "A Minimalist Optimizer Design for LLM Pretraining",
arXiv 2506.16659; official code OptimAI-Lab/Minimalist_LLM_Pretraining
(`mem_eff_pt/pt_scale/scale_optimizer.py`, `utils/train_utils.py`).
"""

from __future__ import annotations

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import LabelsOrFn, MaskOrFn, descend, partitioned_recipe
from gradkit.registry import register
from gradkit.transforms.moments import scale_by_adam_eps_before_correction
from gradkit.transforms.normalization import normalize_axis

# The official code clamps the column RMS at 1e-8.
_RMS_CLAMP = 1e-8


@register("scale")
def scale(
    learning_rate: optax.ScalarOrSchedule = 1e-4,
    momentum: float = 0.9,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    param_labels: LabelsOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """SCALE: W <- W - lr * G / s, s the per-output-column RMS of G (clamp 1e-8).

  The normalization is `normalize_axis(0)`: reduce over axis 0 of the 2-D
  view, one scale per entry of the last axis (per output unit of a Flax
  (in, out) kernel; per feature of an `nn.Embed` (vocab, d) table, i.e. over
  the vocabulary, as the official code special-cases `embed_tokens`).

  - "matrix" and "embedding": normalized gradient, no state.
  - "head" (last layer): M <- momentum M + (1 - momentum) G, M_0 = 0, no bias
    correction (`optax.ema(debias=False)`, M kept in the params' dtype as in
    the official code), then normalized.
  - "vector": AdamW with eps added to the uncorrected sqrt(v), as in the
    official code (`scale_by_adam_eps_before_correction`), at
    `adam_learning_rate`.

  Weight decay is decoupled, p <- p - rate (d + wd p), with each branch's own
  rate, restricted by `mask`: the official (1 - rate wd) p - rate d exactly.

  Tied embeddings: the official code has no rule (its LLaMA head is untied).
  A table shared by `nn.Embed` and `attend` is one leaf, labelled "embedding"
  by default, so it is normalized over the vocabulary and keeps no momentum.

  Args:
    learning_rate: matrix learning rate, float or optax schedule. Default
      1e-4 (the class and CLI default; the 60M-350M recipes use 1e-3).
    momentum: decay of the head's momentum, in [0, 1). Default 0.9.
    adam_learning_rate: rate of the "vector" AdamW, float or schedule; None
      means `learning_rate` (the class default). The paper's adam_lr follows
      the matrix schedule, lr_a(t) = lr(t) adam_lr / lr_max: with a schedule,
      pass the same schedule with peak adam_lr (recipes: 0.02 at 60M-350M).
    b1: AdamW's first-moment decay. Default 0.9.
    b2: AdamW's second-moment decay. Default 0.999.
    eps: AdamW's eps. Default 1e-8.
    weight_decay: decoupled weight decay (float or schedule); default 0.
    mask: weight-decay mask (tree of bools or callable), as optax.adamw's.
      Default None (every leaf).
    param_labels: label tree or callable params -> labels ("matrix",
      "embedding", "head", "vector"); None means `matrix_labels`, which
      stays static under `optax.inject_hyperparams` (a callable would be
      taken for a schedule there unless listed in `static_args`). Default None (`matrix_labels`).

  Returns:
    An `optax.GradientTransformationExtraArgs`. State: the head's momentum
    and the AdamW moments of the vectors (plus scalar step counts).

  References:
    Glentis, Li, Han & Hong, "A Minimalist Optimizer Design for LLM Pretraining", 2025.
    https://arxiv.org/abs/2506.16659 ; official code:
    https://github.com/OptimAI-Lab/Minimalist_LLM_Pretraining

  Example:
    >>> import gradkit, jax.numpy as jnp
    >>> tx = gradkit.create("scale", learning_rate=1e-3, adam_learning_rate=2e-2)
    >>> state = tx.init({"lm_head": jnp.ones((8, 16)), "b": jnp.zeros(16)})
  """
  _checks.check_unit_interval("momentum", momentum)
  if adam_learning_rate is None:
    adam_learning_rate = learning_rate
  else:
    _checks.check_rate("adam_learning_rate", adam_learning_rate)
  decay = {"weight_decay": weight_decay, "mask": mask}
  normalized = descend(normalize_axis(0, eps=_RMS_CLAMP), learning_rate=learning_rate, **decay)
  head = descend(optax.ema(momentum, debias=False), normalize_axis(0, eps=_RMS_CLAMP),
                 learning_rate=learning_rate, **decay)
  adamw = descend(scale_by_adam_eps_before_correction(b1, b2, eps),
                  learning_rate=adam_learning_rate, **decay)
  return partitioned_recipe(
      {"matrix": normalized, "embedding": normalized, "head": head, "vector": adamw},
      param_labels)
