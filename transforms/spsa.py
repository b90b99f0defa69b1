"""SPSA building blocks: seeded perturbation directions and the projected gradient.

A direction z is never stored: leaf i of z is drawn from fold_in(key, i)
(leaves in `jax.tree.leaves` order), so the same key regenerates the same z
wherever it is needed (perturb, update, another device).

References:
  J. Spall, Multivariate stochastic approximation using a simultaneous
  perturbation gradient approximation, IEEE TAC 1992. S. Malladi et al.,
  Fine-Tuning Language Models with Just Forward Passes (MeZO), NeurIPS 2023.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

Distribution = Literal["gaussian", "rademacher"]
DISTRIBUTIONS = ("gaussian", "rademacher")


def sample_direction(key: jax.Array, params: Any, distribution: Distribution = "gaussian") -> Any:
  """z shaped like `params`: N(0, I) or Rademacher entries, leaf i from fold_in(key, i).

  Drawn in float32 and cast to each leaf's dtype.
  """
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
  leaves, treedef = jax.tree.flatten(params)
  out = []
  for i, p in enumerate(leaves):
    k = jax.random.fold_in(key, i)
    if distribution == "gaussian":
      z = jax.random.normal(k, p.shape, jnp.float32)
    else:
      z = jax.random.rademacher(k, p.shape, jnp.float32)
    out.append(z.astype(p.dtype))
  return treedef.unflatten(out)


def projected_gradient(
    obj_fn: Callable[[Any], jax.Array], params: Any, z: Any, eps: jax.typing.ArrayLike
) -> jax.Array:
  """(f(params + eps z) - f(params - eps z)) / (2 eps): the central difference along z.

  Evaluated functionally (params are not overwritten), in float32.
  """
  plus = jax.tree.map(lambda p, d: p + (eps * d).astype(p.dtype), params, z)
  minus = jax.tree.map(lambda p, d: p - (eps * d).astype(p.dtype), params, z)
  diff = obj_fn(plus).astype(jnp.float32) - obj_fn(minus).astype(jnp.float32)
  return diff / (2.0 * jnp.asarray(eps, jnp.float32))
