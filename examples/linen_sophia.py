"""Sophia with a Flax Linen model and `gradkit.flax_helpers.TrainState`.

Sophia (`gradkit.second_order.sophia`, also `gradkit.create("sophia")`)
estimates the Hessian diagonal with Hutchinson probes, which needs the loss
itself: its `update` takes `obj_fn=` (params -> scalar loss of the current
batch). Flax's `TrainState.apply_gradients` calls `tx.update(grads,
opt_state, params)` and cannot pass it (the script shows the error); the
helper `TrainState`, a subclass, forwards update keywords:
`state.apply_gradients(grads=grads, obj_fn=loss_fn)`. Trains a small MLP on
scikit-learn's digits and prints the training loss and test accuracy.

  python examples/linen_sophia.py --steps 200
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import gradkit
from gradkit.experiments.data import batch_indices, load_digits
from gradkit.flax_helpers import TrainState


class MLP(nn.Module):
  hidden: int = 64

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(10)(x)


def cross_entropy(state, params, x, y):
  logits = state.apply_fn({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def train_step(state, x, y):
  loss_fn = lambda params: cross_entropy(state, params, x, y)  # noqa: E731
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads, obj_fn=loss_fn), loss


@jax.jit
def evaluate(state, x, y):
  logits = state.apply_fn({"params": state.params}, x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def apply_gradients_error(state, x, y) -> str:
  """The error flax's `TrainState.apply_gradients` raises with Sophia (no obj_fn),
  found by tracing it (`jax.eval_shape` runs nothing)."""
  state = train_state.TrainState.create(apply_fn=state.apply_fn, params=state.params,
                                        tx=state.tx)

  def apply(state):
    grads = jax.grad(lambda p: cross_entropy(state, p, x, y))(state.params)
    return state.apply_gradients(grads=grads)
  try:
    jax.eval_shape(apply, state)
  except (TypeError, ValueError) as error:
    return str(error)
  return ""


def main(steps: int = 200, batch_size: int = 128, seed: int = 0) -> dict:
  data = load_digits(seed)
  model = MLP()
  params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 64)))["params"]
  # Hessian refreshed every 5 steps (the paper: 10); gamma scales h in the
  # denominator max(gamma h, eps) of the clipped step.
  tx = gradkit.second_order.sophia(learning_rate=3e-3, update_interval=5, gamma=0.05,
                                   weight_decay=1e-4)
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  error = apply_gradients_error(state, x_train[:8], y_train[:8])
  print(f"flax's apply_gradients fails: {error.splitlines()[0] if error else 'no error'}")

  initial_loss = float(evaluate(state, x_train, y_train)[0])
  for step, rows in enumerate(batch_indices(len(data.y_train), batch_size, steps, seed)):
    state, loss = train_step(state, x_train[rows], y_train[rows])
    if step % 100 == 0:
      print(f"step {step:4d}  batch loss {float(loss):.4f}")
  train_loss = float(evaluate(state, x_train, y_train)[0])
  test_accuracy = float(evaluate(state, jnp.asarray(data.x_test), jnp.asarray(data.y_test))[1])
  print(f"train loss {initial_loss:.4f} -> {train_loss:.4f}; test accuracy {test_accuracy:.4f}")
  return {"initial_loss": initial_loss, "train_loss": train_loss,
          "test_accuracy": test_accuracy, "steps": int(state.step),
          "apply_gradients_error": error}


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  main(parser.parse_args().steps)
