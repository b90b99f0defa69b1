"""Low-rank projection of matrix gradients, refreshed every T steps.

One implementation of the projector shared by GaLore, Natural GaLore,
APOLLO and FRUGAL (and anything else that works in a subspace):

- the side rule (`side`): "std" puts the projector on the smaller dimension
  of the (m, n) view — m >= n: P in R^{r x n}, R = G P^T in R^{m x r};
  m < n: P in R^{m x r}, R = P^T G in R^{r x n} — "reverse_std" swaps, "left"
  and "right" force a side, "full" projects both (R = U^T G V, r x r; U and
  V are stored stacked as one (m + n, r) array, so the state holds plain
  arrays only, as flax.nnx.Optimizer requires);
- the projector (`kind`): "svd", the top-r singular vectors of the current
  gradient (GaLore; fp32 SVD); "gaussian", i.i.d. N(0, 1/r) entries
  (APOLLO); "orthogonal", a random semi-orthogonal matrix (FRUGAL's random
  type) — the random kinds are drawn from fold_in(fold_in(key, leaf), k // T),
  so a seed reproduces every projector without storing more than one key;
- refresh when the step count k (steps already taken) is a multiple of T;
- per-leaf options: the rank, the period T and `project_low_rank`'s scale
  may each be a constant or a rule `fn(path, shape)` of the leaf's key path
  (a tuple of jax key entries; `jax.tree_util.keystr(path)` gives its
  name) and its (m, n) matrix view, as the official codes' parameter
  groups set per-layer values (a one-argument `fn(shape)` also works);
  rules run when the state is built and traced, so they see static values;
- precision: everything runs in float32, or in the leaf's dtype when it is
  wider (`compute_dtype`: bf16 leaves in float32, float64 leaves in float64).

`project_low_rank(inner, ...)` runs any stateful `inner` transform on the
projected gradients and maps its output back (GaLore); with `complement`
it adds a state-free rule on the residual G - back(project(G)) and with
`reset_on_refresh` it zeroes `inner`'s state whenever the projector changes
(FRUGAL). Rank is clamped to min(m, n) of each leaf.

References:
  J. Zhao et al., GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
  Projection, ICML 2024. H. Zhu et al., APOLLO: SGD-like Memory, AdamW-level
  Performance, MLSys 2025. P. Zmushko et al., FRUGAL: Memory-Efficient
  Optimization by Reducing State Overhead for Scalable Training, ICML 2025.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks
from gradkit.transforms.matrix_view import as_matrix, check_matrix, matrix_shape

Side = Literal["std", "reverse_std", "left", "right", "full"]
Kind = Literal["svd", "gaussian", "orthogonal"]
Complement = Literal["sign", "sgd"] | None
_SIDES = ("std", "reverse_std", "left", "right", "full")
_KINDS = ("svd", "gaussian", "orthogonal")
_COMPLEMENTS = ("sign", "sgd", None)


def resolve_side(shape: tuple[int, int], side: Side) -> str:
  """"left", "right" or "full" for an (m, n) view under the `side` rule."""
  m, n = shape
  if side == "std":
    return "right" if m >= n else "left"
  if side == "reverse_std":
    return "left" if m >= n else "right"
  return side


_T = TypeVar("_T")
# A constant, or a per-leaf rule fn(path, shape) (or fn(shape)) of the leaf's
# key path and (m, n) matrix view.
LeafOption = _T | Callable[..., _T]
Rank = LeafOption[int]
Period = LeafOption[int]
Scale = LeafOption[jax.typing.ArrayLike]


def _takes_path(fn: Callable[..., Any]) -> bool:
  try:
    inspect.signature(fn).bind(None, None)
  except TypeError:
    return False
  except ValueError:  # no signature (some builtins): the one-argument form
    return False
  return True


def leaf_value(option: LeafOption[_T], path: tuple[Any, ...], shape: tuple[int, int]) -> _T:
  """`option` itself, or the per-leaf rule's value: option(path, shape), or
  option(shape) for a rule of one argument.

  Args:
    option: a constant, or a callable of (key path, (m, n)) or of (m, n).
    path: the leaf's key path, as `jax.tree_util.tree_map_with_path` gives it.
    shape: the (m, n) matrix view of the leaf.

  Returns:
    The value for this leaf.
  """
  if not callable(option):
    return option
  return option(path, shape) if _takes_path(option) else option(shape)


def effective_rank(shape: tuple[int, int], rank: Rank, path: tuple[Any, ...] = ()) -> int:
  """`rank` (an int, or a per-leaf rule, see `leaf_value`) clamped to [1, min(m, n)];
  0 for a zero-size matrix, whose projectors and subspace are then empty."""
  return min(max(1, int(leaf_value(rank, path, shape))), *shape)


def leaf_period(update_every: Period, path: tuple[Any, ...], shape: tuple[int, int]) -> int:
  """The refresh period T of one leaf; ValueError naming the leaf unless an int >= 1."""
  t = leaf_value(update_every, path, shape)
  if not isinstance(t, numbers.Integral) or isinstance(t, bool) or t < 1:
    where = jax.tree_util.keystr(path) or "<root>"
    raise ValueError(f"update_every of leaf {where} must be an int >= 1, got {t!r}")
  return int(t)


def leaf_scale(scale: Scale, path: tuple[Any, ...], shape: tuple[int, int]) -> jax.typing.ArrayLike:
  """The scale of one leaf; ValueError naming the leaf if a rule gives a negative one."""
  value = leaf_value(scale, path, shape)
  if callable(scale):
    _checks.check_non_negative(f"scale of leaf {jax.tree_util.keystr(path) or '<root>'}", value)
  return value


def projector_shape(
    shape: tuple[int, int], rank: Rank, side: Side, path: tuple[Any, ...] = ()
) -> tuple[int, int]:
  """Shape of the projector ((m + n, r), U over V, for "full")."""
  (m, n), r, s = shape, effective_rank(shape, rank, path), resolve_side(shape, side)
  return {"right": (r, n), "left": (m, r), "full": (m + n, r)}[s]


def projected_shape(
    shape: tuple[int, int], rank: Rank, side: Side, path: tuple[Any, ...] = ()
) -> tuple[int, int]:
  """Shape of project(G): (m, r), (r, n) or (r, r)."""
  (m, n), r, s = shape, effective_rank(shape, rank, path), resolve_side(shape, side)
  return {"right": (m, r), "left": (r, n), "full": (r, r)}[s]


def make_projector(
    g: jax.Array, key: jax.Array, rank: Rank, side: Side, kind: Kind
) -> jax.Array:
  """A fresh projector for the (m, n) gradient `g`, in g's dtype (float32 at least).

  Random projectors are drawn in float32 whatever the dtype, so a seed gives
  the same draw for every leaf dtype (an "orthogonal" one is then
  orthonormalized in the wider dtype).

  Args:
    g: the (m, n) gradient of the leaf.
    key: PRNG key of the random kinds (unused by "svd").
    rank: the rank r (clamped to min(m, n)), or a function of (m, n).
      Per-leaf rules of (path, shape) are resolved by the tree-level
      functions, which pass the resulting int.
    side: "std" (projector on the smaller side, as the official GaLore),
      "reverse_std", "right", "left" or "full".
    kind: "svd", "gaussian" or "orthogonal".

  Returns:
    The projector (a (m + n, r) array, U over V, for "full"), float32 or g's wider dtype.

  References:
    Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", ICML 2024.
    https://arxiv.org/abs/2403.03507 ; official code: https://github.com/jiaweizzhao/GaLore

    Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", MLSys 2025.
    https://arxiv.org/abs/2412.05270 ; official code: https://github.com/zhuhanqing/APOLLO

    Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable
    Training", ICML 2025. https://arxiv.org/abs/2411.07837 ; official code:
    https://github.com/fzmushko/FRUGAL
  """
  g = g.astype(compute_dtype(g))
  shape, r, s = g.shape, effective_rank(g.shape, rank), resolve_side(g.shape, side)
  if kind == "svd":
    u, _, vt = jnp.linalg.svd(g, full_matrices=False)
    return {"right": vt[:r], "left": u[:, :r], "full": jnp.concatenate([u[:, :r], vt[:r].T])}[s]
  if s == "full":
    k1, k2 = jax.random.split(key)
    return jnp.concatenate([_random_frame(k1, shape[0], r, kind, g.dtype),
                            _random_frame(k2, shape[1], r, kind, g.dtype)])
  if s == "right":
    return _random_frame(key, shape[1], r, kind, g.dtype).T
  return _random_frame(key, shape[0], r, kind, g.dtype)


def compute_dtype(x: Any) -> jnp.dtype:
  """The dtype the low-rank rules compute in for `x`: its own, float32 at least."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _random_frame(key: jax.Array, d: int, r: int, kind: Kind, dtype: jnp.dtype) -> jax.Array:
  """A (d, r) random matrix in `dtype`: N(0, 1/r) entries, or orthonormal columns."""
  x = jax.random.normal(key, (d, r), jnp.float32).astype(dtype)
  if kind == "gaussian":
    return x / jnp.sqrt(jnp.asarray(r, dtype))
  q, rr = jnp.linalg.qr(x)
  return q * jnp.sign(jnp.diagonal(rr))


