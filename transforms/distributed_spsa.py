"""Shared-randomness data-parallel SPSA ("Just One Byte (per gradient)").

Parameters are replicated over one mesh axis; device i evaluates n projected
gradients p_{i,j} on its own batch shard along z_{i,j}, drawn from
key_{t,i,j} = fold_in(fold_in(fold_in(key, t), i), j). Only the scalars p are
all-gathered (optionally as one int8 each, see `one_byte.py`); every device
then regenerates all N = M n directions and applies, in the fixed order
(i, j) = (0, 0), (0, 1), ..., the rank-one steps

  theta <- theta - (lr / D) p_{i,j} z_{i,j},   D = sqrt(N) ("sqrt") or N ("mean").

Identical inputs and identical operation order keep the replicas bit-identical
without ever sending a vector. Not implemented: the reference's optional
log-eps random walk (`gamma`, off by default) and its seed built from decimal
digits of (t, j, join time); the fold_in keys play that role.

References:
  E. Zelikman, Q. Huang, P. Liang, N. Haber, N. Goodman, Just One Byte (per
  gradient): A Note on Low-Bandwidth Decentralized Language Model Finetuning
  Using Shared Randomness, arXiv 2306.10015, 2023 (code: ezelikman/justonebyte).
  S. Malladi et al., Fine-Tuning Language Models with Just Forward Passes
  (MeZO), NeurIPS 2023.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from gradkit import _checks
from gradkit.transforms.one_byte import DEFAULT_SCALE, one_byte_decode, one_byte_encode
from gradkit.transforms.spsa import (
    DISTRIBUTIONS,
    Distribution,
    projected_gradient,
    sample_direction,
)

Normalization = Literal["sqrt", "mean"]
NORMALIZATIONS = ("sqrt", "mean")


class DistributedSpsaInfo(NamedTuple):
  """What one distributed step saw.

  projected_gradients: (M, n) float32, the p_{i,j} every replica applied (decoded
    when `one_byte`); replicated.
  local_projected_gradients: (M, n) float32, row i as device i computed it before
    encoding; sharded by rows, so reading it is the caller's transfer, not the step's.
  """

  projected_gradients: jax.Array
  local_projected_gradients: jax.Array


def _perturbation_key(key: jax.Array, step: jax.typing.ArrayLike, device: jax.typing.ArrayLike,
                      index: jax.typing.ArrayLike) -> jax.Array:
  """key_{t,i,j} = fold_in(fold_in(fold_in(key, t), i), j): the seed of z_{i,j} at step t."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, step), device), index)


