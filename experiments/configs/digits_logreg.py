"""Logistic regression on the digits (a convex problem), the default optimizers, each tuned.

    python -m gradkit.experiments --config=experiments/configs/digits_logreg.py
"""

from __future__ import annotations

import ml_collections

from gradkit.experiments.configs import digits_mlp


def get_config() -> ml_collections.ConfigDict:
  """The digits config with one Linear layer; base rates shared with the MLP."""
  config = digits_mlp.get_config()
  config.workload = "digits_logreg"
  config.target = 0.93
  return config