def project(g: jax.Array, projector: jax.Array, side: str) -> jax.Array:
  """G P^T ("right"), P^T G ("left") or U^T G V ("full").

  Args:
    g: the (m, n) gradient.
    projector: the projector from `make_projector`.
    side: the resolved side: "right", "left" or "full".

  Returns:
    The projected low-rank coordinates.
  """
  if side == "right":
    return g @ projector.T
  if side == "left":
    return projector.T @ g
  u, v = projector[:g.shape[0]], projector[g.shape[0]:]
  return u.T @ g @ v


def project_back(
    x: jax.Array, projector: jax.Array, side: str, shape: tuple[int, int]
) -> jax.Array:
  """The map back to the (m, n) `shape`: X P ("right"), P X ("left") or U X V^T ("full").

  Args:
    x: the low-rank coordinates.
    projector: the projector from `make_projector`.
    side: the resolved side: "right", "left" or "full".
    shape: the (m, n) shape of the full matrix.

  Returns:
    The (m, n) matrix.
  """
  if side == "right":
    return x @ projector
  if side == "left":
    return projector @ x
  u, v = projector[:shape[0]], projector[shape[0]:]
  return u @ x @ v.T


class LowRankProjectorState(NamedTuple):
  """Projectors of every leaf, their step count and the key of the random kinds."""

  count: jax.Array  # int32 scalar: steps taken.
  key: jax.Array  # uint32 raw PRNG key the random projectors derive from.
  projectors: Any  # per leaf: (r, n), (m, r) or (m + n, r) for "full"; `compute_dtype`.


