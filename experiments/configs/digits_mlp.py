"""Default workload: an MLP on scikit-learn's digits, one run per optimizer.

    python -m gradkit.experiments --config=experiments/configs/digits_mlp.py \
        --config.steps=500 --config.optimizers=lion,adamw

Variant configs import `get_config` from here and override fields.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The default digits/MLP configuration."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.test_fraction = 0.2
  config.hidden_sizes = (128, 128)
  config.batch_size = 128
  config.steps = 1000
  # A comma-separated string or a list of registered names (gradkit.names());
  # typed `object` so the command line and variant configs may give either.
  config.optimizers = ml_collections.FieldReference(
      "adamw,sgd,lion,adabelief,diffgrad,adan,adamp,lamb,sgd_sai", field_type=object)
  # Tuned by hand for this workload; a name left out gets its factory's default.
  config.learning_rates = ml_collections.ConfigDict({
      "adamw": 1e-3,
      "sgd": 5e-2,
      "lion": 1e-4,
      "adabelief": 1e-3,
      "diffgrad": 1e-3,
      "adan": 1e-3,
      "adamp": 1e-3,
      "lamb": 3e-3,
      "sgd_sai": 1e-2,
  })
  # Extra factory keywords per optimizer, e.g. {"lion": {"weight_decay": 1.0}}.
  config.hparams = ml_collections.ConfigDict()
  # Moving-average window (steps) for loss_curves.png; 1 plots raw batch losses.
  config.plot_smoothing = 20
  return config
