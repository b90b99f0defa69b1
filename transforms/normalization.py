"""Row/column normalization of matrix gradients and its alternating (Sinkhorn) form.

One rule, used by three methods on the 2-D view of each leaf (see
`gradkit.transforms.matrix_view`: a Flax kernel (in, out) is unchanged, a
convolution kernel (kh, kw, in, out) becomes (kh * kw * in, out)):

- `rms_normalize(x, axis)`: divide every slice along `axis` by its RMS,
  clamped below at eps, so each slice gets RMS 1 (l2 norm sqrt(length)).
  `axis=0` reduces over the rows: one scale per column, i.e. per output unit
  of a Flax kernel over its fan-in (SCALE's "column-wise" normalization).
  With `center=True` the slice mean is subtracted first, so the divisor is
  the population standard deviation (SWAN's GradNorm, standardising each
  output unit over its inputs: PyTorch rows, Flax columns).
- `sinkhorn_normalize(x, L, axis)`: L rounds of "normalize along `axis`, then
  along the other axis" (SinkGD's SR-Sinkhorn). The last normalization is
  exact, the first holds in the limit.

References:
  C. Ma, W. Gong, M. Scetbon, E. Meeds, SWAN: SGD with Normalization and
  Whitening Enables Stateless LLM Training, ICML 2025 (arXiv 2412.13148).
  M. Scetbon, C. Ma, W. Gong, E. Meeds, Gradient Multi-Normalization for
  Stateless and Scalable LLM Training, arXiv 2502.06742 (SinkGD).
  A. Glentis, J. Li, A. Han, M. Hong, A Minimalist Optimizer Design for LLM
  Pretraining, arXiv 2506.16659 (SCALE).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.transforms.matrix_view import stateless_matrix_transform


def _check_axis(axis: int) -> None:
  if not isinstance(axis, int) or isinstance(axis, bool) or axis not in (0, 1):
    raise ValueError(f"axis must be 0 or 1 (an axis of the 2-D view), got {axis!r}")


def _check_iterations(num_iterations: int) -> None:
  if (not isinstance(num_iterations, int) or isinstance(num_iterations, bool)
      or num_iterations < 1):
    raise ValueError(f"num_iterations must be an int >= 1, got {num_iterations!r}")


def rms_normalize(
    x: jax.Array, axis: int = 0, center: bool = False, eps: jax.typing.ArrayLike = 1e-8
) -> jax.Array:
  """Each slice of a 2-D `x` along `axis` divided by max(RMS, eps).

  With `center`, the slice mean is removed first, so the divisor is the
  population standard deviation and every slice ends with mean 0 and std 1;
  a constant slice becomes 0 (its centred values are 0, its std is clamped).

  Args:
    x: a 2-D array.
    axis: the axis reduced over. Default 0.
    center: subtract the slice mean first (divide by the standard deviation).
      Default False.
    eps: lower clamp on the RMS / standard deviation. Default 1e-8.

  Returns:
    An array like `x`.
  """
  if center:
    x = x - jnp.mean(x, axis=axis, keepdims=True)
  rms = jnp.sqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(rms, eps)


def sinkhorn_normalize(
    x: jax.Array, num_iterations: int = 5, axis: int = 0, eps: jax.typing.ArrayLike = 1e-8
) -> jax.Array:
  """`num_iterations` rounds of RMS normalization along `axis`, then the other axis.

  For x of shape (m, n) and axis=1 this is SinkGD's SR-Sinkhorn as written
  in the paper: rows to norm sqrt(n), then columns to norm sqrt(m). It is the
  Sinkhorn–Knopp iteration on x**2, so the first normalization holds only as
  the iterations grow (the second holds exactly after every round).

  Args:
    x: a 2-D array.
    num_iterations: rounds of the two normalizations. Default 5.
    axis: the axis normalized first. Default 0.
    eps: lower clamp on the norms. Default 1e-8.

  Returns:
    An array like `x`.

  References:
    Scetbon, Ma, Gong & Meeds, "Gradient Multi-Normalization for Stateless and Scalable LLM
    Training", 2025. https://arxiv.org/abs/2502.06742
  """
  other = 1 - axis

  def one_round(_, x):
    return rms_normalize(rms_normalize(x, axis, eps=eps), other, eps=eps)

  # A loop rather than unrolling, so compile time does not grow with L.
  return jax.lax.fori_loop(0, num_iterations, one_round, x)


def normalize_axis(
    axis: int = 0, center: bool = False, eps: jax.typing.ArrayLike = 1e-8
) -> optax.GradientTransformation:
  """State-free: every matrix update -> `rms_normalize` of its 2-D view.

  Args:
    axis: the axis of the 2-D view reduced over (static). 0: one scale per
      column, i.e. per output unit of a Flax kernel (in, out) over its fan-in;
      for an `nn.Embed` table (vocab, d), per feature over the vocabulary. Default 0.
    center: subtract the slice mean first, dividing by the standard deviation
      (SWAN's GradNorm) instead of the RMS (SCALE). Default False.
    eps: lower clamp on the RMS / standard deviation. Default 1e-8.

  Returns:
    An `optax.GradientTransformation` with an `optax.EmptyState`; leaves with
    ndim < 2 raise a ValueError naming them. Computed in float32 or wider.

  References:
    Ma, Gong, Scetbon & Meeds, "SWAN: SGD with Normalization and Whitening Enables Stateless LLM
    Training", ICML 2025. https://arxiv.org/abs/2412.13148

  Example:
    >>> import jax.numpy as jnp
    >>> tx = normalize_axis(axis=0)
    >>> u, _ = tx.update(jnp.array([[3.0, 0.0], [4.0, 2.0]]), tx.init(None))
    >>> [[round(v, 4) for v in row] for row in u.tolist()]
    [[0.8485, 0.0], [1.1314, 1.4142]]
  """
  _check_axis(axis)
  _checks.check_eps("eps", eps)
  name = "normalize_axis(center=True)" if center else "normalize_axis"
  return stateless_matrix_transform(lambda m: rms_normalize(m, axis, center, eps), name)


def normalize_sinkhorn(
    num_iterations: int = 5, axis: int = 0, eps: jax.typing.ArrayLike = 1e-8
) -> optax.GradientTransformation:
  """State-free: every matrix update -> `sinkhorn_normalize` of its 2-D view.

  Args:
    num_iterations: rounds L of the alternation (static int >= 1). Default 5.
    axis: the axis normalized first in each round (static). 0 on a Flax
      kernel (in, out) matches the paper's PyTorch (out, in) layout: each
      output unit over its inputs first, then each input over the outputs. Default 0.
    eps: lower clamp on every RMS. Default 1e-8.

  Returns:
    An `optax.GradientTransformation` with an `optax.EmptyState`; leaves with
    ndim < 2 raise a ValueError naming them. Computed in float32 or wider.

  References:
    Scetbon, Ma, Gong & Meeds, "Gradient Multi-Normalization for Stateless and Scalable LLM
    Training", 2025. https://arxiv.org/abs/2502.06742
  """
  _check_iterations(num_iterations)
  _check_axis(axis)
  _checks.check_eps("eps", eps)
  return stateless_matrix_transform(
      lambda m: sinkhorn_normalize(m, num_iterations, axis, eps), "normalize_sinkhorn")