def check_positive_int(name: str, value: int | Callable[..., int] | None) -> None:
  """ValueError naming `name` unless `value` is None (a default), an int >= 1,
  or a per-leaf rule (checked per leaf when it is resolved, see `leaf_period`).

  Recipes call it with their own argument names (`update_proj_gap`, ...), so
  the error names what the user passed.
  """
  if callable(value):
    return
  _checks.check_static_int(name, value)


def check_side(name: str, side: Any) -> None:
  """ValueError naming `name` unless `side` is one of the projection sides.

  Recipes call it with their own argument name (`proj_type`, `proj_side`).
  """
  if side not in _SIDES:
    raise ValueError(f"{name} must be one of {_SIDES}, got {side!r}")


def check_projection_options(rank: Rank, update_every: Period, side: Side, kind: Kind) -> None:
  """ValueError for a rank or period that is not a positive int (or a per-leaf
  rule), or an unknown option."""
  check_positive_int("rank", rank)
  check_positive_int("update_every", update_every)
  check_side("side", side)
  if kind not in _KINDS:
    raise ValueError(f"projector kind must be one of {_KINDS}, got {kind!r}")


def init_projectors(
    params: Any, rank: Rank, side: Side, seed: int, method: str,
    update_every: Period | None = None,
) -> LowRankProjectorState:
  """Zero projectors (replaced at the first step) for every matrix leaf; per-leaf
  ranks are resolved here, and periods (when given) checked leaf by leaf."""

  def zeros(path, p):
    check_matrix(p, jax.tree_util.keystr(path) or "<root>", method)
    shape = matrix_shape(p.shape)
    if update_every is not None:
      leaf_period(update_every, path, shape)
    return jnp.zeros(projector_shape(shape, rank, side, path), compute_dtype(p))

  return LowRankProjectorState(
      count=jnp.zeros([], jnp.int32),
      key=jax.random.key_data(jax.random.key(seed)),
      projectors=jax.tree_util.tree_map_with_path(zeros, params))


