"""DiceSGD: DP-SGD whose clipping bias is fed back through a clipped error buffer.

Input convention as `optax.contrib.differentially_private_aggregate`: the
incoming `updates` are PER-EXAMPLE gradients (a leading batch axis of size B
on every leaf, e.g. `jax.vmap(jax.grad(loss), in_axes=(None, 0))`), so these
transformations must come first in a chain, are not registered in
`gradkit.create`, and do not compose with `optax.MultiSteps`/`apply_every`.

`dice_sgd_aggregate` returns, on the mean-gradient scale (paper, Algorithm 1):
  v_t = (1/B) sum_i clip(g_i, C1) + clip(e_t, C2),  clip(u, C) = u min(1, C/||u||)
  e_{t+1} = e_t + g_bar - v_t  (what clipping removed, noise excluded)
  output v_t + w_t, w_t ~ N(0, (sigma sqrt(C1^2 + 2 C1 C2) / B)^2 I)
with global l2 norms (per example over all leaves; over the whole buffer),
e_0 = 0 and the key in the state.

Privacy: the error buffer carries un-noised per-example information into
later releases, so DP-SGD's noise sigma C1 is not enough once C2 > 0. By
default the noise follows the official code's DiceSGD calibration: `sigma` is
the DP-SGD accountant's multiplier and the added std on the clipped sum is
sigma C1 sqrt(1 + 2 C2 / C1) (`gradkit.privacy.dice_sgd_sensitivity`). Report
a run's epsilon with `gradkit.privacy.dice_sgd_epsilon` (same arguments);
solve sigma for a target epsilon with
`gradkit.privacy.noise_multiplier_for_epsilon`. Never account a C2 > 0 run
as DP-SGD with C1 alone: that under-reports epsilon.

References:
  X. Zhang, Z. Bu, Z. S. Wu, M. Hong, Differentially Private SGD Without
  Clipping Bias: An Error-Feedback Approach, ICLR 2024 (official code
  564612540/DiceSGD). M. Abadi et al., Deep Learning with Differential
  Privacy, CCS 2016 (DP-SGD).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.privacy import NOISE_CALIBRATIONS, dice_sgd_sensitivity


class DiceSgdAggregateState(NamedTuple):
  """Error-feedback buffer (like params, float32) and the raw noise key data."""

  error: optax.Updates
  key: jax.Array  # uint32 key data, split every step


def _clip_factor(norm: jax.Array, threshold: jax.typing.ArrayLike) -> jax.Array:
  # min(1, C/||u||); a zero vector keeps factor 1 (or 0 when C = 0): never 0/0.
  tiny = jnp.finfo(jnp.float32).tiny
  return jnp.minimum(1.0, threshold / jnp.maximum(norm, tiny))


def _check_noise_calibration(noise_calibration: str) -> None:
  if noise_calibration not in NOISE_CALIBRATIONS:
    raise ValueError(f"noise_calibration must be one of {NOISE_CALIBRATIONS}, "
                     f"got {noise_calibration!r}")


def dice_sgd_aggregate(
    clip_threshold: jax.typing.ArrayLike,
    feedback_clip_threshold: jax.typing.ArrayLike,
    noise_multiplier: jax.typing.ArrayLike,
    seed: int = 0,
    noise_calibration: str = "dice_sgd",
) -> optax.GradientTransformation:
  """Per-example clipping at C1, clipped error feedback at C2, DiceSGD-calibrated Gaussian noise.

  Args:
    clip_threshold: C1, the per-example global l2 clipping norm.
    feedback_clip_threshold: C2, the absolute clipping norm of the fed-back
      buffer (the official code's C2 flag is the ratio C2 / C1).
    noise_multiplier: sigma, the DP-SGD accountant's multiplier for the
      target (epsilon, delta) (`gradkit.privacy.noise_multiplier_for_epsilon`).
    seed: seed of the noise key. Default 0.
    noise_calibration: "dice_sgd": noise std sigma sqrt(C1^2 + 2 C1 C2) / B
      on the mean (the official code's calibration; epsilon from
      `gradkit.privacy.dice_sgd_epsilon`). "dp_sgd": DP-SGD's sigma C1 / B,
      for ablations or a sigma the caller inflated already
      (`gradkit.privacy.dice_sgd_noise_multiplier`); with C2 > 0 it is not
      private at DP-SGD's epsilon. Default "dice_sgd".

  Returns:
    A transformation mapping per-example gradients to the noisy DiceSGD
    direction v_t + w_t (no batch axis); chain e.g. `optax.sgd` after it.

  References:
    Zhang, Bu, Wu & Hong, "Differentially Private SGD Without Clipping Bias: An Error-Feedback
    Approach", ICLR 2024. https://arxiv.org/abs/2311.14632 ; official code:
    https://github.com/564612540/DiceSGD
  """
  _checks.check_non_negative("clip_threshold", clip_threshold)
  _checks.check_non_negative("feedback_clip_threshold", feedback_clip_threshold)
  _checks.check_non_negative("noise_multiplier", noise_multiplier)
  _check_noise_calibration(noise_calibration)

  def init_fn(params):
    error = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
    return DiceSgdAggregateState(error=error, key=jax.random.key_data(jax.random.key(seed)))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    batch = {g.shape[0] if g.ndim else None for g in leaves}
    if len(batch) != 1 or None in batch:
      raise ValueError("dice_sgd expects per-example gradients: the same leading batch axis "
                       f"on every leaf, got leading sizes {sorted(map(str, batch))}")
    batch_size = batch.pop()
    leaves = [g.astype(jnp.float32) for g in leaves]
    clipped_sum, _ = optax.transforms.per_example_global_norm_clip(leaves, clip_threshold)
    clipped_mean = treedef.unflatten([s / batch_size for s in clipped_sum])
    grad_mean = treedef.unflatten([g.mean(axis=0) for g in leaves])

    feedback_scale = _clip_factor(optax.tree.norm(state.error), feedback_clip_threshold)
    direction = jax.tree.map(lambda c, e: c + feedback_scale * e, clipped_mean, state.error)
    error = jax.tree.map(lambda e, g, v: e + g - v, state.error, grad_mean, direction)

    key, noise_key = jax.random.split(jax.random.wrap_key_data(state.key))
    noise = optax.tree.random_like(noise_key, direction)
    if noise_calibration == "dice_sgd":
      sensitivity = dice_sgd_sensitivity(jnp.asarray(clip_threshold, jnp.float32),
                                         jnp.asarray(feedback_clip_threshold, jnp.float32))
    else:
      sensitivity = clip_threshold
    std = noise_multiplier * sensitivity / batch_size
    noisy = jax.tree.map(lambda v, w: v + std * w, direction, noise)
    return noisy, DiceSgdAggregateState(error=error, key=jax.random.key_data(key))

  return optax.GradientTransformation(init_fn, update_fn)


def dice_sgd(
    learning_rate: optax.ScalarOrSchedule,
    clip_threshold: jax.typing.ArrayLike,
    feedback_clip_threshold: jax.typing.ArrayLike,
    noise_multiplier: jax.typing.ArrayLike,
    seed: int = 0,
    momentum: float | None = None,
    nesterov: bool = False,
    noise_calibration: str = "dice_sgd",
) -> optax.GradientTransformation:
  """DiceSGD: `dice_sgd_aggregate` then `optax.sgd` (per-example gradients in).

  Official training defaults (train_cifar.py): learning rate 0.1, C1 = 0.5,
  C2 = C1 (ratio 1), batch 1000. Any optax optimizer may replace SGD by
  chaining it after `dice_sgd_aggregate` (the official code also uses Adam).
  The privacy of a run is DiceSGD's, not DP-SGD's: report it with
  `gradkit.privacy.dice_sgd_epsilon(noise_multiplier, q, steps, delta,
  clip_threshold, feedback_clip_threshold)`.

  Args:
    learning_rate: SGD step size, a scalar or an optax schedule.
    clip_threshold: C1, the per-example clipping norm.
    feedback_clip_threshold: C2, the clipping norm of the fed-back error
      (absolute, not a ratio to C1).
    noise_multiplier: sigma, the DP-SGD accountant's multiplier; the added
      std is sigma sqrt(C1^2 + 2 C1 C2) / B on the mean scale by default.
    seed: seed of the noise, carried in the state. Default 0.
    momentum: SGD momentum, or None for none. Default None.
    nesterov: Use Nesterov momentum. Default False.
    noise_calibration: "dice_sgd" or "dp_sgd", as in `dice_sgd_aggregate`.
      Default "dice_sgd".

  Returns:
    An `optax.GradientTransformation` taking per-example gradients (leading
    batch axis on every leaf).

  References:
    Zhang, Bu, Wu & Hong, "Differentially Private SGD Without Clipping Bias: An Error-Feedback
    Approach", ICLR 2024. https://arxiv.org/abs/2311.14632 ; official code:
    https://github.com/564612540/DiceSGD

  Example:
    >>> import jax, jax.numpy as jnp
    >>> tx = dice_sgd(0.1, clip_threshold=1.0, feedback_clip_threshold=1.0,
    ...               noise_multiplier=0.0)
    >>> params = {"w": jnp.zeros(2)}
    >>> per_example = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}
    >>> updates, state = tx.update(per_example, tx.init(params))
    >>> [round(float(x), 4) for x in updates["w"]]
    [-0.045, -0.06]
  """
  _checks.check_rate("learning_rate", learning_rate)
  return optax.chain(
      dice_sgd_aggregate(clip_threshold, feedback_clip_threshold, noise_multiplier, seed,
                         noise_calibration),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def dp_sgd(
    learning_rate: optax.ScalarOrSchedule,
    clip_threshold: jax.typing.ArrayLike,
    noise_multiplier: jax.typing.ArrayLike,
    seed: int = 0,
    momentum: float | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
  """The DP-SGD baseline: `optax.contrib.differentially_private_aggregate` then `optax.sgd`.

  The same chain as `optax.contrib.dpsgd`, built with a key instead of its
  deprecated `seed` argument, and with the argument names of `dice_sgd`.

  Args:
    learning_rate: SGD step size, a scalar or an optax schedule.
    clip_threshold: C, the per-example clipping norm.
    noise_multiplier: sigma; the noise std is sigma C on the summed gradient.
    seed: seed of the noise. Default 0.
    momentum: SGD momentum, or None for none. Default None.
    nesterov: Use Nesterov momentum. Default False.

  Returns:
    An `optax.GradientTransformation` taking per-example gradients (leading
    batch axis on every leaf).

  References:
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
    https://arxiv.org/abs/1607.00133
  """
  _checks.check_rate("learning_rate", learning_rate)
  _checks.check_non_negative("clip_threshold", clip_threshold)
  _checks.check_non_negative("noise_multiplier", noise_multiplier)
  return optax.chain(
      optax.contrib.differentially_private_aggregate(
          clip_threshold, noise_multiplier, key=jax.random.key(seed)),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))
