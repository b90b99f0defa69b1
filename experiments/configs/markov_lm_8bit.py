"""Markov-language LM: does storing optimizer state in 8 bits change the loss? 8-bit vs 32-bit.

    python -m gradkit.experiments --config=experiments/configs/markov_lm_8bit.py

Each 8-bit optimizer runs at its 32-bit twin's rate (no sweep), so the
curves differ only by the state's quantization.
"""

from __future__ import annotations

import ml_collections

from gradkit.experiments.configs import markov_lm


def get_config() -> ml_collections.ConfigDict:
  """markov_lm with adamw/adamw8bit and lion/lion8bit at equal rates."""
  config = markov_lm.get_config()
  config.optimizers = "adamw,adamw8bit,lion,lion8bit"
  config.learning_rates = ml_collections.ConfigDict(
      {"adamw": 3e-3, "adamw8bit": 3e-3, "lion": 3e-4, "lion8bit": 3e-4})
  config.tuning.factors = (1.0,)
  config.seeds = (0, 1)
  return config
