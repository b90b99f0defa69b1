"""gradkit.create / names / register / unregister / state_nbytes."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit


def test_names_are_sorted_and_include_the_baselines():
  names = gradkit.names()
  assert names == sorted(names)
  assert {"adamw", "sgd"} <= set(names)


def test_unknown_name_lists_the_nearest_names():
  with pytest.raises(ValueError, match=r"unknown optimizer 'adamww'.*adamw"):
    gradkit.create("adamww")


def test_create_passes_hyperparameters():
  tx = gradkit.create("sgd", learning_rate=0.5, momentum=0.0)
  params = {"a": jnp.array([1.0, -2.0])}
  updates, _ = tx.update(params, tx.init(params), params)
  np.testing.assert_allclose(updates["a"], [-0.5, 1.0])


def test_state_nbytes_counts_every_array_leaf():
  params = {"w": jnp.zeros((128, 64), jnp.float32), "b": jnp.zeros((64,), jnp.bfloat16)}
  state = optax.adam(1e-3).init(params)
  expected = 2 * (128 * 64 * 4 + 64 * 2) + 4  # mu and nu in param dtype, int32 count
  assert gradkit.state_nbytes(state) == expected
  assert gradkit.state_nbytes(jax.eval_shape(optax.adam(1e-3).init, params)) == expected
  assert gradkit.state_nbytes(optax.EmptyState()) == 0


def test_register_refuses_to_rebind_a_name():
  with pytest.raises(ValueError, match="already registered"):
    gradkit.registry.register("adamw")(lambda: None)


def test_state_nbytes_counts_typed_prng_keys():
  keys = {"key": jax.random.key(0), "keys": jax.random.split(jax.random.key(1), 3)}
  raw_bytes = 4 * jax.random.key_data(keys["key"]).size * 4  # four uint32 keys' data
  assert gradkit.state_nbytes(keys) == raw_bytes


# ---- names: case, optax's namespace, re-registration --------------------------------------

CELL = '''
import optax

def cell_sgd(learning_rate=0.1):
  return optax.sgd(learning_rate{extra})
'''


def _run_cell(extra: str = ""):
  """The factory defined by a notebook cell's source, as a fresh function object."""
  namespace = {"__name__": "__main__"}
  exec(compile(CELL.format(extra=extra), "<cell>", "exec"), namespace)
  return namespace["cell_sgd"]


@pytest.fixture
def free_name():
  """A name no factory holds; whatever a test registers under it is removed after."""
  name = "test_registry_cell"
  yield name
  if name in gradkit.names():
    gradkit.registry.unregister(name)


def test_lookup_is_case_insensitive_and_names_are_lower_case():
  get_factory = gradkit.registry.get_factory
  assert get_factory("Lion") is get_factory("lion") is gradkit.optimizers.lion
  assert get_factory("ADAMW") is gradkit.optimizers.adamw
  assert isinstance(gradkit.create("ADAMW", learning_rate=1e-3), optax.GradientTransformation)
  assert all(n == n.lower() for n in gradkit.names())


def test_names_differing_only_in_case_cannot_both_register(free_name):
  gradkit.registry.register(free_name.upper())(_run_cell())
  assert free_name in gradkit.names() and free_name.upper() not in gradkit.names()
  with pytest.raises(ValueError, match="already registered.*case-insensitive"):
    gradkit.registry.register(free_name)(_run_cell(", momentum=0.9"))
  with pytest.raises(ValueError, match="already registered"):
    gradkit.registry.register("LION")(_run_cell())


def _one_step(tx, params, grads):
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return updates


