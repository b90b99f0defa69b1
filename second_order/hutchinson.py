"""Hutchinson's estimate of a Hessian diagonal, and AdaHessian's spatial averaging.

`hutchinson_diagonal` draws Rademacher probes z and averages z ⊙ (H z), whose
expectation is diag(H) (Bekas, Kokiopoulou & Saad, "An estimator for the
diagonal of a matrix", 2007); with Rademacher z the variance of coordinate i
is Σ_{j≠i} H_ij² per probe, so a diagonal H is recovered exactly by one probe.
H z comes from `gradkit.curvature_products.hessian_vector_product`.

`estimate_hutchinson_diagonal` wraps it as a transformation whose state carries
the PRNG key; with one probe and the same key it draws the same probes as
`optax.contrib.hutchinson_estimator_diag_hessian` (the key is split once per
call and the subkey fills the tree with `optax.tree.random_like`).

`spatial_average` is the block averaging of AdaHessian (Yao et al., AAAI 2021;
official code amirgholami/adahessian), written for Flax layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit.curvature_products import hessian_vector_product

Params = Any


def _rademacher_like(key: jax.Array, params: Params) -> Params:
  # Drawn in float32 then cast, as optax does: signs are exact in any dtype.
  signs = optax.tree.random_like(key, params, jax.random.rademacher, dtype=jnp.float32)
  return optax.tree.cast(signs, optax.tree.dtype(params, "lowest"))


def hutchinson_diagonal(
    fn: Callable[[Params], jax.Array], params: Params, key: jax.Array, num_probes: int = 1
) -> Params:
  """Mean over `num_probes` Rademacher probes z of z ⊙ (∇²fn(params) z).

  Probe i is drawn from `key` itself when `num_probes` is 1 (optax's draw),
  else from `jax.random.split(key, num_probes)[i]`. Probes are summed in a
  loop, so memory does not grow with `num_probes` (a static int >= 1).

  Args:
    fn: scalar function of the parameters (e.g. the batch loss).
    params: the point at which the Hessian diagonal is estimated.
    key: PRNG key of the probes.
    num_probes: Rademacher probes averaged (a static int >= 1). Default 1.

  Returns:
    A tree like `params` with the diagonal estimate.

  References:
    Yao et al., "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning", AAAI 2021.
    https://arxiv.org/abs/2006.00719 ; official code: https://github.com/amirgholami/adahessian

    Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training", ICLR 2024. https://arxiv.org/abs/2305.14342 ; official code:
    https://github.com/Liuhong99/Sophia
  """
  if not isinstance(num_probes, int) or num_probes < 1:
    raise ValueError(f"num_probes must be an int >= 1, got {num_probes!r}")

  def estimate(k):
    z = _rademacher_like(k, params)
    return jax.tree.map(jnp.multiply, z, hessian_vector_product(fn, params, z))

  if num_probes == 1:
    return estimate(key)
  keys = jax.random.split(key, num_probes)
  total = jax.lax.fori_loop(
      0, num_probes,
      lambda i, acc: jax.tree.map(jnp.add, acc, estimate(keys[i])),
      jax.tree.map(jnp.zeros_like, params))
  return jax.tree.map(lambda t: t / num_probes, total)


class EstimateHutchinsonDiagonalState(NamedTuple):
  """PRNG key of the next probe draw."""

  key: jax.Array


def estimate_hutchinson_diagonal(
    num_probes: int | None = None, seed: int = 0
) -> optax.GradientTransformationExtraArgs:
  """Replaces the updates by Hutchinson's estimate of diag(∇²obj_fn(params)).

  `update(updates, state, params, obj_fn=...)`: `obj_fn` (params -> scalar
  loss of the current batch) is required; the incoming updates are ignored.
  Each call splits the carried key (`jax.random.PRNGKey(seed)` at init) and
  probes with the subkey, as optax.contrib.hutchinson_estimator_diag_hessian.

  Args:
    num_probes: probes averaged per call (static int; None means 1). Default None.
    seed: seed of the probe stream. Default 0.

  References:
    Yao et al., "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning", AAAI 2021.
    https://arxiv.org/abs/2006.00719 ; official code: https://github.com/amirgholami/adahessian

    Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training", ICLR 2024. https://arxiv.org/abs/2305.14342 ; official code:
    https://github.com/Liuhong99/Sophia
  """
  probes = 1 if num_probes is None else num_probes
  if not isinstance(probes, int) or probes < 1:
    raise ValueError(f"num_probes must be an int >= 1, got {num_probes!r}")

  def init_fn(params):
    del params
    return EstimateHutchinsonDiagonalState(key=jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None, obj_fn=None, **extra_args):
    del updates, extra_args
    if obj_fn is None:
      raise ValueError("the Hutchinson estimator needs obj_fn= (params -> scalar loss of the "
                       "current batch) in update")
    if params is None:
      raise ValueError("the Hutchinson estimator needs params in update")
    key, subkey = jax.random.split(state.key)
    diag = hutchinson_diagonal(obj_fn, params, subkey, probes)
    return diag, EstimateHutchinsonDiagonalState(key=key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _block_mean(x: jax.Array, axis: int, block_size: int) -> jax.Array:
  """Mean over runs of `block_size` consecutive entries along `axis`, broadcast back."""
  n = x.shape[axis]
  if n % block_size:
    raise ValueError(f"spatial average block {block_size} does not divide axis {axis} "
                     f"(length {n}) of a leaf of shape {x.shape}")
  moved = jnp.moveaxis(x, axis, 0)
  blocks = moved.reshape(n // block_size, block_size, *moved.shape[1:])
  mean = jnp.broadcast_to(jnp.mean(blocks, axis=1, keepdims=True), blocks.shape)
  return jnp.moveaxis(mean.reshape(moved.shape), 0, axis)


def spatial_average(diag: Params, block_size: int = 1, conv_window: bool = True) -> Params:
  """AdaHessian's spatial averaging of a (non-negative) diagonal, per leaf by rank.

  Flax layouts: `nnx.Linear`/`linen.Dense` kernels are (in, out), `Conv`
  kernels (*window, in, out); PyTorch's are (out, in) and (out, in, *window).

  - rank <= 1 (biases, norm scales, scalars): unchanged.
  - rank 2 (Dense kernel): `block_size` 1 leaves it unchanged (official
    image_classification optimizer); -1 averages over the whole input axis,
    axis 0 (official instruction version: PyTorch's row, dim 1 of
    (out, in)); b > 1 averages runs of b consecutive inputs of each output
    (fairseq version's view(-1, b) of the (out, in) tensor; b must divide
    the input size, else ValueError).
  - rank >= 3 (Conv kernel): with `conv_window`, the mean over the window
    axes, all but the last two (official: dims 2, 3 of (out, in, kh, kw)
    and dim 2 of Conv1d; the official code raises for rank 5, here a 3-D
    window is averaged the same way). Other rank >= 3 leaves, e.g. Flax
    attention kernels (in, heads, head_dim), are averaged the same way
    (over `in`); pass `conv_window=False` to leave them alone.

  Args:
    diag: tree of Hessian-diagonal estimates (AdaHessian passes |D|).
    block_size: static int, -1 or >= 1; the 2-D rule above. Default 1.
    conv_window: static bool; the rank >= 3 rule above. Default True.

  References:
    Yao et al., "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning", AAAI 2021.
    https://arxiv.org/abs/2006.00719 ; official code: https://github.com/amirgholami/adahessian
  """
  if not isinstance(block_size, int) or not (block_size == -1 or block_size >= 1):
    raise ValueError(f"block_size must be -1 or an int >= 1, got {block_size!r}")

  def average(d):
    if d.ndim == 2 and block_size != 1:
      return _block_mean(d, 0, d.shape[0] if block_size == -1 else block_size)
    if d.ndim >= 3 and conv_window:
      window = tuple(range(d.ndim - 2))
      return jnp.broadcast_to(jnp.mean(d, axis=window, keepdims=True), d.shape)
    return d

  return jax.tree.map(average, diag)
