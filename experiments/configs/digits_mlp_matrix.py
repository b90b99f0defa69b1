"""Digits MLP: the matrix-aware and low-memory optimizers (Muon, GaLore, APOLLO, ...) vs AdamW.

    python -m gradkit.experiments --config=experiments/configs/digits_mlp_matrix.py

The MLP's 64x128, 128x128 and 128x10 kernels are "matrix" leaves (none is
named like an embedding or a head), its biases "vector" leaves on each
method's fallback. Rates are the factories' paper defaults; the low-rank
methods get rank 16 (an eighth of the 128-wide layers, capped by the 10
outputs of the last) and a 100-step projector period, so several refreshes
happen within the run.
"""

from __future__ import annotations

import ml_collections

from gradkit.experiments.configs import digits_mlp

LOW_RANK = {"rank": 16, "update_proj_gap": 100}


def get_config() -> ml_collections.ConfigDict:
  """The default digits config with the matrix family."""
  config = digits_mlp.get_config()
  config.optimizers = ("adamw,muon,swan,sinkgd,scale,cosmos,galore,natural_galore,"
                       "apollo,apollo_mini,frugal")
  config.hparams = ml_collections.ConfigDict({
      "galore": LOW_RANK, "natural_galore": LOW_RANK, "apollo": LOW_RANK,
      "apollo_mini": {"update_proj_gap": 100},
      "cosmos": {"rank": 16},
      "frugal": {"update_gap": 100},
  })
  return config
