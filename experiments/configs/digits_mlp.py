"""Default workload: an MLP on scikit-learn's digits; nine first-order optimizers, each tuned.

    python -m gradkit.experiments --config=experiments/configs/digits_mlp.py \
        --config.steps=500 --config.optimizers=lion,adamw

Tuning protocol: each optimizer's learning rate is swept over
tuning.factors x its base rate (config.learning_rates, else the factory's
default) for tuning.steps steps at seed tuning.seed; the rate with the
lowest validation loss (tuning.metric) is then run for `steps` steps with
every seed in `seeds`. Tables show mean ± std over those seeds.
Variant configs import `get_config` from here and override fields.
"""

from __future__ import annotations

import ml_collections


def tuning_config() -> ml_collections.ConfigDict:
  """The default tuning protocol: a 3-point multiplicative sweep at a separate seed."""
  return ml_collections.ConfigDict({
      # Multiplicative grid around each base rate; () or (1.0,) skips the sweep.
      "factors": (0.3, 1.0, 3.0),
      # Explicit grids replacing the factors for some optimizers, e.g. {"sgd": (0.01, 0.1)}.
      "learning_rates": ml_collections.ConfigDict(),
      "steps": 300,  # sweep run length; 0 means config.steps
      "seed": 1000,  # sweep runs use their own seed, not one of `seeds`
      # Validation metric that picks the rate (best value over the run); None: config.metric.
      "metric": ml_collections.FieldReference("loss", field_type=str),
  })


def get_config() -> ml_collections.ConfigDict:
  """The default digits/MLP configuration."""
  config = ml_collections.ConfigDict()
  config.workload = "digits_mlp"
  config.data_seed = 0  # fixes the train/validation/test split
  config.validation_fraction = 0.2
  config.test_fraction = 0.2
  config.hidden_sizes = (128, 128)
  config.seeds = (0, 1)  # run seeds: initial parameters and minibatch order
  config.batch_size = 128
  config.steps = 1000
  config.eval_every = 50
  config.schedule = "constant"  # or "warmup_cosine"
  config.warmup_fraction = 0.0
  # Reported validation metric and its time-to-target threshold (None: the workload's).
  config.metric = ml_collections.FieldReference(None, field_type=str)
  config.target = ml_collections.FieldReference(None, field_type=float)
  # A comma-separated string or a list of registered names (gradkit.names());
  # typed `object` so the command line and variant configs may give either.
  config.optimizers = ml_collections.FieldReference(
      "adamw,sgd,lion,adabelief,diffgrad,adan,adamp,lamb,sgd_sai", field_type=object)
  # Base rates of the sweep; a name left out starts from its factory's default.
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
  config.tuning = tuning_config()
  return config
