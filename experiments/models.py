"""Flax NNX models for the experiment workloads."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx


class MLP(nnx.Module):
  """Multi-layer perceptron: Linear layers with ReLU between them.

  `features` lists the widths from input to output, e.g. (64, 128, 128, 10).
  """

  def __init__(self, features: Sequence[int], *, rngs: nnx.Rngs):
    self.layers = nnx.List(
        [nnx.Linear(i, o, rngs=rngs) for i, o in zip(features[:-1], features[1:])])

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
    return self.layers[-1](x)
