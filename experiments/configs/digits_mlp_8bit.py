"""Digits MLP: each 8-bit optimizer beside its 32-bit version, to compare their losses.

    python -m gradkit.experiments --config=experiments/configs/digits_mlp_8bit.py

The MLP's 64x128 and 128x128 kernels (8192 and 16384 entries) are above the
4096-element threshold, so their moments are stored in 8 bits; biases and the
128x10 head stay in 32 bits, as bitsandbytes does.
"""

from __future__ import annotations

import ml_collections

from gradkit.experiments.configs import digits_mlp


def get_config() -> ml_collections.ConfigDict:
  """The default digits config with 32-bit / 8-bit pairs."""
  config = digits_mlp.get_config()
  config.optimizers = "adamw,adamw8bit,lion,lion8bit,sgd,momentum8bit,adabelief,adabelief8bit"
  config.learning_rates.adamw8bit = config.learning_rates.adamw
  config.learning_rates.lion8bit = config.learning_rates.lion
  config.learning_rates.momentum8bit = config.learning_rates.sgd
  config.learning_rates.adabelief8bit = config.learning_rates.adabelief
  # bitsandbytes' AdamW8bit defaults to weight_decay 1e-2; match gradkit adamw's.
  config.hparams.adamw8bit = {"weight_decay": 1e-4}
  return config
