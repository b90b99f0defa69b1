"""Gradient-regularised Newton steps with approximate Hessians (Algorithm 1).

At x with gradient g and a positive semi-definite curvature model H:

  delta = -(H + lambda I)^{-1} g,   lambda = |g| / gamma,

solved matrix-free by conjugate gradients (jax.scipy.sparse.linalg.cg). The
radius gamma adapts: the trial x+ = x + delta is accepted when

  f(x) - f(x+) >= |grad f(x+)|^2 / (8 lambda)

(tested as 8 lambda (f(x) - f(x+)) >= |grad f(x+)|^2, so a zero gradient is
accepted with a zero step); an accepted step doubles gamma (the next step's
first guess), a rejected one halves it (not below gamma_min) and retries, at
most `max_tries` times, all inside one `lax.while_loop`. If every try is
rejected the step is zero (x stays, as the original reference), and the next
step starts from half the radius this one started from (the reference keeps
the last halved value, gamma 2^-max_tries smaller: after one null or tiny
gradient it sat at gamma_min, where float32 rounding rejects every trial, so
training stopped for good).

H is the exact Hessian (Hessian-vector products), the Gauss-Newton matrix
(needs `model_fn=` and `loss_of_outputs=`) or the empirical Fisher (needs
`per_example_loss_fn=`); every variant needs `obj_fn=` for the test. Each
try costs up to `cg_max_iters` curvature products plus one value and
gradient: a method for small and medium models on a fixed (full or large)
batch, where the acceptance test is meaningful.

References:
  N. Semenov, M. Jaggi, N. Doikov, Gradient-Normalized Smoothness for
  Optimization with Approximate Hessians, arXiv 2506.13710, 2025
  (Algorithm 1; supplementary code epfml/hess-approx, `grad_norm_smooth`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, recipe
from gradkit.registry import register
from gradkit.second_order.operators import (
    empirical_fisher_operator,
    gauss_newton_operator,
    hessian_operator,
)

HessianApproximation = Literal["exact", "gauss_newton", "fisher"]
_NEEDS = {
    "exact": (),
    "gauss_newton": ("model_fn", "loss_of_outputs"),
    "fisher": ("per_example_loss_fn",),
}


class ScaleByApproxNewtonState(NamedTuple):
  """State of `scale_by_approx_newton` after a step."""

  gamma: jax.Array  # compute dtype: the next step's first radius guess.
  num_tries: jax.Array  # int32: trial steps the last update used (1..max_tries).
  accepted: jax.Array  # bool: whether the last update's step was accepted.
  regularization: jax.Array  # compute dtype: lambda = |g| / gamma of the last trial.


def _curvature(hessian: str, params, obj_fn, extras: dict[str, Any]) -> Callable:
  if hessian == "exact":
    return hessian_operator(obj_fn, params)
  if hessian == "gauss_newton":
    return gauss_newton_operator(extras["model_fn"], extras["loss_of_outputs"], params)
  return empirical_fisher_operator(extras["per_example_loss_fn"], params)


def _sq_norm(tree) -> jax.Array:
  return sum(jnp.sum(x * x) for x in jax.tree.leaves(tree))


def _compute_dtype(params) -> jnp.dtype:
  """The params' floating dtype, float32 at least (bf16 and float16 params compute in float32)."""
  return jnp.result_type(jnp.float32, *(jnp.result_type(p) for p in jax.tree.leaves(params)))


