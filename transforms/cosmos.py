"""COSMOS's matrix direction: SOAP-like in a tracked rank-r eigenbasis, Muon outside it.

The rule of the current official code (lliu606/COSMOS, `COSMOS_optim.py`),
written for the PyTorch layout G in R^{m x n} = (out, in) with the eigenbasis
on the input side. A Flax kernel's 2-D view (`gradkit.transforms.matrix_view`)
is (in, out), so the rule is applied to its transpose: n = fan-in (rows of
the view, kh * kw * in for a convolution), m = fan-out (columns). Per matrix,
step t = 1, 2, ..., with c1 = (1 - b1^t) / (1 - b1) and c2 = 1 - b2^t:

  M <- b1 M + G                                   (plain sum, not an EMA)
  t = 1: P = top-r eigenvectors of G^T G           (n x r)
  t > 1: P = QR(b2 P S + (1 - b2) G^T G P)         (one subspace-iteration step)
  S <- b2 T^T S T + (1 - b2) (G P)^T (G P),  T = P_old^T P  (S_0 = 0)
  V <- b2 V + (1 - b2) (G P)^2                     (m x r, not rotated with P)
  D = (G + b1 M) / (1 + b1 c1)   (nesterov)
  D = G / c1                     (not nesterov, momentum_mode="official")
  D = M / c1                     (not nesterov, momentum_mode="momentum")
  A = [(D P) / (sqrt(V) / sqrt(c2) + eps)] P^T
  B = sqrt(mn) NS5(D - D P P^T) / (||.||_F + eps)
  u = lr_ratio sqrt(mn) (A + gamma B) / (||A + gamma B||_F + eps)

so every step has Frobenius norm lr_ratio * sqrt(mn) before the learning
rate. Without Nesterov the official code's D = G / c1 never reads M (which
it still accumulates), so that path has no momentum at all: G is only
divided by the momentum's bias correction c1. `momentum_mode="official"`
(the default) keeps that rule; `"momentum"` uses the bias-corrected
momentum M / c1 (the weights of G + b1 M sum to 1 + b1 c1, of M to c1).

Deviations from the official code: the Newton–Schulz step
(`newton_schulz_orthogonalize`, its eps 1e-7 as there) runs in the update's
dtype (float32 or wider), not bfloat16; the rank is clamped per matrix to
r <= n (the official code fails for r > n); and when r = n the complement is
exactly zero, so B is dropped statically rather than orthogonalizing
rounding noise (`cosmos_rank` keeps r < m when m < n for the same reason).

References:
  L. Liu, Z. Xu, Z. Zhang, H. Kang, Z. Li, C. Liang, W. Chen, T. Zhao, COSMOS:
  A Hybrid Adaptive Optimizer for Memory-Efficient Training of LLMs,
  arXiv 2502.17410 (2025); official code lliu606/COSMOS.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.transforms.matrix_view import as_matrix, check_matrix, matrix_shape
from gradkit.transforms.newton_schulz import MUON_COEFFICIENTS, newton_schulz_orthogonalize

# The official zeropower_via_newtonschulz5's eps.
_NS_EPS = 1e-7
MomentumMode = Literal["official", "momentum"]
_MOMENTUM_MODES = ("official", "momentum")


class ScaleByCosmosState(NamedTuple):
  """State of `scale_by_cosmos`, per matrix leaf (torch layout m x n: m = fan-out,
  n = fan-in, r = clamped rank); all fields keep the params' dtype."""

  count: jax.Array  # int32 scalar: number of updates seen.
  momentum: optax.Updates  # M, (n, m): the leaf's 2-D view.
  basis: optax.Updates  # P, (n, r).
  covariance: optax.Updates  # S, (r, r): P^T (EMA of G^T G) P.
  second_moment: optax.Updates  # V, (m, r).


