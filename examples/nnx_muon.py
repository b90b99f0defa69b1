"""Muon in a Flax NNX training loop: Newton–Schulz on the hidden matrices, AdamW elsewhere.

`gradkit.create("muon")` labels every parameter with
`gradkit.optimizers.matrix_labels`: hidden kernels are "matrix" leaves and
get Muon's orthogonalized momentum; the biases ("vector") and the output
layer, named `head` ("head"), get the AdamW fallback. The optimizer is used
as any optax transformation through `nnx.Optimizer(model, tx, wrt=nnx.Param)`.
Trains a 64-128-128-10 MLP on scikit-learn's digits and prints the label of
every parameter, the training loss and the test accuracy.

  python examples/nnx_muon.py --steps 200
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import gradkit
from gradkit.experiments.data import batch_indices, load_digits


class MLP(nnx.Module):
  """Two hidden ReLU layers and a linear `head` (the name routes it to AdamW)."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden1 = nnx.Linear(64, 128, rngs=rngs)
    self.hidden2 = nnx.Linear(128, 128, rngs=rngs)
    self.head = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.hidden2(nnx.relu(self.hidden1(x)))))


def main(steps: int = 200, batch_size: int = 128, seed: int = 0) -> dict:
  data = load_digits(seed)
  model = MLP(nnx.Rngs(seed))
  # Muon's rate is per orthogonalized step (KellerJordan/Muon's 0.02); the
  # AdamW fallback gets its own, smaller rate.
  tx = gradkit.create("muon", learning_rate=0.02, adam_learning_rate=1e-3)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  labels = gradkit.optimizers.matrix_labels(params)
  routing = {"/".join(str(k.key) for k in path): label
             for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]}
  for path, label in routing.items():
    print(f"{path:16s} -> {'Muon' if label == 'matrix' else 'AdamW'} ({label})")

  def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  @nnx.jit
  def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss

  @nnx.jit
  def evaluate(model, x, y):
    logits = model(x)
    return loss_fn(model, x, y), jnp.mean(jnp.argmax(logits, -1) == y)

  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  initial_loss = float(evaluate(model, x_train, y_train)[0])
  for step, rows in enumerate(batch_indices(len(data.y_train), batch_size, steps, seed)):
    loss = train_step(model, optimizer, x_train[rows], y_train[rows])
    if step % 100 == 0:
      print(f"step {step:4d}  batch loss {float(loss):.4f}")
  train_loss = float(evaluate(model, x_train, y_train)[0])
  test_loss, test_accuracy = map(float, evaluate(model, jnp.asarray(data.x_test),
                                                 jnp.asarray(data.y_test)))
  print(f"train loss {initial_loss:.4f} -> {train_loss:.4f}; "
        f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f}")
  return {"routing": routing, "initial_loss": initial_loss, "train_loss": train_loss,
          "test_accuracy": test_accuracy}


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  main(parser.parse_args().steps)
