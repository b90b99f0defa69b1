"""A wider Markov-language LM whose weights are mostly big matrices: matrix optimizers vs AdamW.

    python -m gradkit.experiments --config=experiments/configs/markov_lm_wide.py

d_model 256 and d_ff 1024: the q/k/v/o (256x256) and SwiGLU (256x1024,
1024x256) kernels dominate the parameters, so the memory-efficient methods'
state bytes differ visibly from AdamW's. Embeddings and the head take each
method's fallback (`gradkit.optimizers.matrix_labels`). Low-rank methods use
rank 64 (a quarter of d_model) and a 200-step projector period.
"""

from __future__ import annotations

import ml_collections

from gradkit.experiments.configs import markov_lm

LOW_RANK = {"rank": 64, "update_proj_gap": 200}


def get_config() -> ml_collections.ConfigDict:
  """markov_lm with 256-wide layers and the matrix-aware family."""
  config = markov_lm.get_config()
  config.model.d_model = 256
  config.model.d_ff = 1024
  config.steps = 600
  config.tuning.steps = 200
  config.optimizers = "adamw,muon,swan,scale,galore,apollo,apollo_mini,frugal"
  config.hparams = ml_collections.ConfigDict({
      "galore": LOW_RANK, "apollo": LOW_RANK,
      "apollo_mini": {"update_proj_gap": 200},
      "frugal": {"update_gap": 200},
  })
  return config
