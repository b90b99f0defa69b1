"""8-bit GaLore: GaLore's subspace Adam moments stored in 8 bits, block-wise.

GaLore (`gradkit.create("galore")`) keeps Adam's moments only for a rank-r
projection of each matrix gradient. Wrapping the whole optimizer,
`gradkit.transforms.quantized(gradkit.create("galore"))`, quantizes only
the state leaves shaped like a parameter: the AdamW fallback moments of a
head or another non-matrix leaf with >= 4096 elements (embeddings keep
float32 by `quantized`'s default), not GaLore's (m, r) or (r, n) moments,
which stay float32. On this MLP that is nothing (its biases are small and
its kernels all take the GaLore rule), and the script prints
`gradkit.transforms.quantization_plan`'s reasons. The way to 8-bit
low-rank moments is to quantize where they live: GaLore is
`gradkit.transforms.project_low_rank(adam)` on "matrix" leaves plus the
same Adam on the rest, so this script rebuilds it from those public pieces
with `quantized(adam)` inside the projection (the paper's "8-bit GaLore")
and for the fallback leaves. Its first step equals `galore`'s exactly (8-bit
state only enters from step 2). Trains a 64-256-256-10 MLP on scikit-learn's
digits with both and prints `gradkit.state_nbytes` of each state.

  python examples/galore_8bit.py --steps 200
"""

from __future__ import annotations

import argparse
import collections
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradkit
from gradkit.experiments.data import batch_indices, load_digits
from gradkit.transforms import (
    NothingQuantizedWarning,
    project_low_rank,
    quantization_plan,
    quantized,
    scale_by_adam_eps_before_correction,
)


def galore_8bit(
    learning_rate: float = 1e-3,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
) -> optax.GradientTransformation:
  """`gradkit.optimizers.galore` (proj_type "std", no weight decay) with 8-bit Adam state.

  Quantized moments need >= 4096 elements (bitsandbytes' min_8bit_size);
  smaller ones, e.g. biases, stay float32.
  """

  def adam8():  # GaLore's Hugging Face-style Adam, its moments in 8 bits
    return quantized(scale_by_adam_eps_before_correction(b1, b2, eps), elementwise=True)

  def descend(direction):
    return optax.chain(direction, optax.scale_by_learning_rate(learning_rate))

  matrix = descend(project_low_rank(adam8(), rank, update_proj_gap, kind="svd", side="std",
                                    scale=scale))
  other = descend(adam8())
  return optax.partition({"matrix": matrix, "embedding": other, "head": other, "vector": other},
                         gradkit.optimizers.matrix_labels)


def init_mlp(seed: int, sizes=(64, 256, 256, 10)):
  rng = np.random.default_rng(seed)
  return {f"layer{i}": {"kernel": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), jnp.float32),
                        "bias": jnp.zeros(n)}
          for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:]))}


def mlp(params, x):
  *hidden, last = params.values()
  for layer in hidden:
    x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
  return x @ last["kernel"] + last["bias"]


def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(mlp(params, x), y).mean()


def train(tx, params, data, steps, batch_size, seed):
  @jax.jit
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  with warnings.catch_warnings():  # galore_8bit's bias branch is all under min_size
    warnings.simplefilter("ignore", NothingQuantizedWarning)
    state = jax.jit(tx.init)(params)
  for rows in batch_indices(len(y), batch_size, steps, seed):
    params, state, _ = step(params, state, x[rows], y[rows])
  return params, state, float(loss_fn(params, x, y))


def main(steps: int = 200, rank: int = 32, batch_size: int = 128, seed: int = 0) -> dict:
  data = load_digits(seed)
  params = init_mlp(seed)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  initial_loss = float(loss_fn(params, x, y))
  hparams = dict(learning_rate=3e-3, rank=rank, update_proj_gap=50)
  optimizers = {"galore (32-bit)": gradkit.create("galore", **hparams),
                "galore_8bit": galore_8bit(**hparams)}
  galore = gradkit.create("galore", **hparams)
  with warnings.catch_warnings():  # the plan below says what it would
    warnings.simplefilter("ignore", NothingQuantizedWarning)
    wrapped = jax.eval_shape(quantized(galore).init, params)  # shapes alone, nothing allocated
  plan = quantization_plan(jax.eval_shape(galore.init, params), params)
  result = {"initial_loss": initial_loss,
            "quantized(galore) bytes": gradkit.state_nbytes(wrapped),
            "quantized(galore) plan": collections.Counter(e.decision for e in plan)}
  for name, tx in optimizers.items():
    _, state, loss = train(tx, params, data, steps, batch_size, seed)
    nbytes = gradkit.state_nbytes(state)
    print(f"{name:16s} state {nbytes:8d} bytes   train loss {initial_loss:.4f} -> {loss:.4f}")
    result[name] = {"bytes": nbytes, "loss": loss}
  eight_bit = gradkit.state_nbytes_breakdown(wrapped)["quantized"]
  plan_counts = sorted(result["quantized(galore) plan"].items())
  reasons = ", ".join(f"{n} {reason}" for reason, n in plan_counts)
  print(f"quantized(galore) state {result['quantized(galore) bytes']} bytes, {eight_bit} of them "
        f"8-bit; its leaves: {reasons} (the low-rank moments are not parameter-shaped)")
  ratio = result["galore_8bit"]["bytes"] / result["galore (32-bit)"]["bytes"]
  print(f"galore_8bit / 32-bit state bytes: {ratio:.3f} (the float32 projectors stay)")
  return result


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  main(parser.parse_args().steps)