def refresh_projectors(
    state: LowRankProjectorState,
    grads: Any,
    rank: Rank,
    update_every: Period,
    side: Side,
    kind: Kind,
) -> tuple[Any, Any]:
  """(projectors for this step, per leaf whether it was redrawn), from the 2-D grads.

  Leaf i is redrawn when count % T_i == 0 (T_i its period); the SVD runs
  only on those steps. Its random projector uses fold_in(fold_in(key, i), count // T_i).
  """
  base = jax.random.wrap_key_data(state.key)
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(grads)
  old = treedef.flatten_up_to(state.projectors)
  new, refreshed = [], []
  for i, ((path, g), p) in enumerate(zip(paths_and_leaves, old)):
    period = leaf_period(update_every, path, g.shape)
    r = effective_rank(g.shape, rank, path)
    refresh = state.count % period == 0
    key = jax.random.fold_in(jax.random.fold_in(base, i), state.count // period)
    new.append(jax.lax.cond(
        refresh,
        lambda g=g, key=key, p=p, r=r: make_projector(g, key, r, side, kind).astype(p.dtype),
        lambda p=p: p))
    refreshed.append(refresh)
  return treedef.unflatten(new), treedef.unflatten(refreshed)


def subspace_zeros(params: Any, rank: Rank, side: Side) -> Any:
  """Zeros shaped like project(G) for every leaf, in its `compute_dtype`: the
  subspace's state shapes."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.zeros(projected_shape(matrix_shape(p.shape), rank, side, path),
                                compute_dtype(p)),
      params)


class Projected(NamedTuple):
  """One step's projection of a tree of updates (see `project_updates`)."""

  grads: Any  # 2-D views of the updates, in their `compute_dtype`.
  projectors: Any  # this step's projectors.
  refreshed: Any  # per leaf, bool scalar: its projector was redrawn this step.
  sides: Any  # per leaf: "left", "right" or "full".
  low: Any  # project(G) per leaf.


def project_updates(
    state: LowRankProjectorState,
    updates: Any,
    rank: Rank,
    update_every: Period,
    side: Side,
    kind: Kind,
) -> Projected:
  """Views `updates` as matrices in their `compute_dtype`, refreshes the projectors, projects."""
  grads = jax.tree.map(lambda u: as_matrix(u).astype(compute_dtype(u)), updates)
  projectors, refreshed = refresh_projectors(state, grads, rank, update_every, side, kind)
  sides = jax.tree.map(lambda g: resolve_side(g.shape, side), grads)
  low = jax.tree.map(project, grads, projectors, sides)
  return Projected(grads, projectors, refreshed, sides, low)


class ProjectLowRankState(NamedTuple):
  """State of `project_low_rank`: the projectors and `inner`'s (subspace) state."""

  projection: LowRankProjectorState
  inner: optax.OptState


def project_low_rank(
    inner: optax.GradientTransformation,
    rank: Rank,
    update_every: Period = 200,
    *,
    kind: Kind = "svd",
    side: Side = "std",
    seed: int = 0,
    scale: Scale = 1.0,
    complement: Complement = None,
    complement_scale: jax.typing.ArrayLike = 1.0,
    reset_on_refresh: bool = False,
) -> optax.GradientTransformation:
  """Runs `inner` on low-rank projections of the matrix updates.

  u = scale * back(inner(project(G))) + complement_scale * c(G - back(project(G)))
  with c = sign (signSGD), identity (SGD) or absent (`complement=None`,
  GaLore). `inner` sees the projected gradients in float32 (or in the
  updates' wider dtype: float64 runs stay float64) and keeps its state in
  the subspace; with `reset_on_refresh` that state is re-initialised
  whenever the projectors are redrawn (FRUGAL's `reset_statistics`),
  otherwise carried across refreshes (GaLore). The complement needs an
  orthonormal projector ("svd" or "orthogonal"). `rank`, `update_every`
  and `scale` may be per-leaf rules fn(path, shape) (module docstring);
  `inner`'s state has one step count, so `reset_on_refresh` needs one
  period for every leaf.

  Args:
    inner: the stateful rule run in the subspace (e.g. Adam).
    rank: target rank r (an int, or a per-leaf rule of the key path and
      (m, n) view, or of the view alone, e.g. FRUGAL's round(rho * side)),
      clamped to [1, min(m, n)] per leaf.
    update_every: refresh period T of the projectors (an int or a per-leaf
      rule). Default 200.
    kind: "svd", "gaussian" or "orthogonal" (module docstring). Default "svd".
    side: side rule (module docstring). Default "std".
    seed: seed of the random projectors. Default 0.
    scale: multiplies inner's mapped-back output (GaLore's alpha); a number
      or a per-leaf rule. Default 1.0.
    complement: state-free rule on the residual: "sign", "sgd" or None. Default None.
    complement_scale: multiplies the complement's output. Default 1.0.
    reset_on_refresh: re-initialise inner's state at each refresh. Default False.

  Returns:
    An `optax.GradientTransformation` acting on matrix leaves only; vectors
    and scalars raise a ValueError (route them with `matrix_labels`).

  References:
    Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", ICML 2024.
    https://arxiv.org/abs/2403.03507 ; official code: https://github.com/jiaweizzhao/GaLore

    Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", MLSys 2025.
    https://arxiv.org/abs/2412.05270 ; official code: https://github.com/zhuhanqing/APOLLO

    Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable
    Training", ICML 2025. https://arxiv.org/abs/2411.07837 ; official code:
    https://github.com/fzmushko/FRUGAL
  """
  check_projection_options(rank, update_every, side, kind)
  if complement not in _COMPLEMENTS:
    raise ValueError(f"complement must be one of {_COMPLEMENTS}, got {complement!r}")
  if complement is not None and kind == "gaussian":
    raise ValueError("a complement needs an orthonormal projector: kind='svd' or 'orthogonal'")
  if reset_on_refresh and callable(update_every):
    raise ValueError("reset_on_refresh needs one update_every for every leaf (inner's state "
                     "has one step count), not a per-leaf rule")
  _checks.check_non_negative("scale", scale)
  _checks.check_non_negative("complement_scale", complement_scale)
  method = "project_low_rank"

  def init_fn(params):
    projection = init_projectors(params, rank, side, seed, method, update_every)
    if callable(scale):  # a per-leaf rule is checked when the state is built
      for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        leaf_scale(scale, path, matrix_shape(p.shape))
    return ProjectLowRankState(projection, inner.init(subspace_zeros(params, rank, side)))

  def update_fn(updates, state, params=None):
    del params
    step = project_updates(state.projection, updates, rank, update_every, side, kind)
    grads, projectors, sides, low = step.grads, step.projectors, step.sides, step.low
    inner_state = state.inner
    if reset_on_refresh:
      fresh = inner.init(subspace_zeros(updates, rank, side))
      refresh = state.projection.count % update_every == 0
      inner_state = jax.tree.map(lambda f, s: jnp.where(refresh, f, s), fresh, inner_state)
    low_updates, inner_state = inner.update(low, inner_state)

    def combine(path, u, g, x, r, p, s):
      out = leaf_scale(scale, path, g.shape) * project_back(x, p, s, g.shape)
      if complement is not None:
        residual = g - project_back(r, p, s, g.shape)
        rule = jnp.sign(residual) if complement == "sign" else residual
        out = out + complement_scale * rule
      return out.reshape(u.shape).astype(u.dtype)

    new_updates = jax.tree_util.tree_map_with_path(
        combine, updates, grads, low_updates, low, projectors, sides)
    projection = state.projection._replace(
        count=optax.safe_increment(state.projection.count), projectors=projectors)
    return new_updates, ProjectLowRankState(projection, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)