def scale_by_approx_newton(
    hessian: HessianApproximation = "exact",
    gamma_init: jax.typing.ArrayLike = 1.0,
    gamma_min: jax.typing.ArrayLike = 1e-9,
    max_tries: int = 40,
    cg_max_iters: int = 100,
    cg_tol: jax.typing.ArrayLike = 1e-5,
) -> optax.GradientTransformationExtraArgs:
  """Returns (H + lambda I)^{-1} g with the adaptive lambda of Algorithm 1.

  The output is minus the accepted Newton step (zero if none was accepted),
  so `optax.scale_by_learning_rate(1.0)` after it takes the paper's step.
  `update(updates, state, params, obj_fn=..., **curvature_inputs)`: `updates`
  is g at `params`, `obj_fn(params)` the scalar objective; the Gauss-Newton
  variant also needs `model_fn` (params -> outputs) and `loss_of_outputs`
  (outputs -> scalar), the Fisher one `per_example_loss_fn` (params -> vector
  of losses whose mean is the objective). Missing ones raise a TypeError
  naming them. Computed in the params' dtype, float32 at least (so in
  float32 for bf16 params, in float64 for float64 ones), the radius gamma
  included; output in each leaf's dtype.

  Args:
    hessian: "exact", "gauss_newton" or "fisher" (static). Default "exact".
    gamma_init: first radius gamma_0 (reference 1.0). Default 1.0.
    gamma_min: floor of gamma when halving (reference 1e-9). Default 1e-9.
    max_tries: inner trials per step (reference 40). Default 40.
    cg_max_iters: conjugate-gradient iterations per trial (gradkit choice;
      the reference factorises H + lambda I by Cholesky). Default 100.
    cg_tol: relative residual tolerance of CG. Default 1e-5.

  References:
    Semenov, Jaggi & Doikov, "Gradient-Normalized Smoothness for Optimization with Approximate
    Hessians", 2025. https://arxiv.org/abs/2506.13710 ; official code:
    https://github.com/epfml/hess-approx
  """
  if hessian not in _NEEDS:
    raise ValueError(f"hessian must be one of {sorted(_NEEDS)}, got {hessian!r}")
  for name, value in (("gamma_init", gamma_init), ("gamma_min", gamma_min), ("cg_tol", cg_tol)):
    _checks.check_positive(name, value)
  for name, value in (("max_tries", max_tries), ("cg_max_iters", cg_max_iters)):
    _checks.check_positive(name, value)

  def init_fn(params):
    dtype = _compute_dtype(params)
    return ScaleByApproxNewtonState(
        gamma=jnp.asarray(gamma_init, dtype),
        num_tries=jnp.zeros([], jnp.int32),
        accepted=jnp.zeros([], bool),
        regularization=jnp.zeros([], dtype),
    )

  def update_fn(updates, state, params=None, *, obj_fn=None, **extra_args):
    given = {"obj_fn": obj_fn, **extra_args}
    missing = [n for n in ("obj_fn", *_NEEDS[hessian]) if given.get(n) is None]
    if missing:
      raise TypeError(f"approx_newton (hessian={hessian!r}) needs the update keyword(s) "
                      f"{', '.join(missing)}")
    if params is None:
      raise ValueError("approx_newton needs params in update")
    if not jax.tree.leaves(updates):  # nothing to train: no step search (cg needs a leaf)
      return updates, state
    # Every scalar of the loop takes one dtype, whatever the dtype of a
    # (possibly injected, so float64 under x64) hyperparameter: lax.while_loop
    # needs its carry's dtypes unchanged.
    dtype = _compute_dtype(params)
    x = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
    g = jax.tree.map(lambda u: jnp.asarray(u, dtype), updates)
    f0 = jnp.asarray(obj_fn(x), dtype)
    floor = jnp.asarray(gamma_min, dtype)
    grad_norm = jnp.sqrt(_sq_norm(g))
    curvature = _curvature(hessian, x, obj_fn, extra_args)
    value_and_grad = jax.value_and_grad(obj_fn)

    def trial(carry):
      tries, gamma, _, _, _ = carry
      lam = grad_norm / gamma
      step, _ = jax.scipy.sparse.linalg.cg(
          lambda v: jax.tree.map(lambda hv, vi: hv + lam * vi, curvature(v), v),
          g, tol=cg_tol, maxiter=cg_max_iters)
      f_new, g_new = value_and_grad(jax.tree.map(lambda a, b: a - b, x, step))
      ok = 8.0 * lam * (f0 - f_new) >= _sq_norm(g_new)
      gamma = jnp.where(ok, 2.0 * gamma, jnp.maximum(0.5 * gamma, floor))
      return tries + 1, gamma, ok, lam, step

    # A non-finite gradient makes every trial fail and would drive gamma to
    # gamma_min silently: skip the search, keep gamma and return a NaN update
    # (visible, as optax's optimizers do; optax.apply_if_finite then skips it).
    finite = jnp.isfinite(grad_norm)

    def keep_trying(carry):
      tries, _, accepted, _, _ = carry
      return finite & jnp.logical_not(accepted) & (tries < max_tries)

    tries, gamma, accepted, lam, step = jax.lax.while_loop(
        keep_trying, trial,
        (jnp.zeros([], jnp.int32), state.gamma.astype(dtype), jnp.zeros([], bool),
         jnp.zeros([], dtype), jax.tree.map(jnp.zeros_like, g)))
    # A step whose every trial failed carries gamma over halved once, not
    # 2^max_tries times: one null or tiny gradient (no trial can pass, as the
    # true gradient at x+ is not small) would otherwise leave gamma near
    # gamma_min, where each trial's loss decrease is below float32 rounding
    # and no step is accepted again.
    gamma = jnp.where(accepted, gamma, jnp.maximum(0.5 * state.gamma.astype(dtype), floor))
    out = jax.tree.map(
        lambda s, u: jnp.where(finite, jnp.where(accepted, s, 0.0), jnp.nan).astype(u.dtype),
        step, updates)
    return out, ScaleByApproxNewtonState(
        gamma.astype(state.gamma.dtype), tries, accepted, lam.astype(state.regularization.dtype))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("approx_newton")