def distributed_spsa_step(
    loss_fn: Callable[[Any, Any], jax.Array],
    mesh: jax.sharding.Mesh,
    *,
    learning_rate: optax.ScalarOrSchedule = 0.1,
    eps: float = 1e-3,
    num_perturbations: int = 1,
    one_byte: bool = False,
    one_byte_scale: float = DEFAULT_SCALE,
    normalization: Normalization = "sqrt",
    distribution: Distribution = "gaussian",
    axis_name: str = "data",
) -> Callable[[Any, Any, jax.Array, jax.typing.ArrayLike], tuple[Any, DistributedSpsaInfo]]:
  """A jitted data-parallel ZO step `(params, batch, key, step) -> (params, info)`.

  Args:
    loss_fn: `loss_fn(params, batch_shard) -> scalar`, evaluated on each device's
      shard of `batch` (every leaf split along its leading axis over `axis_name`).
    mesh: the device mesh; `params`, `key` and `step` are replicated over it.
    learning_rate: lr, a float or a schedule of `step` (reference default 0.1).
    eps: perturbation size of the central difference (reference default 1e-3).
    num_perturbations: n, projected gradients per device per step (the
      reference's `gradient_acc_steps`, 30 there; 1 here, as MeZO). Default 1.
    one_byte: exchange each p as one int8 code (`one_byte_encode`) and apply the
      decoded values; relative error <= exp(1 / (2 one_byte_scale)) - 1 in range.
      A NaN p is sent as 0 (no step along it); without `one_byte` it makes every
      replica's params NaN. Either way `info` shows it. Default False.
    one_byte_scale: log scale of the codec. Default 8.0 (`one_byte.DEFAULT_SCALE`).
    normalization: "sqrt" divides the summed steps by sqrt(N), N = M n, as the
      reference does; "mean" divides by N, i.e. the average of the N
      single-device estimates p z (one MeZO step with an n-SPSA estimate). Default "sqrt".
    distribution: "gaussian" (paper) or "rademacher" entries of z. Default "gaussian".
    axis_name: the mesh axis the data is split over; replicas along other mesh
      axes repeat the same work. Default "data".

  Returns:
    A jitted function. Inputs are placed on the mesh inside it; `step` (an int)
    enters the keys and the schedule, so a new step does not retrace, though
    host params on the first call and replicated params afterwards compile
    twice (pass `jax.device_put(params, NamedSharding(mesh, P()))` to compile
    once). The all-gather carries n float32 (or int8) per device and is the
    step's only collective; the new params are replicated.

  References:
    Zelikman et al., "Just One Byte (per gradient): A Note on Low-Bandwidth Decentralized Language
    Model Finetuning Using Shared Randomness", 2023. https://arxiv.org/abs/2306.10015 ; official
    code: https://github.com/ezelikman/justonebyte

    Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023.
    https://arxiv.org/abs/2305.17333 ; official code: https://github.com/princeton-nlp/MeZO

  Example:
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
    >>> step_fn = distributed_spsa_step(loss, mesh, learning_rate=1e-3)
    >>> params, info = step_fn(params, batch, jax.random.key(0), 0)
  """
  _checks.check_rate("learning_rate", learning_rate)
  _checks.check_eps("eps", eps, 1e-3, _checks.FINITE_DIFFERENCE)
  _checks.check_positive("one_byte_scale", one_byte_scale)
  if isinstance(num_perturbations, bool) or not isinstance(num_perturbations, int) \
      or num_perturbations < 1:
    raise ValueError(f"num_perturbations must be an int >= 1, got {num_perturbations!r}")
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
  if axis_name not in mesh.axis_names:
    raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {mesh.axis_names}")

  num_devices = mesh.shape[axis_name]
  total = num_devices * num_perturbations
  divisor = math.sqrt(total) if normalization == "sqrt" else float(total)

  def shard_step(params, batch, key, step):
    device = jax.lax.axis_index(axis_name)

    def estimate(j):
      z = sample_direction(_perturbation_key(key, step, device, j), params, distribution)
      return projected_gradient(lambda p: loss_fn(p, batch), params, z, eps)

    # Sequential over j so only one z is alive at a time.
    local = jax.lax.map(estimate, jnp.arange(num_perturbations))
    if one_byte:
      codes = jax.lax.all_gather(one_byte_encode(local, one_byte_scale), axis_name, to="invarying")
      gathered = one_byte_decode(codes, one_byte_scale)
    else:
      gathered = jax.lax.all_gather(local, axis_name, to="invarying")

    rate = learning_rate(step) if callable(learning_rate) else learning_rate
    coef = jnp.asarray(rate, jnp.float32) / divisor

    def apply(k, theta):
      i, j = k // num_perturbations, k % num_perturbations
      z = sample_direction(_perturbation_key(key, step, i, j), theta, distribution)
      c = coef * gathered[i, j]
      return jax.tree.map(lambda t, d: t - (c * d).astype(t.dtype), theta, z)

    new_params = jax.lax.fori_loop(0, total, apply, params)
    return new_params, DistributedSpsaInfo(gathered, local[None])

  replicated, split = PartitionSpec(), PartitionSpec(axis_name)
  mapped = jax.shard_map(
      shard_step,
      mesh=mesh,
      in_specs=(replicated, split, replicated, replicated),
      out_specs=(replicated, DistributedSpsaInfo(replicated, split)),
  )

  def step_fn(params, batch, key, step):
    # Placing the inputs inside jit lets callers pass host (numpy) or uncommitted
    # arrays with Auto and Explicit meshes alike.
    everywhere = jax.sharding.NamedSharding(mesh, replicated)
    params, key, step = jax.device_put((params, key, step), everywhere)
    batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, split))
    return mapped(params, batch, key, step)

  return jax.jit(step_fn)