def cosmos_rank(shape: tuple[int, ...], rank: int) -> int:
  """The rank a leaf of `shape` uses: `rank` clamped to its fan-in n, and to
  m - 1 (at least 1) when its fan-out m is smaller than n.

  A gradient has rank <= m. With r >= m < n the eigen-directions beyond its
  row space (r = n) or the complement at t = 1 (r < n) are exactly zero in
  exact arithmetic but float32 rounding noise in practice, which the
  eps-guarded divisions and normalizations blow up to full-size steps.
  """
  n, m = matrix_shape(shape)
  return min(rank, n) if m >= n else max(1, min(rank, m - 1))


def _top_eigenvectors(gram: jax.Array, r: int) -> jax.Array:
  _, vectors = jnp.linalg.eigh(gram)  # ascending eigenvalues
  return vectors[:, ::-1][:, :r]


def _cosmos_matrix(g, momentum, basis, cov, v, count, hp):
  """One COSMOS step on a torch-layout (m, n) gradient `g`, in g's dtype.

  Returns (update, momentum, basis, covariance, second moment).
  """
  b1, b2, eps, lr_ratio, gamma, nesterov, momentum_mode, ns_steps = hp
  # The step count and the (possibly injected, hence float64 under x64)
  # hyperparameters take g's dtype: a float32 b2^t would cost a float64 run
  # 6e-6 of its step, a float64 b2 would split the dtypes of lax.cond's branches.
  b1, b2, eps, lr_ratio, gamma = (
      jnp.asarray(x, g.dtype) for x in (b1, b2, eps, lr_ratio, gamma))
  m, n = g.shape
  r = basis.shape[1]
  t = count.astype(g.dtype)
  momentum = b1 * momentum + g
  new_basis = jax.lax.cond(
      count == 1,
      lambda: _top_eigenvectors(g.T @ g, r),
      lambda: jnp.linalg.qr(b2 * basis @ cov + (1 - b2) * g.T @ (g @ basis))[0])
  rotation = basis.T @ new_basis  # zero at t = 1, where cov is zero too
  gp = g @ new_basis
  cov = b2 * rotation.T @ cov @ rotation + (1 - b2) * gp.T @ gp
  v = b2 * v + (1 - b2) * gp**2
  c1 = (1 - b1**t) / (1 - b1)
  c2 = 1 - b2**t
  if nesterov:
    d = (g + b1 * momentum) / (1 + b1 * c1)
  elif momentum_mode == "momentum":
    d = momentum / c1
  else:
    d = g / c1
  dp = d @ new_basis
  direction = (dp / (jnp.sqrt(v) / jnp.sqrt(c2) + eps)) @ new_basis.T
  if r < n:
    ortho = newton_schulz_orthogonalize(
        d - dp @ new_basis.T, MUON_COEFFICIENTS, ns_steps, _NS_EPS)
    direction = direction + gamma * math.sqrt(m * n) * ortho / (jnp.linalg.norm(ortho) + eps)
  direction = lr_ratio * math.sqrt(m * n) * direction / (jnp.linalg.norm(direction) + eps)
  return direction, momentum, new_basis, cov, v