def test_optax_names_build_optax_s_own_optimizers():
  params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.2])}
  grads = {"w": jnp.array([[0.3, -1.0], [2.0, 0.01]]), "b": jnp.array([-0.5, 4.0])}
  got = _one_step(gradkit.create("optax.adam", learning_rate=0.1), params, grads)
  want = _one_step(optax.adam(0.1), params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
  # Adam's first step is -lr * sign(g) (up to eps): a wrong factory would not give it.
  np.testing.assert_allclose(got["b"], [0.1, -0.1], rtol=1e-5)
  get_factory = gradkit.registry.get_factory
  assert get_factory("optax.adam") is optax.adam
  assert get_factory("Optax.AdamW") is optax.adamw
  assert get_factory("optax.contrib.prodigy") is optax.contrib.prodigy
  assert get_factory("optax.contrib.sophia") is optax.contrib.sophia
  assert get_factory("adamw").__module__.startswith("gradkit.")
  tx = gradkit.create("optax.adafactor", learning_rate=1e-3)
  assert _one_step(tx, params, grads)["w"].shape == (2, 2)
  assert isinstance(gradkit.create("optax.contrib.prodigy"), optax.GradientTransformation)


@pytest.mark.parametrize(("bare", "suggested"), [
    ("adam", "optax.adam"), ("Adafactor", "optax.adafactor"), ("rmsprop", "optax.rmsprop"),
    ("prodigy", "optax.contrib.prodigy"),
])
def test_bare_optax_names_stay_unknown_and_suggest_the_optax_spelling(bare, suggested):
  with pytest.raises(ValueError, match=rf"unknown optimizer '{bare}'; did you mean '{suggested}'"):
    gradkit.create(bare, learning_rate=1e-3)


def test_unknown_optax_name_lists_the_nearest_optax_names():
  with pytest.raises(ValueError, match=r"unknown optimizer 'optax.adamm'.*optax\.adam\b"):
    gradkit.registry.get_factory("optax.adamm")
  with pytest.raises(ValueError, match="unknown optimizer 'optax.scale_by_adam'"):
    gradkit.registry.get_factory("optax.scale_by_adam")  # a primitive, not an optimizer


def test_names_lists_optax_s_optimizers_only_on_request():
  own, every = gradkit.names(), gradkit.names(include_optax=True)
  assert not any(n.startswith("optax.") for n in own)
  assert every == sorted(every) and set(own) < set(every)
  optax_names = {n for n in every if n.startswith("optax.")}
  assert {"optax.adam", "optax.adafactor", "optax.adamw", "optax.contrib.prodigy",
          "optax.contrib.muon", "optax.contrib.dpsgd"} <= optax_names
  # No primitives, no wrappers, no deprecated re-exports.
  assert not {"optax.scale_by_adam", "optax.chain", "optax.contrib.schedule_free",
              "optax.dpsgd"} & optax_names
  for name in optax_names:
    assert "learning_rate" in inspect.signature(gradkit.registry.get_factory(name)).parameters


def test_optax_prefix_is_reserved():
  with pytest.raises(ValueError, match="reserved"):
    gradkit.registry.register("Optax.my_adam")(_run_cell())


def test_re_running_a_cell_re_registers_and_keeps_the_newer_function(free_name):
  first, second = _run_cell(), _run_cell()
  assert first is not second
  gradkit.registry.register(free_name)(first)
  gradkit.registry.register(free_name)(second)
  assert gradkit.registry.get_factory(free_name) is second


def test_a_different_factory_needs_replace_or_unregister(free_name):
  gradkit.registry.register(free_name)(_run_cell())
  edited = _run_cell(", momentum=0.9")
  with pytest.raises(ValueError, match=r"already registered.*replace=True.*unregister"):
    gradkit.registry.register(free_name)(edited)
  gradkit.registry.register(free_name, replace=True)(edited)
  assert gradkit.registry.get_factory(free_name) is edited
  assert gradkit.registry.unregister(free_name.upper()) is edited
  with pytest.raises(ValueError, match="unknown optimizer"):
    gradkit.create(free_name)
  with pytest.raises(ValueError, match="not registered"):
    gradkit.registry.unregister(free_name)
  # Freed, the name takes a different factory without `replace`.
  gradkit.registry.register(free_name)(_run_cell(", nesterov=True"))


def test_a_changed_default_is_a_different_factory(free_name):
  gradkit.registry.register(free_name)(_run_cell())
  namespace = {"__name__": "__main__"}
  exec(compile(CELL.format(extra="").replace("0.1", "0.2"), "<cell>", "exec"), namespace)
  with pytest.raises(ValueError, match="already registered"):
    gradkit.registry.register(free_name)(namespace["cell_sgd"])


def test_a_built_in_registers_again_as_itself():
  assert gradkit.registry.register("lion")(gradkit.optimizers.lion) is gradkit.optimizers.lion
  assert gradkit.registry.get_factory("lion") is gradkit.optimizers.lion
