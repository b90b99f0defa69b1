"""A small transformer LM on a synthetic Markov language (known best loss): AdamW, Lion, Muon, ...

    python -m gradkit.experiments --config=experiments/configs/markov_lm.py

The language (`synthetic_language.make_markov_language`) is a random
first-order Markov chain over `language.vocab_size` tokens with
`language.branching` successors per token; sequences start at stationarity,
so no model can beat the chain's entropy rate, and every table shows the
gap of the final validation loss to it. The target is that rate plus
`target_gap` nats. The training set is a fixed pool of sequences drawn with
`data_seed`; the validation sequences are drawn with `data_seed + 1`.
"""

from __future__ import annotations

import ml_collections

from gradkit.experiments.configs import digits_mlp


def get_config() -> ml_collections.ConfigDict:
  """A 2-layer, 64-wide DecoderLM with a warm-up + cosine schedule."""
  config = digits_mlp.get_config()
  for field in ("validation_fraction", "test_fraction", "hidden_sizes"):
    del config[field]
  config.workload = "markov_lm"
  config.language = ml_collections.ConfigDict({"vocab_size": 128, "branching": 4, "seed": 0})
  config.seq_len = 32
  config.train_sequences = 8192
  config.validation_sequences = 256
  config.model = ml_collections.ConfigDict(
      {"d_model": 64, "num_heads": 4, "num_layers": 2, "d_ff": 128})
  config.target_gap = 0.05
  config.batch_size = 32
  config.steps = 1000
  config.eval_every = 100
  config.schedule = "warmup_cosine"
  config.warmup_fraction = 0.05
  config.optimizers = "adamw,lion,adan,sgd_sai,muon"
  config.learning_rates = ml_collections.ConfigDict(
      {"adamw": 3e-3, "lion": 3e-4, "adan": 3e-3, "sgd_sai": 3e-2, "muon": 2e-2})
  config.tuning.steps = 300
  return config
