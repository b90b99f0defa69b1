"""gradkit.create / names / state_nbytes."""

from __future__ import annotations

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