def scale_by_cosmos(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    lr_ratio: jax.typing.ArrayLike = 0.1,
    rank: int = 64,
    gamma: jax.typing.ArrayLike = 0.2,
    nesterov: bool = True,
    ns_steps: int = 5,
    momentum_mode: MomentumMode = "official",
) -> optax.GradientTransformation:
  """COSMOS's direction for every matrix leaf (module docstring for the rule).

  Args:
    b1: momentum coefficient (M <- b1 M + G), in [0, 1). Default 0.9.
    b2: decay of the eigenbasis covariance and of V, in [0, 1). Default 0.999.
    eps: added to sqrt(V_hat) and to both Frobenius norms. Default 1e-8.
    lr_ratio: the step's RMS relative to the learning rate (official
      `lr_ratio`: matrix rate over the fallback's rate). Default 0.1.
    rank: eigenbasis rank r (static int >= 1), clamped per leaf by
      `cosmos_rank` (to the fan-in n, and below the fan-out m when m < n). Default 64.
    gamma: weight of the Newton–Schulz complement. Default 0.2.
    nesterov: official `nestrov` (static). Default True.
    ns_steps: Newton–Schulz steps (static int >= 1). Default 5.
    momentum_mode: the direction without Nesterov (static; no effect with
      `nesterov=True`): "official", D = G / c1, the official code's rule,
      which never reads the momentum M; "momentum", D = M / c1, the
      bias-corrected momentum. Default "official".

  Returns:
    An `optax.GradientTransformation` with a `ScaleByCosmosState`; vectors
    and scalars raise a ValueError (route them with `matrix_labels`).

  References:
    Liu et al., "COSMOS: A Hybrid Adaptive Optimizer for Memory-Efficient Training of LLMs", 2025.
    https://arxiv.org/abs/2502.17410 ; official code: https://github.com/lliu606/COSMOS

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_cosmos(rank=2)
    >>> u, _ = tx.update(jnp.eye(4, 3), tx.init(jnp.zeros((4, 3))))
    >>> round(float(jnp.linalg.norm(u)), 4)  # lr_ratio * sqrt(12)
    0.3464
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("eps", eps)
  _checks.check_non_negative("lr_ratio", lr_ratio)
  _checks.check_non_negative("gamma", gamma)
  for name, value in (("rank", rank), ("ns_steps", ns_steps)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be a static int >= 1, got {value!r}")
  if momentum_mode not in _MOMENTUM_MODES:
    raise ValueError(f"momentum_mode must be one of {_MOMENTUM_MODES}, got {momentum_mode!r}")
  method = "scale_by_cosmos"

  def zeros(shape_of):
    def leaf(path, p):
      check_matrix(p, jax.tree_util.keystr(path) or "<root>", method)
      n, m = matrix_shape(p.shape)
      shape = shape_of(m, n, cosmos_rank(p.shape, rank))
      # zeros_like keeps a sharded kernel's layout; jnp.zeros would commit to one device.
      return jnp.zeros_like(p) if shape == p.shape else jnp.zeros(shape, p.dtype)
    return leaf

  def init_fn(params):
    return ScaleByCosmosState(
        count=jnp.zeros([], jnp.int32),
        momentum=jax.tree_util.tree_map_with_path(zeros(lambda m, n, r: (n, m)), params),
        basis=jax.tree_util.tree_map_with_path(zeros(lambda m, n, r: (n, r)), params),
        covariance=jax.tree_util.tree_map_with_path(zeros(lambda m, n, r: (r, r)), params),
        second_moment=jax.tree_util.tree_map_with_path(zeros(lambda m, n, r: (m, r)), params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    hp = (b1, b2, eps, lr_ratio, gamma, nesterov, momentum_mode, ns_steps)

    def leaf(path, u, momentum, basis, cov, v):
      check_matrix(u, jax.tree_util.keystr(path) or "<root>", method)
      f32 = jnp.promote_types(u.dtype, jnp.float32)
      out = _cosmos_matrix(
          as_matrix(u).astype(f32).T, momentum.astype(f32).T, basis.astype(f32),
          cov.astype(f32), v.astype(f32), count, hp)
      direction, momentum_new, basis_new, cov_new, v_new = out
      return (direction.T.reshape(u.shape).astype(u.dtype),
              momentum_new.T.astype(momentum.dtype), basis_new.astype(basis.dtype),
              cov_new.astype(cov.dtype), v_new.astype(v.dtype))

    per_leaf = jax.tree_util.tree_map_with_path(
        leaf, updates, state.momentum, state.basis, state.covariance, state.second_moment)

    def field(k):
      return jax.tree.map(lambda _, out: out[k], updates, per_leaf)

    return field(0), ScaleByCosmosState(count, field(1), field(2), field(3), field(4))

  return optax.GradientTransformation(init_fn, update_fn)
