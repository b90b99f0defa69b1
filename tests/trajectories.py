"""A small random tree and its gradient sequence, shared by the recipe tests.

The tree {'w': (2, 3), 'b': (3,)} and 50 gradients with random scales are
drawn in float64 (for the numpy oracles); `trajectory` runs a transformation
over them in float32 under jit and returns the parameters after each step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

MASK = {"w": True, "b": False}


def f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


class RandomProblem:
  """PARAMS and GRADS drawn from `seed`; gradient scales uniform in `scale`."""

  def __init__(self, seed: int, scale: tuple[float, float] = (0.1, 2.0), steps: int = 50):
    rng = np.random.default_rng(seed)
    self.params = {"w": rng.normal(size=(2, 3)), "b": rng.normal(size=(3,))}
    self.grads = [{"w": rng.normal(size=(2, 3)) * s, "b": rng.normal(size=(3,)) * s}
                  for s in rng.uniform(*scale, size=steps)]
    self.grads_f32 = [f32(g) for g in self.grads]

  def trajectory(self, tx, steps=None, *, params=None):
    @jax.jit
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    params = f32(self.params if params is None else params)
    state = tx.init(params)
    out = []
    for g in self.grads_f32[:steps]:
      params, state = step(params, state, g)
      out.append(params)
    return jax.device_get(out)


def run_updates_and_state(tx, params, grads_seq):
  """(parameters after each of `grads_seq`'s steps, final state); update jitted."""
  update = jax.jit(tx.update)
  state = tx.init(params)
  history = []
  for g in grads_seq:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    history.append(params)
  return history, state


def run_updates(tx, params, grads_seq):
  """Parameters after each of `grads_seq`'s steps, the update jitted."""
  return run_updates_and_state(tx, params, grads_seq)[0]


def assert_trajectories_close(a_list, b_list, rtol=1e-5):
  for a, b in zip(a_list, b_list):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-6)
