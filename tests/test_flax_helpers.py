"""gradkit.flax_helpers: Linen TrainState forwarding obj_fn, NNX/Linen objectives with BatchNorm.

Sophia (Hutchinson probes through `obj_fn`) trains a BatchNorm MLP in Linen
(through the helper `TrainState`) and NNX (through `nnx.Optimizer`), also on
the weight matrices only via `gradkit.partition`; the helper's first step is
`tx.update` by hand, and without update keywords the helper is flax's
`TrainState` bit for bit.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.training import train_state

import gradkit
from gradkit.flax_helpers import TrainState, linen_param_function, nnx_param_function

X = jax.random.normal(jax.random.key(0), (64, 4))
Y = (X[:, 0] > 0).astype(jnp.int32) + (X[:, 1] > 0)
STEPS = 30


def ce(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def sophia():
  return gradkit.create("sophia", learning_rate=0.05, update_interval=2)


def matrices_to_sophia(params):
  return jax.tree.map(lambda p: "sophia" if p.ndim == 2 else "adamw", params)


def sophia_on_matrices():
  return gradkit.partition({"sophia": sophia(), "adamw": optax.adamw(1e-2)}, matrices_to_sophia)


def assert_equal(actual, expected):
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


class LinenNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x))
    return nn.Dense(3)(nn.relu(x))


LINEN_INIT = jax.jit(lambda key, x: LinenNet().init(key, x, train=False))


class BatchNormState(TrainState):
  batch_stats: Any


def linen_state(tx, cls=BatchNormState):
  variables = LINEN_INIT(jax.random.key(1), X)
  return cls.create(apply_fn=LinenNet().apply, params=variables["params"], tx=tx,
                    batch_stats=variables["batch_stats"])


def linen_grads_and_obj_fn(state, x, y):
  def loss_fn(params):
    logits, mutated = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                     train=True, mutable=["batch_stats"])
    return ce(logits, y), mutated["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  # Train mode, the batch statistics held at the state's: the probes see the
  # gradient's loss and never touch state.batch_stats.
  obj_fn = linen_param_function(state.apply_fn, {"batch_stats": state.batch_stats},
                                lambda logits: ce(logits, y), x, train=True,
                                mutable=["batch_stats"])
  return loss, grads, batch_stats, obj_fn


@jax.jit
def linen_step(state, x, y):
  loss, grads, batch_stats, obj_fn = linen_grads_and_obj_fn(state, x, y)
  return state.apply_gradients(grads=grads, batch_stats=batch_stats, obj_fn=obj_fn), loss


@jax.jit
def linen_step_by_hand(state, x, y):
  _, grads, batch_stats, obj_fn = linen_grads_and_obj_fn(state, x, y)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params, obj_fn=obj_fn)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state, batch_stats=batch_stats)


def linen_losses(state):
  losses = []
  for _ in range(STEPS):
    state, loss = linen_step(state, X, Y)
    losses.append(float(loss))
  return state, losses


def test_linen_train_state_forwards_obj_fn_and_its_first_step_is_tx_update_by_hand():
  state = linen_state(sophia())
  stepped, _ = linen_step(state, X, Y)
  assert stepped.tx is state.tx  # the static field is unchanged: no retrace in a loop
  assert_equal(stepped, linen_step_by_hand(state, X, Y))
  assert not np.array_equal(stepped.batch_stats["BatchNorm_0"]["mean"],
                            state.batch_stats["BatchNorm_0"]["mean"])
  _, losses = linen_losses(state)
  assert losses[-1] < 0.6 * losses[0], losses


def test_linen_sophia_on_matrices_only_via_partition_trains():
  state = linen_state(sophia_on_matrices())
  state, losses = linen_losses(state)
  assert int(state.step) == STEPS
  assert losses[-1] < 0.6 * losses[0], losses


def test_without_update_keywords_apply_gradients_is_flax_bit_for_bit():
  class FlaxBatchNormState(train_state.TrainState):
    batch_stats: Any

  @jax.jit
  def step(state):
    _, grads, batch_stats, _ = linen_grads_and_obj_fn(state, X, Y)
    return state.apply_gradients(grads=grads, batch_stats=batch_stats)

  ours, theirs = linen_state(optax.adamw(1e-2)), linen_state(optax.adamw(1e-2), FlaxBatchNormState)
  for _ in range(3):
    ours, theirs = step(ours), step(theirs)
  assert type(ours) is BatchNormState
  assert_equal((ours.step, ours.params, ours.opt_state, ours.batch_stats),
               (theirs.step, theirs.params, theirs.opt_state, theirs.batch_stats))


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.dense1 = nnx.Linear(4, 16, rngs=rngs)
    self.bn = nnx.BatchNorm(16, rngs=rngs)
    self.dense2 = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.dense2(jax.nn.relu(self.bn(self.dense1(x))))


@nnx.jit
def nnx_step(model, optimizer, x, y):
  obj_fn = nnx_param_function(model, lambda m: ce(m(x), y), mode="train")
  loss, grads = nnx.value_and_grad(lambda m: ce(m(x), y))(model)
  optimizer.update(model, grads, obj_fn=obj_fn)
  return loss


def nnx_losses(tx):
  model = NnxNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  losses = [float(nnx_step(model, optimizer, X, Y)) for _ in range(STEPS)]
  return model, losses


def test_nnx_batchnorm_sophia_trains_with_the_recipe():
  model, losses = nnx_losses(sophia())
  assert losses[-1] < 0.6 * losses[0], losses
  assert float(jnp.abs(model.bn.mean[...]).sum()) > 0  # the gradient pass updated the stats


def test_nnx_sophia_on_matrices_only_via_partition_trains():
  _, losses = nnx_losses(sophia_on_matrices())
  assert losses[-1] < 0.6 * losses[0], losses


def test_nnx_param_function_eval_mode_uses_the_running_statistics():
  model = NnxNet(nnx.Rngs(0))
  model.bn.mean[...] = jnp.full(16, 3.0)
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  train = nnx_param_function(model, lambda m: m(X), mode="train")(params)
  evaluated = nnx_param_function(model, lambda m: m(X), mode="eval")(params)
  model.eval()
  np.testing.assert_array_equal(evaluated, model(X))
  assert not np.allclose(train, evaluated)
  np.testing.assert_array_equal(model.bn.mean[...], jnp.full(16, 3.0))  # model untouched