def approx_newton(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    hessian: HessianApproximation = "exact",
    gamma_init: jax.typing.ArrayLike = 1.0,
    gamma_min: jax.typing.ArrayLike = 1e-9,
    max_tries: int = 40,
    cg_max_iters: int = 100,
    cg_tol: jax.typing.ArrayLike = 1e-5,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """Gradient-regularised Newton with an approximate Hessian (Semenov et al., 2025).

  `scale_by_approx_newton` then gradkit's tail (decoupled weight decay, -lr).
  learning_rate = 1 and weight_decay = 0 (the defaults) take exactly the
  paper's step x+ = x - (H + |g|/gamma I)^{-1} g; the acceptance test always
  judges that full step, so other rates only shorten an accepted step.
  `update` needs `obj_fn=` (and, for hessian="gauss_newton",
  `model_fn=`/`loss_of_outputs=`; for "fisher", `per_example_loss_fn=`).
  Default curvature: the exact Hessian, which CG handles while H + lambda I
  stays positive definite (convex problems; in non-convex ones prefer
  "gauss_newton" or "fisher"). For small and medium models.

  Args:
    learning_rate: float or optax schedule (paper: 1). Default 1.0.
    hessian: as in `scale_by_approx_newton`. Default "exact".
    gamma_init: as in `scale_by_approx_newton`. Default 1.0.
    gamma_min: as in `scale_by_approx_newton`. Default 1e-9.
    max_tries: as in `scale_by_approx_newton`. Default 40.
    cg_max_iters: as in `scale_by_approx_newton`. Default 100.
    cg_tol: as in `scale_by_approx_newton`. Default 1e-5.
    weight_decay: decoupled decay (float or schedule); not in the paper. Default 0.0.
    mask: decay mask tree or callable. Default None (every leaf).

  References:
    Semenov, Jaggi & Doikov, "Gradient-Normalized Smoothness for Optimization with Approximate
    Hessians", 2025. https://arxiv.org/abs/2506.13710 ; official code:
    https://github.com/epfml/hess-approx
  """
  return recipe(
      scale_by_approx_newton(hessian, gamma_init, gamma_min, max_tries, cg_max_iters, cg_tol),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )
