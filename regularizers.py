"""Loss terms for Flax training loops that are not gradient transformations.

SAF (Sharpness-Aware training for Free) penalises how fast the model's
outputs on each training example move along the trajectory: a KL term
between the softened prediction the model made on the same example
`memory_epochs` epochs ago (stored, no gradient) and the current one,

  L_tra = tau^2 KL(p || q),  p = softmax(z_past / tau),  q = softmax(z / tau),

averaged over the batch and added as lambda * L_tra between `start_epoch`
and `end_epoch` (exclusive). The stored outputs live in a
`TrajectoryBuffer` of shape (N, memory_epochs + 1, C), indexed by each
example's dataset index (the data loader must yield it): every call writes
the current logits to slot epoch mod (E + 1) and reads slot
(epoch - E) mod (E + 1). It is a pure function of (buffer, logits), so it runs
inside a jitted train step; memory is N (E + 1) C numbers (float16 halves it).

This lives here rather than in `gradkit.transforms` because it changes the
loss, not the gradient: it needs the model's outputs and dataset indices,
which an optax update never sees. For SAM itself use optax.contrib.sam
(compared in tests/test_regularizers.py).

Defaults (official code AngusDujw/SAF, run.sh / README for ImageNet):
lambda 0.3 (`--reinforce`), tau 5, E 2 (`--minus_epoch`), start epoch 5,
end epoch 300 (SAF_train.py argparse).

References:
  J. Du, D. Zhou, J. Feng, V. Tan, J. T. Zhou, Sharpness-Aware Training for
  Free, NeurIPS 2022.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradkit import _checks


class TrajectoryBuffer(NamedTuple):
  """Past logits of every training example, one slot per remembered epoch."""

  logits: jax.Array  # (num_examples, memory_epochs + 1, num_classes)


def init_trajectory_buffer(
    num_examples: int, num_classes: int, memory_epochs: int = 2, dtype: jnp.dtype = jnp.float32
) -> TrajectoryBuffer:
  """Zeros for N examples, C classes and E = memory_epochs (E >= 1).

  Args:
    num_examples: N, the size of the training set.
    num_classes: C, the width of the stored outputs.
    memory_epochs: E, how many epochs back the stored outputs are read.
      Default 2.
    dtype: dtype of the stored outputs. Default jnp.float32.

  Returns:
    A `TrajectoryBuffer` of zeros with shape (N, E + 1, C).

  References:
    Du et al., "Sharpness-Aware Training for Free", NeurIPS 2022. https://arxiv.org/abs/2205.14083 ;
    official code: https://github.com/AngusDujw/SAF
  """
  for name, value in (("num_examples", num_examples), ("num_classes", num_classes),
                      ("memory_epochs", memory_epochs)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  return TrajectoryBuffer(jnp.zeros((num_examples, memory_epochs + 1, num_classes), dtype))


def trajectory_kl_loss(
    logits: jax.Array, past_logits: jax.Array, temperature: jax.typing.ArrayLike = 5.0
) -> jax.Array:
  """tau^2 KL(softmax(past / tau) || softmax(logits / tau)), averaged over the batch.

  `past_logits` is the target: no gradient flows into it.

  Args:
    logits: (B, C) current outputs.
    past_logits: (B, C) stored outputs of the same examples.
    temperature: tau. Default 5.0.

  Returns:
    The scalar loss.

  References:
    Du et al., "Sharpness-Aware Training for Free", NeurIPS 2022. https://arxiv.org/abs/2205.14083 ;
    official code: https://github.com/AngusDujw/SAF
  """
  _checks.check_positive("temperature", temperature)
  past = jax.lax.stop_gradient(past_logits).astype(jnp.float32)
  log_p = jax.nn.log_softmax(past / temperature, axis=-1)
  log_q = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return temperature ** 2 * jnp.mean(kl)


def saf_loss(
    buffer: TrajectoryBuffer,
    logits: jax.Array,
    indices: jax.Array,
    epoch: jax.typing.ArrayLike,
    *,
    weight: jax.typing.ArrayLike = 0.3,
    temperature: jax.typing.ArrayLike = 5.0,
    start_epoch: int = 5,
    end_epoch: int = 300,
) -> tuple[jax.Array, TrajectoryBuffer]:
  """(lambda * L_tra, buffer with this batch's logits stored).

  Add the first output to the task loss (differentiate with `has_aux` and
  carry the buffer). The term is zero outside start_epoch < epoch < end_epoch;
  start_epoch must be >= memory_epochs so every slot read has been written.

  Args:
    buffer: the stored outputs.
    logits: (B, C) current outputs on the batch.
    indices: (B,) dataset indices of the batch's examples.
    epoch: the current epoch (0-based; may be traced).
    weight: lambda (`--reinforce`). Default 0.3.
    temperature: tau. Default 5.0.
    start_epoch: the term is on strictly after this epoch. Default 5.
    end_epoch: the term is on strictly before this epoch. Default 300.

  References:
    Du et al., "Sharpness-Aware Training for Free", NeurIPS 2022. https://arxiv.org/abs/2205.14083 ;
    official code: https://github.com/AngusDujw/SAF
  """
  _checks.check_non_negative("weight", weight)
  memory = buffer.logits.shape[1] - 1
  if start_epoch < memory:
    raise ValueError(f"start_epoch ({start_epoch}) must be >= memory_epochs ({memory})")
  slots = memory + 1
  past = buffer.logits[indices, (epoch - memory) % slots]
  on = (epoch > start_epoch) & (epoch < end_epoch)
  term = jnp.where(on, weight * trajectory_kl_loss(logits, past, temperature), 0.0)
  stored = buffer.logits.at[indices, epoch % slots].set(
      jax.lax.stop_gradient(logits).astype(buffer.logits.dtype))
  return term, TrajectoryBuffer(stored)
