"""Bad input named in its error, for every registered optimizer (docs/robustness.md).

Each check runs over `gradkit.names()` on conftest's regression (or an empty
tree), mostly under `jax.eval_shape`, so no step is compiled but where an
update's values are read: a rate of the wrong type, a state initialised for
parameters of other shapes or restored in another float dtype, `params` not
passed or missing a leaf, an empty parameter tree, a loss that is not a
scalar, eps = 0 with exactly-zero gradient entries, and a schedule that
turns negative or NaN (`checked_rate`; the registry-wide run of a bad
schedule is in tests/test_conformance.py, on the fit test's compiled step).
"""

from __future__ import annotations

import functools
import inspect
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Regression

import gradkit
from gradkit.optimizers._recipe import checked_rate, descend
from gradkit.registry import get_factory
from trajectories import extra_update_args

NAMES = gradkit.names()
PROBLEM = Regression()
PARAMS = PROBLEM.params
GRADS = PROBLEM.grad(PARAMS)
LOSS_ARGS = ("obj_fn", "sampled_obj_fn")


def _parameters(name: str) -> dict:
  return inspect.signature(get_factory(name)).parameters


@functools.cache
def _extra(name: str) -> dict:
  return extra_update_args(gradkit.create(name), PROBLEM)


def _trace_update(tx, grads, state, params, extra):
  """`tx.update` traced on shapes only (`state` may be abstract)."""
  return jax.eval_shape(lambda s: tx.update(grads, s, params, **extra), state)


def _cast(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype), tree)


WRONG_TYPES = (None, "0.1", [0.1], 1e-3 + 0j)


@pytest.mark.parametrize("name", NAMES)
def test_rate_of_the_wrong_type_is_rejected_naming_it_and_what_is_accepted(name):
  """None, a string, a list, a complex number for every `optax.ScalarOrSchedule`
  argument (learning_rate, weight_decay, adam_learning_rate, ...)."""
  rates = [p for p in _parameters(name).values() if "ScalarOrSchedule" in str(p.annotation)]
  assert any(p.name == "learning_rate" for p in rates), name
  for p in rates:
    for value in WRONG_TYPES:
      if value is None and p.default is None:  # None is this argument's default
        continue
      with pytest.raises((TypeError, ValueError),
                         match=rf"\b{p.name}\b must be a finite number >= 0 or an optax schedule"):
        gradkit.create(name, **{p.name: value})


OTHER_PARAMS = {"w": jnp.zeros((6, 4)), "b": jnp.zeros((4,))}


def _same_abstract(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      x.shape == y.shape and x.dtype == y.dtype for x, y in zip(jax.tree.leaves(a),
                                                                 jax.tree.leaves(b)))


@pytest.mark.parametrize("name", NAMES)
def test_state_initialised_for_parameters_of_other_shapes_is_rejected(name):
  """The error names the state leaf, both shapes and `tx.init`, with `params`
  given or not; a state that does not depend on the shapes (MeZO's key and
  counter) fits any parameters."""
  tx = gradkit.create(name)
  state = jax.eval_shape(tx.init, OTHER_PARAMS)
  if _same_abstract(state, jax.eval_shape(tx.init, PARAMS)):
    _trace_update(tx, GRADS, state, PARAMS, _extra(name))
    return
  for params in (PARAMS, None):
    with pytest.raises(ValueError, match=r"state does not match the parameters: leaf state.* "
                                         r"has shape \(.*\), but tx\.init\(params\) makes it "
                                         r"\(.*call tx\.init on the parameters being trained"):
      _trace_update(tx, GRADS, state, params, _extra(name))


@pytest.mark.parametrize("name", NAMES)
def test_params_not_passed_or_missing_a_leaf_is_named(name):
  tx = gradkit.create(name)
  state = jax.eval_shape(tx.init, PARAMS)
  try:
    _trace_update(tx, GRADS, state, None, _extra(name))
  except (TypeError, ValueError) as error:
    assert re.search(r"\bparams\b", str(error)), f"{name}: {error}"
  with pytest.raises(ValueError, match=r"gradients do not match params: tree structures differ"):
    _trace_update(tx, GRADS, state, {"w": PARAMS["w"]}, _extra(name))


@pytest.mark.parametrize("name", NAMES)
def test_restored_state_of_another_float_dtype_is_rejected(name):
  """A float16 state (a checkpoint of a float16 run) with float32 parameters
  names the leaf and both dtypes; a float32 state with bfloat16 parameters
  (wider: `quantized` hands its inner optimizer one) is accepted, as is a
  state whose dtypes do not depend on the parameters'."""
  tx = gradkit.create(name)
  state16 = jax.eval_shape(tx.init, _cast(PARAMS, jnp.float16))
  state32 = jax.eval_shape(tx.init, PARAMS)
  if _same_abstract(state16, state32):
    _trace_update(tx, GRADS, state16, PARAMS, _extra(name))
  else:
    with pytest.raises(ValueError, match=r"state does not match the parameters: leaf state.* is "
                                         r"float16, but tx\.init\(params\) makes it float32"):
      _trace_update(tx, GRADS, state16, PARAMS, _extra(name))
  _trace_update(tx, _cast(GRADS, jnp.bfloat16), state32, _cast(PARAMS, jnp.bfloat16),
                _extra(name))


