"""`gradkit.inject_hyperparams`: static options found by the rule, over the registry.

Every registered optimizer builds with its defaults, inits on the shared
regression and traces one update (`jax.eval_shape`, no step is run), with
`learning_rate` in `state.hyperparams` and no static option there; a sample
(galore, muon, adamw, sophia), given explicit ints, takes one jitted step
equal to its plain factory's. Under plain `optax.inject_hyperparams` an int
option's error names `static_args`.
"""

from __future__ import annotations

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import gradkit
from gradkit import _checks
from gradkit.hyperparams import static_argnames
from gradkit.registry import get_factory
from trajectories import extra_update_args

NAMES = gradkit.names()
# Explicit ints (static) and an int for a float (injected as one) for each sample.
SAMPLE = {
    "galore": {"rank": 2, "update_proj_gap": 5, "weight_decay": 0},
    "muon": {"ns_steps": 3, "learning_rate": 0.02},
    "adamw": {"learning_rate": 1, "weight_decay": 0},
    "sophia": {"update_interval": 1, "seed": 3},
}


def _matrices(params):
  """A decay mask as a callable, which plain optax would take for a schedule."""
  return jax.tree.map(lambda x: x.ndim > 1, params)


def _default(name: str, argument: str):
  return inspect.signature(get_factory(name)).parameters[argument].default


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_optimizer_builds_inits_and_traces(name, regression):
  tx = gradkit.inject_hyperparams(name)()
  state = tx.init(regression.params)
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(_default(name, "learning_rate"))
  assert not set(static_argnames(get_factory(name))) & set(state.hyperparams)
  extra = extra_update_args(tx, regression)
  grads = regression.grad(regression.params)
  updates, new_state = jax.eval_shape(
      lambda s: tx.update(grads, s, regression.params, **extra), state)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, regression.params)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


@pytest.mark.parametrize("name", sorted(SAMPLE))
def test_one_jitted_step_equals_the_plain_factory(name, regression):
  """The plain factory gets the injected state's float32 hyperparameters, so
  both programs compute in the same precision (python floats fold in float64:
  1 - b2 differs from the float32 one by 5e-5 relative, Adam's first step by
  7e-6) and the comparison checks the static/injected split alone."""
  hparams = SAMPLE[name]
  injected = gradkit.inject_hyperparams(name)(**hparams)
  s_inj = injected.init(regression.params)
  plain = get_factory(name)(**{**hparams, **s_inj.hyperparams})
  extra = extra_update_args(plain, regression)
  grads = regression.grad(regression.params)
  u_plain, _ = jax.jit(functools.partial(plain.update, **extra))(
      grads, plain.init(regression.params), regression.params)
  u_inj, _ = jax.jit(functools.partial(injected.update, **extra))(grads, s_inj, regression.params)
  chex.assert_trees_all_close(u_inj, u_plain, rtol=1e-6, atol=0)
  static = static_argnames(get_factory(name), **hparams)
  assert set(hparams) - {"learning_rate", "weight_decay"} <= set(static)
  assert not set(static) & set(s_inj.hyperparams)
  assert s_inj.hyperparams["learning_rate"].dtype == jnp.float32


def test_ints_labels_and_rules_stay_static_floats_and_schedules_are_injected(regression):
  schedule = optax.linear_schedule(1e-3, 0.0, 10)
  tx = gradkit.inject_hyperparams("adamw")(
      learning_rate=schedule, b1=optax.constant_schedule(0.8), weight_decay=0, mask=_matrices)
  state = tx.init(regression.params)
  assert sorted(state.hyperparams) == ["b1", "b2", "eps", "learning_rate", "weight_decay"]
  assert sorted(state.hyperparams_states) == ["b1", "learning_rate"]
  assert float(state.hyperparams["b1"]) == pytest.approx(0.8)
  assert state.hyperparams["weight_decay"].dtype == jnp.float32
  for _ in range(2):  # a step's hyperparams are the schedule's at the step's count
    _, state = tx.update(regression.grad(regression.params), state, regression.params)
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(float(schedule(1)))

  labels = {"w": "matrix", "b": "vector"}
  assert {"param_labels", "ns_steps", "ns_coefficients"} <= set(
      static_argnames(gradkit.optimizers.muon, ns_steps=3, param_labels=labels))
  # frugal's density is a float with a None default: a static fraction.
  state = gradkit.inject_hyperparams("frugal")(density=0.5, update_gap=3).init(regression.params)
  assert "density" not in state.hyperparams and "update_gap" not in state.hyperparams


def test_names_factories_static_args_and_dtype(regression):
  factory = gradkit.inject_hyperparams(gradkit.optimizers.lion, static_args="b1")
  state = factory(learning_rate=1e-3).init(regression.params)
  assert "b1" not in state.hyperparams and "b2" in state.hyperparams
  state = gradkit.inject_hyperparams("lion", hyperparam_dtype=jnp.bfloat16)().init(
      regression.params)
  assert state.hyperparams["learning_rate"].dtype == jnp.bfloat16
  # optax's own factories, whose annotations are types rather than strings.
  tx = gradkit.inject_hyperparams(optax.adamw)(
      learning_rate=optax.constant_schedule(0.1), mask=_matrices)
  assert "mask" not in tx.init(regression.params).hyperparams
  with pytest.raises(ValueError, match="nearest registered names: galore"):
    gradkit.inject_hyperparams("galor")
  with pytest.raises(ValueError, match=r"static_args \['ranks'\]"):
    gradkit.inject_hyperparams("galore", static_args=("ranks",))


def test_static_int_errors_name_static_args():
  with pytest.raises(ValueError, match=r"rank must be an int >= 1, got Array.*static_args.*"
                                       r"gradkit\.inject_hyperparams"):
    _checks.check_static_int("rank", jnp.asarray(4))
  with pytest.raises(ValueError, match=r"got 0$"):
    _checks.check_static_int("rank", 0)
  _checks.check_static_int("rank", None)


def test_plain_optax_inject_hyperparams_error_names_static_args(regression):
  tx = optax.inject_hyperparams(gradkit.optimizers.galore)(rank=4)
  with pytest.raises(ValueError, match="rank must be an int") as error:
    tx.init(regression.params)
  assert "static_args" in str(error.value)
