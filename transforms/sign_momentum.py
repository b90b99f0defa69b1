"""Sign of an interpolated momentum: the direction of Lion and its variants."""

from __future__ import annotations

from typing import Any

import optax

from gradkit import _checks


def scale_by_sign_momentum(
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  """u = sign(b1 * m + (1 - b1) * g), then m <- b2 * m + (1 - b2) * g.

  The update interpolates the momentum and the current gradient with `b1`
  before taking the sign, and only then refreshes the momentum with `b2`
  (Chen et al., 2023, Algorithm 2), so every coordinate of `u` is -1, 0 or +1.
  This is gradkit's one sign-of-momentum step; it delegates to
  `optax.scale_by_lion` (hard sign), whose state is
  `optax.ScaleByLionState(count, mu)`.

  Args:
    b1: interpolation weight of the momentum inside the sign, in [0, 1) as
      the official code checks. Default 0.9.
    b2: decay rate of the momentum, in [0, 1). Default 0.99.
    mu_dtype: dtype of the momentum (e.g. `jnp.bfloat16`); `None` keeps the
      parameters' dtype. Default None.

  Returns:
    An `optax.GradientTransformation`.

  References:
    Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023.
    https://arxiv.org/abs/2302.06675 (official code: google/automl, lion/).

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_sign_momentum()
    >>> u, _ = tx.update(jnp.array([0.3, -2.0, 0.0]), tx.init(jnp.zeros(3)))
    >>> u.tolist()
    [1.0, -1.0, 0.0]
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_float_dtype("mu_dtype", mu_dtype)
  return optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype)
