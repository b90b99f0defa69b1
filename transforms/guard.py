"""A step guard: skip any step whose gradient, loss, updates or new state is not finite.

`optax.apply_if_finite` only looks at the gradients it is given. A finite
but huge gradient can overflow inside the optimizer (Adam's second moment,
8-bit absmax), and a NaN loss reaches a loss-based method (MeZO, the trial
steps of approx_newton) through `obj_fn` without touching the gradients:
either way the state turns NaN for good, or the method freezes. `guard(tx)`
computes `tx`'s step and keeps it only if everything it can see is finite;
otherwise the parameters stay put and `tx`'s state stays bit for bit as it
was, and the skip is counted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class GuardState(NamedTuple):
  """`guard`'s state: the inner state and the skip counters."""

  inner_state: optax.OptState
  num_skipped: jax.Array  # int32: steps skipped so far
  consecutive_skipped: jax.Array  # int32: skipped since the last kept step (0: it was kept)


def _all_finite(tree: Any) -> jax.Array:
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def guard(tx: optax.GradientTransformation, *, check_loss: bool = True,
          check_state: bool = True) -> optax.GradientTransformationExtraArgs:
  """`tx`, with every step whose inputs or results are not all finite skipped.

  A step is kept only if the gradients, `tx`'s updates, (with `check_state`)
  every floating leaf of `tx`'s new state, and (with `check_loss`) the loss
  are finite. The loss is the `value=` extra argument when given (optax's
  name for the current loss), else `obj_fn(params)` when `obj_fn=` is given
  (one more evaluation of the objective). A skipped step returns zero
  updates and `tx`'s old state, bit for bit, and counts in
  `GuardState.num_skipped`. Extra arguments reach `tx` unchanged.

  What it cannot do: a state that is already non-finite (restored from a
  bad checkpoint) makes every new state non-finite, so every step is
  skipped (`consecutive_skipped` grows: restore or re-initialise); a finite
  fault that an optimizer absorbs (a x1e30 gradient that Lion's sign
  momentum keeps finite) is not a fault it can see.

  Args:
    tx: the optimizer to guard.
    check_loss: also skip when the loss (`value=`, or `obj_fn(params)`) is
      not finite. Default True.
    check_state: also skip when `tx`'s new state is not finite. Default True.

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `GuardState`.

  References:
    optax.apply_if_finite, which checks the gradients only:
    https://optax.readthedocs.io/en/latest/api/transformations.html#optax.apply_if_finite
  """
  if not isinstance(check_loss, bool) or not isinstance(check_state, bool):
    raise ValueError(f"check_loss and check_state must be bools, got {check_loss!r}, "
                     f"{check_state!r}")
  tx = optax.with_extra_args_support(tx)

  def init_fn(params):
    zero = jnp.zeros([], jnp.int32)
    return GuardState(tx.init(params), zero, zero)

  def update_fn(updates, state, params=None, **extra_args):
    ok = _all_finite(updates)
    if check_loss:
      if extra_args.get("value") is not None:
        ok &= _all_finite(extra_args["value"])
      elif extra_args.get("obj_fn") is not None and params is not None:
        ok &= _all_finite(extra_args["obj_fn"](params))
    new_updates, new_inner = tx.update(updates, state.inner_state, params, **extra_args)
    ok &= _all_finite(new_updates)
    if check_state:
      ok &= _all_finite(new_inner)
    new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
    new_inner = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_inner,
                             state.inner_state)
    skipped = (~ok).astype(jnp.int32)
    return new_updates, GuardState(
        new_inner, state.num_skipped + skipped,
        jnp.where(ok, 0, state.consecutive_skipped + 1).astype(jnp.int32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
