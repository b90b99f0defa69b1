"""SPSA gradient estimation from forward passes only (MeZO), and Sparse MeZO's mask.

`estimate_spsa_gradient` returns (1/n) sum_i p_i z_i, where z_i is a seeded
random direction (`gradkit.transforms.spsa.sample_direction`, leaf j of z_i
from fold_in(fold_in(fold_in(key(seed), count), i), j)) and
p_i = (f(theta + eps z_i) - f(theta - eps z_i)) / (2 eps) is the central
difference of the loss `obj_fn` along it (`spsa.projected_gradient`). The
incoming updates are ignored: chain any optax transformation after it (SGD
gives MeZO's ZO-SGD, `optax.adam` gives ZO-Adam).

With `mask_fn`, every z is replaced by M (.) z (perturbation and estimate),
M = mask_fn(params) computed once per step from the unperturbed parameters,
so the + and - passes see the same mask and masked-out entries get a zero
estimate (Sparse MeZO). `small_magnitude_mask` is Sparse MeZO's selection.

References:
  S. Malladi et al., Fine-Tuning Language Models with Just Forward Passes,
  NeurIPS 2023 (official code princeton-nlp/MeZO). Y. Liu et al., Sparse
  MeZO: Less Parameters for Better Performance in Zeroth-Order LLM
  Fine-Tuning, 2024.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.transforms.spsa import (
  DISTRIBUTIONS,
  Distribution,
  projected_gradient,
  sample_direction,
)

MaskFn = Callable[[Any], Any]


class EstimateSpsaGradientState(NamedTuple):
  """Step counter and the raw key data of the construction seed."""

  count: jax.Array  # int32, folded into the key: a fresh z every step
  key: jax.Array  # uint32 key data of jax.random.key(seed)


def small_magnitude_mask(params: Any, fraction: jax.typing.ArrayLike) -> Any:
  """Sparse MeZO's selection: True where |theta| <= the `fraction`-quantile of |theta|.

  The threshold is taken per leaf (each leaf is one layer's tensor), by
  `jnp.quantile`'s linear interpolation: on W = [[0.5, -0.01, 0.2],
  [-0.9, 0.05, -0.3]] a fraction of 0.5 gives the median 0.25 and the mask
  [[0, 1, 1], [0, 1, 0]]. Per-layer thresholds are gradkit's documented
  choice; the paper's granularity (per layer or global) could not be checked
  against an official code. `fraction` may be traced.

  Args:
    params: the parameter tree.
    fraction: share of each leaf selected, in (0, 1] (may be traced).

  Returns:
    A boolean tree shaped like `params`.

  References:
    Liu et al., "Sparse MeZO: Less Parameters for Better Performance in Zeroth-Order LLM
    Fine-Tuning", 2024. https://arxiv.org/abs/2402.15751
  """

  def leaf_mask(p):
    if p.size == 0:  # no quantile of nothing; the mask is as empty as the leaf
      return jnp.zeros(p.shape, bool)
    magnitude = jnp.abs(p.astype(jnp.float32))
    return magnitude <= jnp.quantile(magnitude, jnp.asarray(fraction, jnp.float32))

  return jax.tree.map(leaf_mask, params)


def _direction(key: jax.Array, params: Any, distribution: Distribution, mask: Any) -> Any:
  z = sample_direction(key, params, distribution)
  if mask is None:
    return z
  return jax.tree.map(lambda d, m: jnp.where(m, d, jnp.zeros_like(d)), z, mask)


def spsa_gradient(
    obj_fn: Callable[[Any], jax.Array],
    params: Any,
    key: jax.Array,
    *,
    eps: jax.typing.ArrayLike,
    num_perturbations: int = 1,
    distribution: Distribution = "gaussian",
    mask: Any = None,
) -> Any:
  """(1/n) sum_i p_i z_i with z_i from fold_in(key, i), in the params' dtypes.

  Accumulated in float32. Functional: theta +- eps z_i are new arrays beside
  theta, so a jitted step holds several parameter-sized arrays at its peak;
  `gradkit.optimizers.mezo_step` runs MeZO in place at inference memory.

  Args:
    obj_fn: params -> scalar loss of the current batch.
    params: the point at which the gradient is estimated.
    key: PRNG key; direction i uses fold_in(key, i).
    eps: perturbation scale (keyword only).
    num_perturbations: directions averaged. Default 1.
    distribution: "gaussian" or "rademacher". Default "gaussian".
    mask: boolean tree restricting the perturbed entries, or None for all.
      Default None.

  Returns:
    The gradient estimate, a tree like `params` in its dtypes.

  References:
    Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023.
    https://arxiv.org/abs/2305.17333 ; official code: https://github.com/princeton-nlp/MeZO
  """

  def term(i):
    sub = jax.random.fold_in(key, i)
    # The barrier stops XLA folding a constant eps's 1/(2 eps) into the z
    # multiply: a constant and a traced eps (inject_hyperparams) then round
    # alike, where one ulp would be amplified by 1/eps in the next step's p.
    p = jax.lax.optimization_barrier(
        projected_gradient(obj_fn, params, _direction(sub, params, distribution, mask), eps))
    return jax.tree.map(lambda d: p * d.astype(jnp.float32),
                        _direction(sub, params, distribution, mask))

  total = jax.tree.map(lambda *terms: sum(terms), *[term(i) for i in range(num_perturbations)])
  return jax.tree.map(lambda t, x: (t / num_perturbations).astype(x.dtype), total, params)


def estimate_spsa_gradient(
    eps: jax.typing.ArrayLike = 1e-3,
    num_perturbations: int | None = None,
    distribution: Distribution = "gaussian",
    seed: int = 0,
    mask_fn: MaskFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """SPSA estimate (1/n) sum_i p_i z_i of the gradient of `obj_fn` (MeZO's n-SPSA).

  `update(updates, state, params, obj_fn=...)` ignores `updates` (pass the
  params or any tree shaped like them) and evaluates `obj_fn` (params ->
  scalar loss on the current batch, dropout off) 2n times.

  Args:
    eps: perturbation scale (MeZO's default 1e-3).
    num_perturbations: n, directions averaged per step (static int; None
      means 1, the paper's default, and stays untouched by
      `optax.inject_hyperparams`).
    distribution: "gaussian" (MeZO) or "rademacher" entries of z (static). Default "gaussian".
    seed: seed of the directions; the key is carried in the state, so the
      same seed gives the same trajectory. Default 0.
    mask_fn: optional params -> bool tree; z becomes mask (.) z everywhere
      (Sparse MeZO with `small_magnitude_mask`). A callable: under
      `optax.inject_hyperparams` pass it through `static_args`. Default None.

  Returns:
    A GradientTransformationExtraArgs with `EstimateSpsaGradientState`.

  References:
    Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023.
    https://arxiv.org/abs/2305.17333 ; official code: https://github.com/princeton-nlp/MeZO

  Example:
    >>> import optax, jax.numpy as jnp
    >>> loss = lambda p: jnp.sum(p ** 2)
    >>> tx = optax.chain(estimate_spsa_gradient(), optax.adam(1e-2))  # ZO-Adam
    >>> params = jnp.ones(3)
    >>> updates, state = tx.update(params, tx.init(params), params, obj_fn=loss)
  """
  n = 1 if num_perturbations is None else num_perturbations
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"num_perturbations must be an int >= 1, got {num_perturbations!r}")
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
  _checks.check_eps("eps", eps, 1e-3, _checks.FINITE_DIFFERENCE)

  def init_fn(params):
    del params
    return EstimateSpsaGradientState(
        count=jnp.zeros([], jnp.int32), key=jax.random.key_data(jax.random.key(seed)))

  def update_fn(updates, state, params=None, *, obj_fn=None, **extra_args):
    del updates, extra_args
    if obj_fn is None:
      raise TypeError("estimate_spsa_gradient needs the loss: call "
                      "update(updates, state, params, obj_fn=...) with obj_fn(params) -> scalar")
    if params is None:
      raise ValueError("estimate_spsa_gradient needs params")
    mask = None if mask_fn is None else mask_fn(params)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.count)
    estimate = spsa_gradient(obj_fn, params, key, eps=eps, num_perturbations=n,
                             distribution=distribution, mask=mask)
    return estimate, EstimateSpsaGradientState(optax.safe_increment(state.count), state.key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
