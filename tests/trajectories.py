"""A small random tree and its gradient sequence, shared by the recipe tests.

The tree {'w': (2, 3), 'b': (3,)} and 50 gradients with random scales are
drawn in float64 (for the numpy oracles); `trajectory` runs a transformation
over them in float32 under jit and returns the parameters after each step.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradkit.transforms.quantized_state import QuantizedArray, QuantizedState, quantized_view

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


def mixed_tree(rng):
  """Embedding, a kernel with its bias, an LM head and a scalar, float64."""
  return {
      "embed": {"embedding": rng.normal(size=(10, 4))},
      "block": {"kernel": rng.normal(size=(4, 6)), "bias": rng.normal(size=(6,))},
      "lm_head": {"kernel": rng.normal(size=(6, 10))},
      "scale": rng.normal(size=()),
  }


def assert_kernel_rule_and_adamw_elsewhere(factory, direction, steps=4, lr=1e-2, wd=0.1):
  """`factory(learning_rate=lr, weight_decay=wd)` on `mixed_tree`s: the kernel
  follows p <- p - lr (direction(g) + wd p) with the float64 `direction`, and
  every other leaf equals optax.adamw run on those leaves alone."""
  rng = np.random.default_rng(2)
  params = mixed_tree(rng)
  grads = [mixed_tree(rng) for _ in range(steps)]
  got = run_updates(factory(learning_rate=lr, weight_decay=wd), f32(params),
                    [f32(g) for g in grads])

  def others(t):
    return {"embed": t["embed"], "lm_head": t["lm_head"], "scale": t["scale"],
            "bias": t["block"]["bias"]}

  want = run_updates(optax.adamw(lr, weight_decay=wd), f32(others(params)),
                     [f32(others(g)) for g in grads])
  for g_tree, w_tree in zip(got, want):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 others(g_tree), w_tree)
  p = params["block"]["kernel"]
  for g, got_tree in zip(grads, got):
    p = p - lr * (direction(g["block"]["kernel"]) + wd * p)
    np.testing.assert_allclose(got_tree["block"]["kernel"], p, atol=2e-5)


def extra_update_args(tx, problem):
  """The keywords `tx.update` needs beyond (grads, state, params), found by asking it.

  An update that fails with an error naming `obj_fn` gets `problem.loss`; one
  naming `sampled_obj_fn` (Sophia-G) gets `problem.sampled_loss`. Other errors,
  and optimizers that need nothing, pass through ({} for the latter).
  """
  state = jax.eval_shape(tx.init, problem.params)
  grads = problem.grad(problem.params)
  known = {"sampled_obj_fn": getattr(problem, "sampled_loss", None), "obj_fn": problem.loss}
  extra = {}
  while True:
    try:
      jax.eval_shape(lambda s: tx.update(grads, s, problem.params, **extra), state)
      return extra
    except (TypeError, ValueError) as error:
      # Word boundaries: "obj_fn" must not match inside "sampled_obj_fn".
      missing = [name for name, fn in known.items()
                 if fn is not None and name not in extra
                 and re.search(rf"\b{name}\b", str(error))]
      if not missing:
        raise
      extra[missing[0]] = known[missing[0]]


def run_with_loss(tx, params, obj_fn, steps, **extra):
  """(params after each step, final state); `tx.update` gets `obj_fn` and
  `extra`, and the whole step, gradient of `obj_fn` included, is jitted."""
  extra = {"obj_fn": obj_fn, **extra}

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(obj_fn)(params), state, params, **extra)
    return optax.apply_updates(params, updates), state

  state, out = tx.init(params), []
  for _ in range(steps):
    params, state = step(params, state)
    out.append(jax.device_get(params))
  return out, state


def quantized_leaves(state) -> list:
  """The `QuantizedArray`s (uint8 codes + absmax) anywhere in an optimizer state."""

  def is_node(x):
    return isinstance(x, (QuantizedArray, QuantizedState))

  views = [quantized_view(x) if isinstance(x, QuantizedState) else x
           for x in jax.tree.leaves(state, is_leaf=is_node)]
  return [x for x in jax.tree.leaves(views, is_leaf=lambda x: isinstance(x, QuantizedArray))
          if isinstance(x, QuantizedArray)]
