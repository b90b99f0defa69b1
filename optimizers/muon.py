"""Muon: momentum orthogonalized by Newton–Schulz, AdamW on the other leaves.

On "matrix" leaves (`matrix_labels`): bias-corrected Nesterov EMA momentum
(`debiased_ema`, beta 0.95; `bias_correction=False` gives KellerJordan/Muon's
uncorrected `muon_update` momentum), the quintic Newton–Schulz map
(`orthogonalize_newton_schulz`, Muon's coefficients, 5 steps), the width
scaling sqrt(max(1, fan_out / fan_in)), then decoupled weight decay and -lr.
This is `optax.contrib.muon`'s matrix branch with its default settings.
Kernels with more than two axes use the 2-D view of
`gradkit.transforms.matrix_view`: a convolution kernel (kh, kw, in, out)
becomes (kh * kw * in, out), so fan_in = kh * kw * in (rows) and
fan_out = out (columns), the same as optax with
`MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)`.

"embedding", "head" and "vector" leaves get AdamW (`optax.scale_by_adam`,
with its Nesterov first moment by default, as optax's fallback) at
`adam_learning_rate`. The defaults are optax's; `muon`'s docstring gives
the arguments for KellerJordan/Muon's (its Newton–Schulz runs in bfloat16,
here in float32). The default labelling follows Muon's authors
(embeddings and the output head on AdamW), where `optax.contrib.muon` sends
every 2-D leaf to Muon unless given `muon_weight_dimension_numbers`.

References:
  K. Jordan, Y. Jin, V. Boza, J. You, F. Cesista, L. Newhouse, J. Bernstein,
  Muon: An optimizer for hidden layers in neural networks (2024),
  https://kellerjordan.github.io/posts/muon/ (code: KellerJordan/Muon).
"""

from __future__ import annotations

import math

import jax
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import (
    LabelsOrFn,
    MaskOrFn,
    descend,
    matrix_or_fallback,
    optax_alias,
)
from gradkit.registry import register
from gradkit.transforms.matrix_view import stateless_matrix_transform
from gradkit.transforms.moments import debiased_ema
from gradkit.transforms.newton_schulz import MUON_COEFFICIENTS, orthogonalize_newton_schulz

NS_STEPS = 5


def _scale_by_width(m: jax.Array) -> jax.Array:
  """Keller Jordan's width scaling, on the (fan_in, fan_out) view."""
  fan_in, fan_out = m.shape
  return m * math.sqrt(max(1.0, fan_out / max(fan_in, 1)))  # fan_in 0: an empty kernel


