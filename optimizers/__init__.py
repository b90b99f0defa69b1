"""Named optimizers: short recipes chaining gradkit/optax primitives."""

from gradkit.optimizers.baselines import adamw, sgd
