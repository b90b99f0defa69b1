"""A small CNN on the digits (as 8x8 images): AdamW, SGD, Lion, Adan and Muon, each tuned.

    python -m gradkit.experiments --config=experiments/configs/digits_cnn.py

Two 3x3 convolutions (16 and 32 channels), each followed by ReLU and 2x2
average pooling, and a Linear head: 4-D kernels, which the matrix-aware
methods view as (kh*kw*in, out) matrices.
"""

from __future__ import annotations

import ml_collections

from gradkit.experiments.configs import digits_mlp


def get_config() -> ml_collections.ConfigDict:
  """The digits config with the CNN and a shorter run."""
  config = digits_mlp.get_config()
  config.workload = "digits_cnn"
  config.channels = (16, 32)
  config.optimizers = "adamw,sgd,lion,adan,muon"
  config.steps = 600
  config.tuning.steps = 200
  return config
