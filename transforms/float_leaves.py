"""Optimizers that leave integer, bool and float0 leaves of the parameters alone.

A parameter tree may hold non-trainable leaves (an int32 step counter, a bool
flag); `jax.grad(..., allow_int=True)` gives them `float0` gradients. An
optimizer must not touch them: weight decay would decrement a counter, and
arithmetic on `float0` fails ("Called power with a float0 array").
`float_leaves_only(tx)` runs `tx` on the floating leaves alone and returns a
zero update for the others.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from gradkit.transforms.loss_aware_partition import masked


def _is_float(leaf: Any) -> bool:
  return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def _float_mask(tree: Any) -> Any:
  return jax.tree.map(_is_float, tree)


def _all_float(tree: Any) -> bool:
  return all(_is_float(x) for x in jax.tree.leaves(tree))


def _zero_update(update: Any, param: Any) -> Any:
  if param is not None:
    return jnp.zeros(jnp.shape(param), jnp.result_type(param))
  return update  # without params a float0 update stays float0; others are left as given


def float_leaves_only(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`tx` on the floating (real or complex) leaves; integer, bool and float0 leaves pass through.

  When every leaf is floating, `init` and `update` are `tx`'s own (the same
  state and numbers). Otherwise `tx` runs inside `gradkit.masked` on the
  floating leaves (its objectives, `obj_fn=` and co., still see the whole
  tree), and each other leaf gets an update of zeros in its parameter's
  dtype, so `optax.apply_updates` leaves it unchanged. Which leaves are
  floating is read from the params at `init` and from the updates at
  `update` (`jax.grad(..., allow_int=True)` gives integer and bool params
  `float0` gradients, which are not floating).

  Args:
    tx: the optimizer to protect.

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  tx = optax.with_extra_args_support(tx)

  def init_fn(params):
    if _all_float(params):
      return tx.init(params)
    return masked(tx, _float_mask(params)).init(params)

  def update_fn(updates, state, params=None, **extra_args):
    if _all_float(updates):
      return tx.update(updates, state, params, **extra_args)
    mask = _float_mask(updates)
    new_updates, state = masked(tx, mask).update(updates, state, params, **extra_args)
    if params is None:
      params = jax.tree.map(lambda _: None, updates)
    new_updates = jax.tree.map(lambda keep, u, g, p: u if keep else _zero_update(g, p),
                               mask, new_updates, updates, params,
                               is_leaf=lambda x: x is None)
    return new_updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
