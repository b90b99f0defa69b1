"""MeZO: fine-tune a pretrained model on a shifted task with forward passes only.

An MLP is first pretrained with backprop (Adam) on a regression task; then
the target shifts (a new feature is added to it) and the model is
fine-tuned with MeZO (Malladi et al., NeurIPS 2023), which never computes a
gradient: each step evaluates the loss at theta + eps z and theta - eps z for
one random direction z and moves along z. Two ways to run it:

- `gradkit.create("mezo")`, an optax transformation whose `update` takes
  `obj_fn=` (params -> loss of the current batch) and ignores the incoming
  updates (pass the params);
- `gradkit.optimizers.mezo_step(obj_fn)`, the same update run in place on
  donated parameters, at inference memory, as the reference trainer does.

With the same seed both draw the same directions. Prints the loss on the
shifted task before and after fine-tuning for both.

  python examples/mezo_finetune.py --steps 1000
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradkit


def mlp(params, x):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return (h @ params["w2"] + params["b2"])[:, 0]


def mse(params, x, y):
  return jnp.mean((mlp(params, x) - y) ** 2)


def make_data(rng: np.random.Generator, n: int = 512, d: int = 8):
  x = rng.normal(size=(n, d))
  a, c = rng.normal(size=(2, d)) / np.sqrt(d)
  y = np.sin(2 * x @ a)
  y_shifted = y + 0.5 * np.tanh(x @ c)  # the fine-tuning task: a new feature in the target
  return (jnp.asarray(v, jnp.float32) for v in (x, y, y_shifted))


def pretrain(x, y, rng: np.random.Generator, steps: int = 500, hidden: int = 32):
  d = x.shape[1]
  params = {"w1": jnp.asarray(rng.normal(size=(d, hidden)) / np.sqrt(d), jnp.float32),
            "b1": jnp.zeros(hidden),
            "w2": jnp.asarray(rng.normal(size=(hidden, 1)) / np.sqrt(hidden), jnp.float32),
            "b2": jnp.zeros(1)}
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(mse)(params, x, y), state)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params


def finetune_transform(params, x, y, steps, learning_rate, seed):
  tx = gradkit.create("mezo", learning_rate=learning_rate, eps=1e-3, seed=seed)

  @jax.jit
  def step(params, state):
    # MeZO reads only obj_fn; the first argument is ignored, so pass the params.
    updates, state = tx.update(params, state, params, obj_fn=lambda p: mse(p, x, y))
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params


def finetune_in_place(params, x, y, steps, learning_rate, seed):
  mezo = gradkit.optimizers.mezo_step(mse, learning_rate=learning_rate, eps=1e-3, seed=seed)
  params = jax.tree.map(jnp.copy, params)  # `step` donates (overwrites) its params
  state = mezo.init(params)
  for _ in range(steps):
    params, state, _ = mezo.step(params, state, x, y)
  return params


def main(steps: int = 1000, learning_rate: float = 0.02, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  x, y, y_shifted = make_data(rng)
  pretrained = pretrain(x, y, rng)
  result = {"pretrained_loss": float(mse(pretrained, x, y)),
            "shifted_loss": float(mse(pretrained, x, y_shifted))}
  print(f"pretrained: loss {result['pretrained_loss']:.4f} on its task, "
        f"{result['shifted_loss']:.4f} on the shifted task")
  for name, finetune in (("mezo", finetune_transform), ("mezo_step", finetune_in_place)):
    tuned = finetune(pretrained, x, y_shifted, steps, learning_rate, seed)
    result[name] = float(mse(tuned, x, y_shifted))
    print(f"{name:9s} fine-tuned loss on the shifted task {result['shifted_loss']:.4f} -> "
          f"{result[name]:.4f} ({steps} steps, forward passes only)")
  return result


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  main(parser.parse_args().steps)