@register("muon")
def muon(
    learning_rate: optax.ScalarOrSchedule = 0.02,
    beta: float = 0.95,
    ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    ns_steps: int | None = None,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = True,
    bias_correction: bool = True,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float = 1e-8,
    adam_weight_decay: optax.ScalarOrSchedule = 0.0,
    adam_nesterov: bool = True,
    param_labels: LabelsOrFn | None = None,
    ns_coeffs: tuple[float, float, float] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Muon on "matrix" leaves, AdamW on "embedding", "head" and "vector" leaves.

  Matrix rule (per 2-D view X of shape (fan_in, fan_out)), step t:

    mu <- beta mu + (1 - beta) g
    m = beta mu / (1 - beta^(t+1)) + (1 - beta) g / (1 - beta^t)   (nesterov)
    m = beta mu + (1 - beta) g                  (nesterov, bias_correction=False)
    p <- p - lr * (sqrt(max(1, fan_out / fan_in)) NS5(m) + weight_decay p)

  (without `nesterov`, m = mu / (1 - beta^t), or mu without bias correction).
  The defaults are optax.contrib.muon's. KellerJordan/Muon's
  `SingleDeviceMuonWithAuxAdam` (momentum 0.95, no bias correction, NS eps
  1e-7; auxiliary Adam at lr 3e-4, betas (0.9, 0.95), eps 1e-10, no
  Nesterov; both weight decays 0) is `muon(bias_correction=False, eps=1e-7,
  adam_learning_rate=3e-4, adam_b2=0.95, adam_eps=1e-10, adam_nesterov=False)`.
  optax's argument name `ns_coeffs` is accepted for `ns_coefficients`; optax's
  `weight_decay_mask` is not an alias of `mask`, which masks the AdamW
  decay too.

  Args:
    learning_rate: Muon's rate (KellerJordan/Muon's default 0.02); a float or
      a schedule.
    beta: momentum decay, in [0, 1). Default 0.95.
    ns_coefficients: (a, b, c) of the quintic Newton–Schulz step. Default (3.4445, -4.7750, 2.0315).
    ns_steps: Newton–Schulz steps; None means 5 (an int must be listed in
      `static_args` under `optax.inject_hyperparams`). Default None.
    eps: added to ||m||_F before the Newton–Schulz iteration (optax 1e-8,
      KellerJordan/Muon 1e-7). Default 1e-8.
    weight_decay: decoupled decay of the matrix leaves. Default 0.0.
    mask: decay mask (tree or callable), for both rules. Default None (every leaf).
    nesterov: Nesterov look-ahead in the Muon momentum (static). Default True.
    bias_correction: divide the Muon momentum by 1 - beta^t as optax does
      (static); False is KellerJordan/Muon's `muon_update`. Default True.
    adam_learning_rate: AdamW's rate; None means `learning_rate` (optax;
      KellerJordan/Muon's default is 3e-4). Default None.
    adam_b1: AdamW's first-moment decay. Default 0.9.
    adam_b2: AdamW's second-moment decay (KellerJordan/Muon 0.95). Default 0.999.
    adam_eps: added to sqrt(v_hat) (PyTorch/optax placement; KellerJordan/Muon
      1e-10). Default 1e-8.
    adam_weight_decay: AdamW's decoupled decay. Default 0.0.
    adam_nesterov: NAdam first moment in the fallback (static); True as in
      `optax.contrib.muon` (which ties it to `nesterov`), False for the plain
      Adam of KellerJordan/Muon's `MuonWithAuxAdam`. Default True.
    param_labels: label tree or callable params -> labels ("matrix",
      "embedding", "head", "vector"); None means `matrix_labels` (a tree or
      callable must be listed in `static_args` under `optax.inject_hyperparams`,
      which would otherwise take a callable for a schedule). Default None (`matrix_labels`).
    ns_coeffs: optax.contrib.muon's name for `ns_coefficients` (an alias, the
      (a, b, c) form only; passing both is a ValueError). Default None.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Jordan et al., "Muon: An optimizer for hidden layers in neural networks", blog post, 2024.
    https://kellerjordan.github.io/posts/muon/ ; official code: https://github.com/KellerJordan/Muon

    Liu et al., "Muon is Scalable for LLM Training", 2025. https://arxiv.org/abs/2502.16982

  Example:
    >>> import jax.numpy as jnp
    >>> import gradkit
    >>> params = {"dense": {"kernel": jnp.eye(4, 8), "bias": jnp.zeros(8)}}
    >>> tx = gradkit.create("muon", learning_rate=0.02)
    >>> updates, state = tx.update(params, tx.init(params), params)
    >>> updates["dense"]["kernel"].shape
    (4, 8)
  """
  ns_coefficients = optax_alias(
      "ns_coefficients", ns_coefficients, MUON_COEFFICIENTS, "ns_coeffs", ns_coeffs)
  _checks.check_finite_numbers("ns_coefficients" if ns_coeffs is None else "ns_coeffs",
                               ns_coefficients, length=3)
  _checks.check_unit_interval("beta", beta)
  _checks.check_eps("eps", eps)  # m / (||m||_F + eps) is 0 / 0 for an all-zero m at eps = 0
  _checks.check_unit_interval("adam_b1", adam_b1)
  _checks.check_unit_interval("adam_b2", adam_b2)
  _checks.check_eps("adam_eps", adam_eps)
  _checks.check_rate("adam_weight_decay", adam_weight_decay)
  if adam_learning_rate is None:
    adam_learning_rate = learning_rate
  else:
    _checks.check_rate("adam_learning_rate", adam_learning_rate)
  if bias_correction:
    momentum = debiased_ema(beta, nesterov)
  else:
    # (1 - beta) * trace_t is the EMA mu_t, and (1 - beta)(g + beta trace_t) is
    # the Nesterov beta mu_t + (1 - beta) g: KellerJordan/Muon's two lerps.
    momentum = optax.chain(optax.trace(beta, nesterov), optax.scale(1.0 - beta))
  matrix = descend(
      momentum,
      orthogonalize_newton_schulz(
          ns_coefficients, NS_STEPS if ns_steps is None else ns_steps, eps),
      stateless_matrix_transform(_scale_by_width, "muon"),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)
  fallback = descend(
      optax.scale_by_adam(adam_b1, adam_b2, adam_eps, nesterov=adam_nesterov),
      learning_rate=adam_learning_rate, weight_decay=adam_weight_decay, mask=mask)
  return matrix_or_fallback(matrix, fallback, param_labels)
