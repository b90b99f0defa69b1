"""A new update rule from gradkit primitives: Lion's sign momentum with AdamP's radial projection.

`gradkit.transforms.project_radial(inner)` removes the component of
`inner`'s step along a weight whenever that weight looks scale-invariant
(its gradient is orthogonal to it, as for a layer followed by a
normalization), so the step only rotates the weight instead of also
growing its norm, which would shrink the effective step size (Heo et al.,
AdamP, ICLR 2021). Here `inner` is Lion's direction
(`gradkit.transforms.scale_by_sign_momentum`), and the rule is an ordinary
`optax.chain` with a learning rate. The toy problem is a softmax classifier
on scikit-learn's digits whose weight columns are normalized (logits =
scale * x W / ||W||_col). Every projected step d is orthogonal to its
column, so ||W + lr d||^2 = ||W||^2 + lr^2 ||d||^2 and, with sign entries,
||W_T||^2 <= ||W_0||^2 + T lr^2 n (n weights); plain Lion's norm grows much
faster. Prints both runs' final loss and norm growth.

  python examples/custom_rule.py --steps 300
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradkit
from gradkit.experiments.data import load_digits


def lion_p(learning_rate: float, b1: float = 0.9, b2: float = 0.99) -> optax.GradientTransformation:
  """sign(b1 m + (1 - b1) g), projected off scale-invariant weights, times -lr."""
  return optax.chain(
      gradkit.transforms.project_radial(gradkit.transforms.scale_by_sign_momentum(b1, b2)),
      optax.scale_by_learning_rate(learning_rate),
  )


def lion(learning_rate: float, b1: float = 0.9, b2: float = 0.99) -> optax.GradientTransformation:
  """The same chain without the projection (= gradkit.create("lion") at weight_decay 0)."""
  return optax.chain(gradkit.transforms.scale_by_sign_momentum(b1, b2),
                     optax.scale_by_learning_rate(learning_rate))


def loss_fn(params, x, y):
  w = params["w"] / jnp.linalg.norm(params["w"], axis=0, keepdims=True)  # scale-invariant in w
  logits = params["scale"] * (x @ w) + params["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(tx, params, x, y, steps: int):
  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state = tx.init(params)
  for _ in range(steps):
    params, state, _ = step(params, state)
  return params, float(loss_fn(params, x, y))


def main(steps: int = 300, learning_rate: float = 0.01, seed: int = 0) -> dict:
  data = load_digits(seed)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  params = {
      "w": jnp.asarray(0.1 * np.random.default_rng(seed).normal(size=(64, 10)), jnp.float32),
      "scale": jnp.float32(5.0),
      "b": jnp.zeros((10,)),
  }
  initial_loss = float(loss_fn(params, x, y))
  norm0 = float(jnp.linalg.norm(params["w"]))
  print(f"||W_0|| = {norm0:.6f}, {params['w'].size} weights, lr {learning_rate}, {steps} steps")
  result = {"initial_loss": initial_loss, "w0_norm": norm0, "num_weights": params["w"].size}
  for name, tx in (("lion_p", lion_p(learning_rate)), ("lion", lion(learning_rate))):
    trained, loss = train(tx, params, x, y, steps)
    growth = float(jnp.linalg.norm(trained["w"])) / norm0
    print(f"{name:7s} loss {initial_loss:.4f} -> {loss:.4f}   ||W|| / ||W_0|| = {growth:.3f}")
    result[name] = {"loss": loss, "norm_growth": growth}
  return result


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  main(parser.parse_args().steps)