@pytest.mark.parametrize("name", NAMES)
def test_empty_parameter_tree_gives_an_empty_update(name):
  # M-FAC's (1024, 1024) Gram matrix of its default window costs seconds even empty.
  tx = gradkit.create(name, **({"num_grads": 8} if "num_grads" in _parameters(name) else {}))
  extra = {k: (lambda *args: jnp.zeros([])) for k in _extra(name)}
  state = tx.init({})
  updates, new_state = tx.update({}, state, {}, **extra)
  assert updates == {}
  chex.assert_trees_all_equal_structs(new_state, state)


LOSS_METHODS = [n for n in NAMES if set(_extra(n)) & set(LOSS_ARGS)]


def test_the_registry_has_loss_methods_to_check():
  assert {"mezo", "sparse_mezo", "approx_newton", "sophia", "sophia_g",
          "adahessian"} <= set(LOSS_METHODS), LOSS_METHODS


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_loss_that_is_not_a_scalar_is_rejected_naming_it(name):
  tx = gradkit.create(name)
  state = jax.eval_shape(tx.init, PARAMS)
  extra = _extra(name)
  for argument in set(extra) & set(LOSS_ARGS):
    vector = {**extra, argument: lambda *a, fn=extra[argument]: jnp.stack([fn(*a)] * 3)}
    with pytest.raises(ValueError, match=rf"\b{argument} must return the loss as a scalar "
                                         r"\(shape \(\)\), but it returned shape \(3,\)"):
      _trace_update(tx, GRADS, state, PARAMS, vector)


# eps = 0 cases left to their owners: these files are being changed by other
# engineers; the fix is one line each (`_checks.check_eps("eps", eps)`).
EPS_CASES = [(n, a) for n in NAMES for a in _parameters(n)
             if a.startswith("eps") or a.endswith("_eps")]
# A zero row and a zero vector; an all-zero gradient. Each for two steps from
# the initial state (a momentum of earlier gradients would hide an all-zero one).
ZERO_GRADIENTS = ({"w": GRADS["w"].at[0].set(0.0), "b": jnp.zeros_like(GRADS["b"])},
                  jax.tree.map(jnp.zeros_like, GRADS))


def test_the_registry_has_epsilons_to_check():
  assert len(EPS_CASES) >= 30, len(EPS_CASES)


@pytest.mark.parametrize(("name", "argument"), EPS_CASES)
def test_eps_zero_is_rejected_or_safe_for_exactly_zero_gradients(name, argument):
  try:
    tx = gradkit.create(name, **{argument: 0.0})
  except ValueError as error:
    assert re.search(rf"\b{argument} must be a finite number > 0, got 0\.0: with {argument} = 0 "
                     r".*; use a small positive value such as", str(error)), str(error)
    return
  update = jax.jit(functools.partial(tx.update, **_extra(name)))
  for grads in ZERO_GRADIENTS:
    params, state = PARAMS, tx.init(PARAMS)
    for _ in range(2):
      updates, state = update(grads, state, params)
      for leaf in jax.tree.leaves(updates):
        assert np.all(np.isfinite(leaf)), f"{name}({argument}=0): non-finite update"
      params = optax.apply_updates(params, updates)


def _run_tail(learning_rate, weight_decay=0.0):
  tx = descend(optax.identity(), learning_rate=learning_rate, weight_decay=weight_decay)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  return updates


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), float("inf"), -float("inf")])
def test_recipe_tail_makes_a_bad_scheduled_rate_a_nan_update(bad):
  """A schedule (or an injected, traced value) that turns negative or not
  finite gives a NaN update instead of an ascent step; valid values are
  used bit for bit."""
  for updates in (_run_tail(lambda count: bad), _run_tail(1e-3, lambda count: bad),
                  jax.jit(lambda lr: _run_tail(lr))(jnp.float32(bad))):
    assert all(np.all(np.isnan(u)) for u in jax.tree.leaves(updates))
  good = _run_tail(lambda count: 1e-3, lambda count: 0.1)
  chex.assert_trees_all_equal(good, _run_tail(1e-3, 0.1))
  chex.assert_trees_all_equal(jax.jit(lambda lr: _run_tail(lr))(jnp.float32(1e-3)),
                              _run_tail(jnp.float32(1e-3)))
  assert checked_rate("learning_rate", 1e-3) == 1e-3  # a number is kept as given


def test_guard_skips_the_step_of_a_negative_scheduled_rate():
  tx = gradkit.guard(gradkit.create("sgd", learning_rate=lambda count: -1e-3))
  state = tx.init(PARAMS)
  updates, new_state = tx.update(GRADS, state, PARAMS)
  assert int(new_state.num_skipped) == 1
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, PARAMS))
