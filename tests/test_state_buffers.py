"""Every registered optimizer's state can be donated to a jitted step.

`jax.jit(step, donate_argnums=...)` rejects a state in which two leaves are
the same buffer ("donate the same buffer twice"); APOLLO's init once returned
mu and nu as one. For every registered optimizer: the leaves of an eager
`init` are distinct buffers, and one donated jitted step runs.
"""

from __future__ import annotations

import jax
import optax
import pytest
from conftest import Regression

import gradkit
from trajectories import extra_update_args

HPARAMS = {"mfac": {"num_grads": 8}}


@pytest.mark.parametrize("name", gradkit.names())
def test_state_leaves_are_distinct_buffers_and_the_state_can_be_donated(name):
  problem = Regression(d_in=64, d_out=32)
  tx = gradkit.create(name, **HPARAMS.get(name, {}))
  state = tx.init(problem.params)
  buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)
             if isinstance(x, jax.Array) and x.size > 0]
  assert len(set(buffers)) == len(buffers), f"{name}: state leaves share a buffer"
  extra = extra_update_args(tx, problem)

  def step(params, state):
    updates, state = tx.update(problem.grad(params), state, params, **extra)
    return optax.apply_updates(params, updates), state

  jax.block_until_ready(jax.jit(step, donate_argnums=(1,))(problem.params, state))
