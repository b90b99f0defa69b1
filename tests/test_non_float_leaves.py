"""Integer, bool and float0 leaves of the parameters pass through every optimizer unchanged.

The parameter tree of conftest's regression gains an int32 counter and a bool
flag, which the loss ignores; `jax.grad(..., allow_int=True)` gives them
float0 gradients. For every registered optimizer, two jitted steps must leave
both bit for bit as they were (dtype included), and move the float leaves
exactly as the same optimizer moves them on the float leaves alone (oracle:
the run without the extra leaves), in float64 so that differently fused
programs cannot hide a wrong step (see tests/test_composition.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Regression

import gradkit
from gradkit.transforms.float_leaves import float_leaves_only
from trajectories import extra_update_args

STEPS = 2
HPARAMS = {"mfac": {"num_grads": 8}}
TOLERANCE = 1e-10
# COSMOS turns rounding differences of its eigenbasis into ~3e7 eps of the
# movement (tests/test_composition.py).
TOLERANCE_OVERRIDE = {"cosmos": 1e-7}


class _WithCounters(Regression):
  """The regression with non-float leaves the loss ignores."""

  def __init__(self):
    super().__init__()
    self.x, self.y = (jnp.asarray(a, jnp.float64) for a in (self.x, self.y))
    self.float_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), self.params)
    self.params = {**self.float_params, "count": jnp.array([7, 9], jnp.int32),
                   "flag": jnp.array(True)}


def _run(tx, params, grad_fn, extra):
  state = tx.init(params)
  for _ in range(STEPS):
    updates, state = tx.update(grad_fn(params), state, params, **extra)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize("name", gradkit.names())
def test_integer_bool_and_float0_leaves_pass_through(name):
  with jax.enable_x64():
    problem = _WithCounters()
    tx = gradkit.create(name, **HPARAMS.get(name, {}))
    float_problem = Regression()
    float_problem.x, float_problem.y, float_problem.params = (
        problem.x, problem.y, problem.float_params)
    extra = extra_update_args(tx, float_problem)

    @jax.jit
    def both(params, float_params):
      grad = jax.grad(problem.loss, allow_int=True)
      return (_run(tx, params, grad, extra),
              _run(tx, float_params, jax.grad(problem.loss), extra))

    got, want = jax.device_get(both(problem.params, problem.float_params))
  for key in ("count", "flag"):
    assert got[key].dtype == problem.params[key].dtype, f"{name}: {key} changed dtype"
    np.testing.assert_array_equal(got[key], problem.params[key], err_msg=f"{name}: {key}")
  for key in ("w", "b"):
    moved = np.max(np.abs(want[key] - np.asarray(problem.float_params[key])))
    err = np.max(np.abs(got[key] - want[key]))
    assert err <= TOLERANCE_OVERRIDE.get(name, TOLERANCE) * moved, (
        f"{name}: {key} differs by {err:.3g} (moved {moved:.3g})")


def test_integer_gradients_pass_through_and_all_float_trees_are_untouched():
  params = {"w": jnp.ones((2, 2)), "count": jnp.array(3, jnp.int32)}
  grads = {"w": jnp.full((2, 2), 0.5), "count": jnp.array(1, jnp.int32)}
  tx = float_leaves_only(optax.adamw(0.1, weight_decay=0.5))
  updates, _ = tx.update(grads, tx.init(params), params)
  assert updates["count"].dtype == jnp.int32 and int(updates["count"]) == 0
  # On an all-float tree the state and updates are optax's own.
  plain = optax.adamw(0.1, weight_decay=0.5)
  floats = {"w": params["w"]}
  assert jax.tree.structure(tx.init(floats)) == jax.tree.structure(plain.init(floats))
  np.testing.assert_array_equal(
      tx.update({"w": grads["w"]}, tx.init(floats), floats)[0]["w"],
      plain.update({"w": grads["w"]}, plain.init(floats), floats)[0]["w"])
