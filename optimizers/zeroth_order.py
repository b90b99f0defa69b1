"""MeZO and Sparse MeZO: ZO-SGD on the SPSA estimate, and a memory-lean step.

Both recipes are `gradkit.transforms.zeroth_order.estimate_spsa_gradient`
followed by gradkit's shared tail (decoupled weight decay, -lr), i.e. the
reference's theta <- theta - lr (p z + wd theta). Their `update` needs
`obj_fn=` (params -> loss on the current batch) and ignores the incoming
updates (pass the params). The reference decays every tensor whose name
contains none of "bias", "layer_norm", "layernorm"; gradkit's default `mask`
decays every leaf with ndim >= 2 (biases and norm scales are 1-D).

`mezo_step` is MeZO run the reference's way, in place on donated
parameters, for full-model fine-tuning at inference memory (its docstring
says why the jitted transform alone cannot get there).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register
from gradkit.transforms.spsa import DISTRIBUTIONS, Distribution, sample_direction
from gradkit.transforms.zeroth_order import (
    EstimateSpsaGradientState,
    estimate_spsa_gradient,
    small_magnitude_mask,
)

# Sparse MeZO perturbs this fraction of each leaf (its smallest-magnitude
# entries). The paper's sparsity values could not be checked (see BUILD_NOTES).
SPARSE_FRACTION = 0.25


def matrices_only(params: Any) -> Any:
  """Decay mask: True for leaves with ndim >= 2 (not biases, norm scales, scalars).

  Args:
    params: the parameter tree.

  Returns:
    A tree of booleans shaped like `params`.
  """
  return jax.tree.map(lambda p: p.ndim >= 2, params)


@register("mezo")
def mezo(
    learning_rate: optax.ScalarOrSchedule = 1e-6,
    eps: float = 1e-3,
    num_perturbations: int | None = None,
    distribution: Distribution = "gaussian",
    seed: int = 0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """MeZO (Malladi et al., NeurIPS 2023): ZO-SGD, theta <- theta - lr (p z + wd theta).

  Defaults: eps 1e-3 (official run.py), weight decay 0, one perturbation,
  Gaussian z, and lr 1e-6 — the full-parameter value of the official
  RoBERTa-large script (medium_models/mezo.sh) and of the recommended
  OPT-13B grid {1e-6, 1e-7} (large_models/README.md); large_models/mezo.sh's
  fallback 1e-5 is overridden there for full-parameter runs.

  Args:
    learning_rate: float or optax schedule. Default 1e-6.
    eps: perturbation scale. Default 1e-3.
    num_perturbations: directions averaged per step (static; None means 1). Default None.
    distribution: "gaussian" or "rademacher" (static). Default "gaussian".
    seed: seed of the perturbations (carried in the state). Default 0.
    weight_decay: decoupled decay, float or schedule. Default 0.0.
    mask: decay mask tree or callable. Default None (`matrices_only`: leaves with ndim >= 2).

  References:
    Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023.
    https://arxiv.org/abs/2305.17333 ; official code: https://github.com/princeton-nlp/MeZO
  """
  return recipe(
      estimate_spsa_gradient(eps, num_perturbations, distribution, seed),
      learning_rate=learning_rate, weight_decay=weight_decay,
      mask=matrices_only if mask is None else mask,
  )


@register("sparse_mezo")
def sparse_mezo(
    learning_rate: optax.ScalarOrSchedule = 1e-6,
    fraction: float = SPARSE_FRACTION,
    eps: float = 1e-3,
    num_perturbations: int | None = None,
    distribution: Distribution = "gaussian",
    seed: int = 0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """Sparse MeZO (Liu et al., 2024): MeZO perturbing only small-magnitude weights.

  Each step, `small_magnitude_mask(params, fraction)` (per leaf, from the
  unperturbed params) selects the entries z touches; the others keep a zero
  estimate, so with weight_decay 0 they never change. Other arguments and
  defaults as `mezo`; the default fraction (a quarter of each leaf) is a
  gradkit choice, the paper's sparsity values being unverified.

  Args:
    learning_rate: float or optax schedule. Default 1e-6.
    fraction: share of each leaf perturbed, in (0, 1] (may be scheduled). Default 0.25.
    eps: perturbation scale. Default 1e-3.
    num_perturbations: directions averaged per step (static; None means 1). Default None.
    distribution: "gaussian" or "rademacher" (static). Default "gaussian".
    seed: seed of the perturbations (carried in the state). Default 0.
    weight_decay: decoupled decay, float or schedule. Default 0.0.
    mask: decay mask tree or callable. Default None (`matrices_only`).

  References:
    Liu et al., "Sparse MeZO: Less Parameters for Better Performance in Zeroth-Order LLM
    Fine-Tuning", 2024. https://arxiv.org/abs/2402.15751

    Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023.
    https://arxiv.org/abs/2305.17333 ; official code: https://github.com/princeton-nlp/MeZO
  """
  _checks.check_positive("fraction", fraction)
  _checks.check_unit_interval("fraction", fraction, closed=True)
  return recipe(
      estimate_spsa_gradient(eps, num_perturbations, distribution, seed,
                             mask_fn=functools.partial(small_magnitude_mask, fraction=fraction)),
      learning_rate=learning_rate, weight_decay=weight_decay,
      mask=matrices_only if mask is None else mask,
  )


# XLA:CPU's default scheduler favours concurrency and runs every leaf's random
# number generation (a rolled threefry loop, ~4 leaf-sized u32 buffers) at
# once, holding ~2x the params in temporaries; the memory-optimised scheduler
# generates one leaf at a time. Other backends keep their defaults.
_CPU_MEMORY_FIRST = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


class MezoStep(NamedTuple):
  """The three programs of `mezo_step` and the step that runs them."""

  init: Callable[[Any], EstimateSpsaGradientState]
  step: Callable[..., tuple[Any, EstimateSpsaGradientState, jax.Array]]
  programs: Callable[..., dict[str, jax.stages.Compiled]]


def mezo_step(
    obj_fn: Callable[..., jax.Array],
    learning_rate: optax.ScalarOrSchedule = 1e-6,
    eps: float = 1e-3,
    distribution: Distribution = "gaussian",
    seed: int = 0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> MezoStep:
  """MeZO's in-place step: theta+eps z, f+, theta-2eps z, f-, theta+eps z-lr(p z+wd theta).

  Same update, seed path and state as `mezo` (one perturbation), but run as
  the reference trainer does, overwriting the parameters: three elementwise
  programs that take the parameters donated and regenerate z from the key
  (never stored) — perturb by +eps z, perturb by -2 eps z, and restore +
  update fused — and the forward program `obj_fn` run twice in between. The
  step's peak memory is that of its largest program, i.e. one forward pass
  (plus, on CPU, one leaf's random-number buffers; see
  experiments/bench_zeroth_order.py). A single jitted program cannot reach
  this: XLA never writes temporaries into an entry parameter's buffer, so
  theta +- eps z costs a second copy of the parameters there.

  Float drift: theta + eps z - 2 eps z + eps z is not theta after rounding
  (float32 ~1e-7 relative, bf16/float16 up to one ulp per step), so the
  parameters drift from the functional `mezo` by that much per step, as in
  the reference. The Sparse MeZO mask and n > 1 perturbations are not
  offered here: both need the unperturbed parameters (or the mask) kept
  across the passes; use the `sparse_mezo` / `mezo` transforms.

  Args:
    obj_fn: (params, *batch) -> scalar loss (dropout off).
    learning_rate: as in `mezo`. Default 1e-6.
    eps: as in `mezo`. Default 1e-3.
    distribution: as in `mezo`. Default "gaussian".
    seed: as in `mezo`. Default 0.
    weight_decay: as in `mezo`. Default 0.0.
    mask: as in `mezo`. Default None (`matrices_only`).

  Returns:
    `MezoStep(init, step, programs)`: `init(params)` gives the state;
    `step(params, state, *batch) -> (params, state, loss at theta + eps z)`
    consumes (donates) `params`; `programs(params, state, *batch)` gives the
    compiled programs {"perturb", "forward", "restore_update"} for
    `memory_analysis()`.

  References:
    Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023.
    https://arxiv.org/abs/2305.17333 ; official code: https://github.com/princeton-nlp/MeZO
  """
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
  _checks.check_eps("eps", eps, 1e-3, _checks.FINITE_DIFFERENCE)
  _checks.check_rate("learning_rate", learning_rate)
  _checks.check_rate("weight_decay", weight_decay)
  mask = matrices_only if mask is None else mask
  options = _CPU_MEMORY_FIRST if jax.default_backend() == "cpu" else None

  def direction(params, state):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.count)
    return sample_direction(jax.random.fold_in(key, 0), params, distribution)

  def perturb(params, state, scale):
    return jax.tree.map(lambda p, d: p + (scale * d).astype(p.dtype),
                        params, direction(params, state))

  def restore_update(params, state, loss_plus, loss_minus):
    grad_scale = (loss_plus.astype(jnp.float32) - loss_minus.astype(jnp.float32)) / (2.0 * eps)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
    decay = mask(params) if callable(mask) else mask

    def leaf(p, d, m):
      restored = (p + (eps * d).astype(p.dtype)).astype(jnp.float32)
      step = grad_scale * d.astype(jnp.float32) + wd * jnp.asarray(m, jnp.float32) * restored
      return (restored - lr * step).astype(p.dtype)

    return jax.tree.map(leaf, params, direction(params, state), decay)

  perturb_c = jax.jit(perturb, donate_argnums=0, compiler_options=options)
  forward_c = jax.jit(obj_fn, compiler_options=options)
  restore_update_c = jax.jit(restore_update, donate_argnums=0, compiler_options=options)

  def init(params):
    return estimate_spsa_gradient(eps, seed=seed).init(params)

  def step(params, state, *batch):
    params = perturb_c(params, state, eps)
    loss_plus = forward_c(params, *batch)
    params = perturb_c(params, state, -2.0 * eps)
    loss_minus = forward_c(params, *batch)
    params = restore_update_c(params, state, loss_plus, loss_minus)
    state = EstimateSpsaGradientState(optax.safe_increment(state.count), state.key)
    return params, state, loss_plus

  def programs(params, state, *batch):
    loss = jax.eval_shape(obj_fn, params, *batch)
    return {
        "perturb": perturb_c.lower(params, state, eps).compile(),
        "forward": forward_c.lower(params, *batch).compile(),
        "restore_update": restore_update_c.lower(params, state, loss, loss).compile(),
    }

  return MezoStep(init, step, programs)
