"""optax's names ("optax.adam") through the experiments runner's name handling."""

from __future__ import annotations

import ml_collections
import optax
import pytest

import gradkit
from gradkit.experiments import train


def test_runner_accepts_optax_names_and_their_nested_config_entries():
  assert train.candidate_names("lion, optax.adam") == ["lion", "optax.adam"]
  assert train.default_learning_rate("optax.contrib.prodigy") == 1.0
  with pytest.raises(ValueError, match=r"optax\.adam has no default.*config\.learning_rates"):
    train.default_learning_rate("optax.adam")
  # ConfigDict keys cannot hold dots: "optax.adam" is the nested entry hparams.optax.adam.
  config = ml_collections.ConfigDict({"hparams": {"optax": {"adam": {"b1": 0.8}}}})
  assert train.factory_hparams(config, "optax.adam", 0) == {"b1": 0.8}
  assert train.factory_hparams(config, "optax.adamw", 0) == {}
  assert train.factory_hparams(config, "sophia", 3) == {"seed": 3}
  tx = optax.with_extra_args_support(gradkit.create(
      "optax.adam", learning_rate=1e-3, **train.factory_hparams(config, "optax.adam", 0)))
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
