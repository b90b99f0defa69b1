"""FRUGAL's block and coordinate types: AdamW on a rotating subset, a state-free rule on the rest.

FRUGAL splits every projectable gradient into a state-full part, updated by
AdamW whose moments exist only there, and a state-free part, updated by
signSGD (or SGD, or nothing); every `update_gap` = T steps the state-full
part is re-chosen and its AdamW restarts from zero. The official code
(fzmushko/FRUGAL, `frugal/proj_optimizer_templates.py`) has three ways of
choosing it; `gradkit.optimizers.frugal` is the SVD/random-projection one
(`GaloreOptimizer`, an ablation there). This module holds the other two,
which are what the paper's experiments call "FRUGAL":

- `frugal_block` (`BlockOptimizer` / `block_adamw`): the state-full part is
  a set of whole tensors. The pre-training entry point rewrites
  `--optimizer frugal` to `block_adamw`, so this is the FRUGAL of the
  paper's LLaMA-on-C4 pre-training tables (60M-1B at rho = 0.25,
  `scripts/benchmark_c4`; the 7B run uses rho = 0, i.e. signSGD on every
  projectable tensor).
- `frugal_coord` (`CoordOptimizer` / `coord_adamw`): inside every tensor a
  random set of input features (or output features, or entries) is
  state-full. The GLUE entry point rewrites `frugal` to `coord_adamw` with
  `coord_choice=columns`, so this is the FRUGAL of the paper's RoBERTa-base
  GLUE fine-tuning table (`scripts/glue/rank_{0,8}`).

(The paper's table numbers could not be checked here: the tables are named
by their content, from the official README and scripts.)

Shared rule, per step k (0-based) and per "matrix"-labelled leaf with
gradient G; a = `proj_params_lr_scale`, c = `inactive_lr_scale`:

  if k mod T == 0: re-choose the state-full set, zero its moments and
                   restart its bias correction (t = k mod T + 1);
  p <- p - lr (a Adam_t(G_S) + a c rule(G_{not S}) + wd p),

Adam_t is PyTorch-style (eps after the bias-corrected sqrt(v), as optax's
`scale_by_adam`), rule is sign (sign(0) = 0), identity or zero, and decay
uses the plain lr, p <- (1 - lr wd) p - lr d, the official order. Leaves
labelled "embedding", "head" or "vector" get AdamW (the official regular
group, never rotated); leaves labelled "state_free" get a c rule(G) only
(the GLUE runs' "permanent state-free" key/intermediate/output matrices,
density forced to 0). The official reset is unconditional for blocks (all
tensors are deactivated at a switch, also one chosen again) and
`reset_statistics=True` in every coordinate script; neither factory offers
keeping moments (for coordinates the official `False` would apply old
moments to newly drawn, different coordinates).

State layout under jit (static shapes):

- blocks: one packed pair of flat buffers (mu, nu) of `capacity` entries
  each, holding the moments of the active leaves back to back in flatten
  order (offsets = exclusive cumulative sum of the active leaves' sizes,
  recomputed each step from the (L,) `active` flags). `capacity` is the
  largest total size any reachable active set can have: for the cyclic
  orders ("ascending", "descending", "mirror") the maximum over the
  windows of one period (computed from the shapes when the state is
  built), for "random" the sum of the num_active largest leaves. So the
  moments cost 2 * capacity floats: exactly rho of AdamW's matrix state
  when the windows have equal sizes (a LLaMA-like stack whose 7 matrices
  per layer divide the window, as the shipped configs), more when they
  differ, and up to the num_active largest leaves under "random". Full-size
  masked moments (AdamW's memory) were rejected; a per-shape slot layout
  was too (exact for equal windows, but under "random" it needs
  min(count, num_active) slots per shape). The 1-D buffers are not laid out
  like the parameters: under FSDP XLA's propagation places them (the
  parameter-shaped-state sharding promise does not reach them), and
  `quantized(...)` keeps them in float (they are not parameter-shaped).
  Every step computes Adam's arithmetic for every rotating leaf and keeps
  it only where active (the official code computes it for active leaves
  only).
- coordinates: per leaf k = int(rho * side) sorted indices (floor, as the
  official `int(total_length * density)`) and moments on the gathered
  (k, n) / (m, k) / (k,) part, so 2 k n floats per (m, n) matrix for
  "columns" (plus k int32 indices): rho of AdamW's up to rounding.

`gradkit.state_nbytes` of the default recipes, float32, from `jax.eval_shape`,
in MB (ratio to AdamW = gradkit's `adamw`). "small" = a LLaMA-like tree of
4 layers, d 64, ffn 172, vocab 256 (0.23M params); "60M" =
`experiments.models.llama_like_params()` (58.1M); "matrices" = the bytes
the "matrix" leaves own (the state minus the state of the tree without
them); frugal_block in its default "descending" order and with "random";
frugal_coord with "columns"; `frugal` (SVD type) for comparison:

| tree | adamw | frugal_block | block, random | frugal_coord | frugal |
| --- | ---: | ---: | ---: | ---: | ---: |
| small, whole tree | 1.848 | 0.662 (0.358) | 0.883 (0.478) | 0.664 (0.359) | 0.777 (0.420) |
| small, 28 matrices | 1.581 | 0.395 (0.250) | 0.616 (0.390) | 0.397 (0.251) | 0.510 (0.323) |
| 60M, whole tree | 464.6 | 312.8 (0.673) | 341.1 (0.734) | 312.8 (0.673) | 327.5 (0.705) |
| 60M, 56 matrices | 202.4 | 50.6 (0.250) | 78.9 (0.390) | 50.6 (0.250) | 65.3 (0.323) |

(tests/optimizers/test_frugal_subsets.py checks the small tree's rows against
the formulas; `python -m gradkit.experiments.bench_matrix` prints the 60M
rows. The untied embedding and head, 32.8M of the 58.1M parameters, keep
AdamW state, as in the official code, so the whole-tree ratio is 0.67.)

Order of the blocks: L = the number of "matrix" leaves, in `jax.tree`
flatten order (dict keys sorted: name layers so that they sort in depth
order, e.g. zero-padded or integer keys; the official order is module
registration order), num_active = round(L rho) (Python's half-to-even
round; 0 means signSGD everywhere, as in the official code). "descending"
(the pre-training scripts) activates leaves L-1, ..., L-num_active first,
then the next num_active below, wrapping around; "ascending" the same
upwards from 0; "mirror" num_active/2 from the front and their mirror
images L-1-i; "random" a uniformly random subset per refresh (the official
torch global RNG is replaced by `fold_in(key(seed), refresh index)`).

Coordinates: "columns" are the official columns of a PyTorch (out, in)
weight, i.e. input features: rows of gradkit's (fan_in, out) matrix view of
a Flax kernel; "rows" are output features (view columns); "randk" random
entries. Indices are redrawn for every leaf at every refresh from
fold_in(fold_in(key(seed), leaf index), refresh index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradkit import _checks
from gradkit.optimizers._recipe import LabelsOrFn, MaskOrFn, descend, partitioned_recipe
from gradkit.optimizers.zeroth_order import matrices_only
from gradkit.registry import register
from gradkit.transforms.low_rank import check_positive_int
from gradkit.transforms.matrix_view import as_matrix, check_matrix, matrix_shape

DENSITY = 0.25  # official class, CLI and pre-training default
BLOCK_UPDATE_GAP = 200  # official class default and pre-training scripts (60M-1B)
COORD_UPDATE_GAP = 500  # GLUE scripts
BLOCK_ORDERS = ("random", "ascending", "descending", "mirror")
COORD_CHOICES = ("columns", "rows", "randk")
INACTIVE_RULES = ("sign_sgd", "sgd", "no")

BlockOrder = Literal["random", "ascending", "descending", "mirror"]
CoordChoice = Literal["columns", "rows", "randk"]
InactiveRule = Literal["sign_sgd", "sgd", "no"]


class FrugalBlocksState(NamedTuple):
  """Step count, key, active flags and the packed moments of the active leaves."""

  count: jax.Array  # int32 scalar: steps taken.
  key: jax.Array  # uint32 raw PRNG key of the "random" order.
  # None (all three) when no leaf can be state-full (num_active 0, or only empty leaves).
  active: jax.Array | None  # (L,) bool: which leaves (flatten order) are state-full.
  mu: jax.Array | None  # (capacity,) first moments of the active leaves, back to back.
  nu: jax.Array | None  # (capacity,) second moments, same layout.


class FrugalCoordinatesState(NamedTuple):
  """Step count, key, and per leaf the state-full indices and their moments."""

  count: jax.Array  # int32 scalar: steps taken.
  key: jax.Array  # uint32 raw PRNG key the indices derive from.
  # Per leaf; None for a leaf with k = 0 (no zero-size arrays: orbax cannot save them).
  indices: Any  # per leaf (k,) int32, sorted.
  mu: Any  # per leaf (k, n) "columns", (m, k) "rows", (k,) "randk".
  nu: Any  # same shapes.


def _check_options(density, update_gap, inactive_update_rule, b1, b2, eps, a, c) -> float:
  rho = _checks.check_static_fraction("density", DENSITY if density is None else density)
  check_positive_int("update_gap", update_gap)
  if inactive_update_rule not in INACTIVE_RULES:
    raise ValueError(
        f"inactive_update_rule must be one of {INACTIVE_RULES}, got {inactive_update_rule!r}")
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("eps", eps)
  _checks.check_non_negative("proj_params_lr_scale", a)
  _checks.check_non_negative("inactive_lr_scale", c)
  return float(rho)


def _compute_dtype(x) -> jnp.dtype:
  return jnp.promote_types(x.dtype, jnp.float32)


def _state_free_rule(g: jax.Array, rule: str, scale: jax.typing.ArrayLike) -> jax.Array:
  """scale * sign(g), scale * g or 0 (g in its compute dtype)."""
  if rule == "no":
    return jnp.zeros_like(g)
  return scale * (jnp.sign(g) if rule == "sign_sgd" else g)


def _adam(g, mu, nu, t, b1, b2, eps):
  """(new mu, new nu, bias-corrected Adam direction) at step t of the current set."""
  t = t.astype(g.dtype)
  mu = b1 * mu + (1 - b1) * g
  nu = b2 * nu + (1 - b2) * g * g
  m_hat = mu / (1 - b1 ** t)
  v_hat = nu / (1 - b2 ** t)
  return mu, nu, m_hat / (jnp.sqrt(v_hat) + eps)


def num_active_blocks(num_blocks: int, density: float) -> int:
  """The official round(L * rho) (Python's half-to-even round).

  Args:
    num_blocks: L, the number of rotating leaves.
    density: rho in [0, 1].

  Returns:
    The number of state-full leaves per refresh.
  """
  return round(num_blocks * density)


def block_windows(num_blocks: int, num_active: int, order: str) -> list[tuple[int, ...]]:
  """The active sets of a cyclic order at refreshes 0, 1, ..., over one period.

  The official `BlockOptimizer._update_states` state machine: "ascending"
  starts at 0 and moves up by num_active, "descending" starts at L - 1 and
  moves down, "mirror" takes num_active / 2 leaves from the front window
  and their mirror images L - 1 - i, all wrapping around. Refresh r uses
  window r mod (the returned length).

  Args:
    num_blocks: L.
    num_active: leaves per window (even for "mirror").
    order: "ascending", "descending" or "mirror".

  Returns:
    One tuple of leaf indices per refresh of the period, in activation order.
  """
  if num_active == 0:
    return [()]
  half, length = num_active // 2, num_blocks // 2
  start = num_blocks - 1 if order == "descending" else 0
  windows, seen = [], set()
  while start not in seen:
    seen.add(start)
    if order == "ascending":
      windows.append(tuple((start + j) % num_blocks for j in range(num_active)))
      start = (start + num_active) % num_blocks
    elif order == "descending":
      windows.append(tuple((start - j) % num_blocks for j in range(num_active)))
      start = (start - num_active) % num_blocks
    else:
      front = [(start + j) % length for j in range(half)]
      windows.append(tuple(i for f in front for i in (f, num_blocks - 1 - f)))
      start = (start + half) % length
  return windows


def block_capacity(sizes: Sequence[int], num_active: int, order: str) -> int:
  """Entries of each packed moment buffer: the largest active set's total size.

  Args:
    sizes: sizes of the L rotating leaves, in flatten order.
    num_active: leaves per refresh.
    order: one of `BLOCK_ORDERS`.

  Returns:
    The maximum over the windows of a period (cyclic orders), or the sum of
    the num_active largest sizes ("random").
  """
  if num_active == 0:
    return 0
  if order == "random":
    return int(sum(sorted(sizes, reverse=True)[:num_active]))
  return max(int(sum(sizes[i] for i in w)) for w in block_windows(len(sizes), num_active, order))


def scale_by_frugal_blocks(
    density: float = DENSITY,
    update_gap: int = BLOCK_UPDATE_GAP,
    block_order: BlockOrder = "descending",
    inactive_update_rule: InactiveRule = "sign_sgd",
    inactive_lr_scale: jax.typing.ArrayLike = 1.0,
    proj_params_lr_scale: jax.typing.ArrayLike = 1.0,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    seed: int = 0,
) -> optax.GradientTransformation:
  """FRUGAL's block-type direction: Adam on num_active whole leaves, the state-free rule elsewhere.

  Every leaf it sees is a rotating block (route others with labels). At
  steps k with k mod T == 0 the active set is re-chosen by `block_order`
  and the packed moments are zeroed (bias correction restarts, t = k mod T
  + 1). Active leaves get a * Adam_t(G), the others a * c * rule(G). The
  state layout and its memory are described in the module docstring.

  Args:
    density: rho; num_active = round(L rho) (static). Default 0.25.
    update_gap: T, steps between switches (static). Default 200.
    block_order: "random", "ascending", "descending" or "mirror" (static). Default "descending".
    inactive_update_rule: "sign_sgd", "sgd" or "no" for inactive leaves. Default "sign_sgd".
    inactive_lr_scale: c, the state-free step relative to the state-full one. Default 1.0.
    proj_params_lr_scale: a, scales both parts. Default 1.0.
    b1: Adam's first-moment decay rate. Default 0.9.
    b2: Adam's second-moment decay rate. Default 0.999.
    eps: Adam's eps, added after bias correction. Default 1e-8.
    seed: seed of the "random" order (carried in the state). Default 0.

  Returns:
    An `optax.GradientTransformation` with a `FrugalBlocksState`.

  References:
    Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable
    Training", ICML 2025. https://arxiv.org/abs/2411.07837 ; official code:
    https://github.com/fzmushko/FRUGAL
  """
  if block_order not in BLOCK_ORDERS:
    raise ValueError(f"block_order must be one of {BLOCK_ORDERS}, got {block_order!r}")
  method = "scale_by_frugal_blocks"

  def layout(leaves):
    """(sizes, num_active, capacity, windows or None, which leaves can ever be active)."""
    sizes = [int(x.size) for x in leaves]
    k = num_active_blocks(len(sizes), density)
    if block_order == "mirror" and k % 2:
      raise ValueError(
          f"block_order='mirror' needs an even number of active blocks, got round({len(sizes)} "
          f"* {density}) = {k}; change density")
    capacity = block_capacity(sizes, k, block_order)
    if block_order == "random":
      windows, reachable = None, set(range(len(sizes)) if k else ())
    else:
      windows = block_windows(len(sizes), k, block_order)
      reachable = {i for w in windows for i in w}
    rotating = [i in reachable and sizes[i] > 0 for i in range(len(sizes))]
    return sizes, k, capacity, windows, rotating

  def buffer_dtype(leaves):
    return jnp.result_type(*[x.dtype for x in leaves]) if leaves else jnp.float32

  def init_fn(params):
    paths_and_leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    for path, x in paths_and_leaves:
      check_matrix(x, jax.tree_util.keystr(path) or "<root>", method)
    leaves = [x for _, x in paths_and_leaves]
    _, _, capacity, _, rotating = layout(leaves)
    key = jax.random.key_data(jax.random.key(seed))
    if not any(rotating):  # no zero-size buffers: orbax cannot save them
      return FrugalBlocksState(jnp.zeros([], jnp.int32), key, None, None, None)
    dtype = buffer_dtype(leaves)
    return FrugalBlocksState(
        count=jnp.zeros([], jnp.int32), key=key,
        active=jnp.zeros((len(leaves),), bool),
        mu=jnp.zeros((capacity,), dtype),
        nu=jnp.zeros((capacity,), dtype))

  def refresh(state, num_blocks, k, windows):
    index = state.count // update_gap
    if windows is None:
      key = jax.random.fold_in(jax.random.wrap_key_data(state.key), index)
      chosen = jax.random.permutation(key, num_blocks)[:k]
      active = jnp.zeros((num_blocks,), bool).at[chosen].set(True)
    else:
      table = np.zeros((len(windows), num_blocks), bool)
      for r, w in enumerate(windows):
        table[r, list(w)] = True
      active = jnp.asarray(table)[index % len(windows)]
    return state._replace(active=active, mu=jnp.zeros_like(state.mu),
                          nu=jnp.zeros_like(state.nu))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    sizes, k, _, windows, rotating = layout(leaves)
    scale_free = proj_params_lr_scale * inactive_lr_scale
    if not any(rotating):
      out = [_state_free_rule(g.astype(_compute_dtype(g)), inactive_update_rule, scale_free)
             .astype(g.dtype) for g in leaves]
      return treedef.unflatten(out), state._replace(count=optax.safe_increment(state.count))
    state = jax.lax.cond(state.count % update_gap == 0,
                         lambda s: refresh(s, len(leaves), k, windows), lambda s: s, state)
    t = state.count % update_gap + 1
    owned = jnp.where(state.active, jnp.asarray(sizes, jnp.int32), 0)
    offsets = jnp.cumsum(owned) - owned
    mu, nu, out = state.mu, state.nu, []
    for i, g in enumerate(leaves):
      g32 = g.astype(_compute_dtype(g))
      free = _state_free_rule(g32, inactive_update_rule, scale_free)
      if not rotating[i]:
        out.append(free.astype(g.dtype))
        continue
      start, on = (offsets[i],), state.active[i]
      m_old = jax.lax.dynamic_slice(mu, start, (sizes[i],)).reshape(g.shape).astype(g32.dtype)
      v_old = jax.lax.dynamic_slice(nu, start, (sizes[i],)).reshape(g.shape).astype(g32.dtype)
      m_new, v_new, direction = _adam(g32, m_old, v_old, t, b1, b2, eps)
      # An inactive leaf writes back what it read: a no-op wherever its offset points.
      mu = jax.lax.dynamic_update_slice(
          mu, jnp.where(on, m_new, m_old).ravel().astype(mu.dtype), start)
      nu = jax.lax.dynamic_update_slice(
          nu, jnp.where(on, v_new, v_old).ravel().astype(nu.dtype), start)
      out.append(jnp.where(on, proj_params_lr_scale * direction, free).astype(g.dtype))
    return treedef.unflatten(out), state._replace(
        count=optax.safe_increment(state.count), mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def coordinate_count(shape: tuple[int, ...], density: float, coord_choice: str) -> int:
  """k, the state-full features (or entries) of a leaf: the official int(total * rho).

  Args:
    shape: the leaf's shape (ndim >= 2; its (m, n) matrix view is used).
    density: rho in [0, 1].
    coord_choice: "columns" (m input features), "rows" (n output
      features) or "randk" (m n entries).

  Returns:
    floor(total * rho), as Python's int() of the float product.
  """
  m, n = matrix_shape(shape)
  total = {"columns": m, "rows": n, "randk": m * n}[coord_choice]
  return int(total * density)


def _moment_shape(shape, k, coord_choice):
  m, n = matrix_shape(shape)
  return {"columns": (k, n), "rows": (m, k), "randk": (k,)}[coord_choice]


def scale_by_frugal_coordinates(
    density: float = DENSITY,
    update_gap: int = COORD_UPDATE_GAP,
    coord_choice: CoordChoice = "columns",
    inactive_update_rule: InactiveRule = "sign_sgd",
    inactive_lr_scale: jax.typing.ArrayLike = 0.1,
    proj_params_lr_scale: jax.typing.ArrayLike = 1.0,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    seed: int = 0,
) -> optax.GradientTransformation:
  """FRUGAL's coordinate-type direction: Adam on k random features per leaf, a state-free rest.

  Per leaf (its (m, n) matrix view) k = `coordinate_count` indices are
  drawn at steps k mod T == 0 (sorted, without replacement), and the
  moments of the gathered part are zeroed (bias correction restarts).
  Chosen entries get a * Adam_t(G_S) scattered back, the others
  a * c * rule(G with the chosen entries zeroed).

  Args:
    density: rho; k = int(rho * side) per leaf (static). Default 0.25.
    update_gap: T, steps between redraws (static). Default 500.
    coord_choice: "columns" (input features: rows of the Flax-layout view),
      "rows" (output features) or "randk" (entries) (static). Default "columns".
    inactive_update_rule: "sign_sgd", "sgd" or "no" for the rest. Default "sign_sgd".
    inactive_lr_scale: c, the state-free step relative to the state-full one. Default 0.1.
    proj_params_lr_scale: a, scales both parts. Default 1.0.
    b1: Adam's first-moment decay rate. Default 0.9.
    b2: Adam's second-moment decay rate. Default 0.999.
    eps: Adam's eps, added after bias correction. Default 1e-8.
    seed: seed of the index draws (carried in the state). Default 0.

  Returns:
    An `optax.GradientTransformation` with a `FrugalCoordinatesState`.

  References:
    Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable
    Training", ICML 2025. https://arxiv.org/abs/2411.07837 ; official code:
    https://github.com/fzmushko/FRUGAL
  """
  if coord_choice not in COORD_CHOICES:
    raise ValueError(f"coord_choice must be one of {COORD_CHOICES}, got {coord_choice!r}")
  method = "scale_by_frugal_coordinates"

  def init_fn(params):
    def zeros(path, p):
      check_matrix(p, jax.tree_util.keystr(path) or "<root>", method)
      k = coordinate_count(p.shape, density, coord_choice)
      return jnp.zeros(_moment_shape(p.shape, k, coord_choice), p.dtype) if k else None

    def no_indices(p):
      k = coordinate_count(p.shape, density, coord_choice)
      return jnp.zeros((k,), jnp.int32) if k else None

    mu = jax.tree_util.tree_map_with_path(zeros, params)
    return FrugalCoordinatesState(
        count=jnp.zeros([], jnp.int32),
        key=jax.random.key_data(jax.random.key(seed)),
        indices=jax.tree.map(no_indices, params),
        mu=mu, nu=jax.tree.map(jnp.zeros_like, mu))

  def draw(key, shape, k):
    m, n = matrix_shape(shape)
    total = {"columns": m, "rows": n, "randk": m * n}[coord_choice]
    return jnp.sort(jax.random.permutation(key, total)[:k]).astype(jnp.int32)

  def refresh(state, treedef, shapes):
    base = jax.random.wrap_key_data(state.key)
    index = state.count // update_gap
    drawn = [None if idx is None else
             draw(jax.random.fold_in(jax.random.fold_in(base, i), index), shape, idx.shape[0])
             for i, (idx, shape) in enumerate(zip(treedef.flatten_up_to(state.indices), shapes))]
    return state._replace(indices=treedef.unflatten(drawn),
                          mu=jax.tree.map(jnp.zeros_like, state.mu),
                          nu=jax.tree.map(jnp.zeros_like, state.nu))

  def gather(x, idx):
    if coord_choice == "columns":
      return x[idx, :]
    if coord_choice == "rows":
      return x[:, idx]
    return x.ravel()[idx]

  def scatter(x, idx, values):
    if coord_choice == "columns":
      return x.at[idx, :].set(values)
    if coord_choice == "rows":
      return x.at[:, idx].set(values)
    return x.ravel().at[idx].set(values).reshape(x.shape)

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    shapes = [g.shape for g in leaves]
    scale_free = proj_params_lr_scale * inactive_lr_scale
    if any(coordinate_count(shape, density, coord_choice) for shape in shapes):
      state = jax.lax.cond(state.count % update_gap == 0,
                           lambda s: refresh(s, treedef, shapes), lambda s: s, state)
    t = state.count % update_gap + 1
    indices = treedef.flatten_up_to(state.indices)
    mus, nus = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
    out, new_mu, new_nu = [], [], []
    for g, idx, mu, nu in zip(leaves, indices, mus, nus):
      view = as_matrix(g.astype(_compute_dtype(g)))
      if idx is None:
        out.append(_state_free_rule(view, inactive_update_rule, scale_free)
                   .reshape(g.shape).astype(g.dtype))
        new_mu.append(mu)
        new_nu.append(nu)
        continue
      m, v, direction = _adam(gather(view, idx), mu.astype(view.dtype), nu.astype(view.dtype),
                              t, b1, b2, eps)
      rest = scatter(view, idx, 0.0)
      full = scatter(jnp.zeros_like(view), idx, proj_params_lr_scale * direction)
      full = full + _state_free_rule(rest, inactive_update_rule, scale_free)
      out.append(full.reshape(g.shape).astype(g.dtype))
      new_mu.append(m.astype(mu.dtype))
      new_nu.append(v.astype(nu.dtype))
    return treedef.unflatten(out), state._replace(
        count=optax.safe_increment(state.count), mu=treedef.unflatten(new_mu),
        nu=treedef.unflatten(new_nu))

  return optax.GradientTransformation(init_fn, update_fn)


def _recipe(matrix_rule, inactive_update_rule, scale_free, b1, b2, eps, learning_rate,
            weight_decay, mask, param_labels):
  def branch(direction):
    return descend(direction, learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)

  adamw = branch(optax.scale_by_adam(b1, b2, eps))
  state_free = branch(optax.stateless(
      lambda updates, params=None: jax.tree.map(
          lambda g: _state_free_rule(g.astype(_compute_dtype(g)), inactive_update_rule,
                                     scale_free).astype(g.dtype), updates)))
  return partitioned_recipe(
      {"matrix": branch(matrix_rule), "embedding": adamw, "head": adamw, "vector": adamw,
       "state_free": state_free}, param_labels)


@register("frugal_block")
def frugal_block(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    density: float | None = None,
    update_gap: int | None = None,
    block_order: BlockOrder = "descending",
    inactive_update_rule: InactiveRule = "sign_sgd",
    inactive_lr_scale: float = 1.0,
    proj_params_lr_scale: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    param_labels: LabelsOrFn | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """FRUGAL (block type, the paper's pre-training FRUGAL): AdamW on rotating whole matrices.

  `scale_by_frugal_blocks` on the "matrix" leaves (rotating blocks, flatten
  order), AdamW on "embedding", "head" and "vector" leaves, the state-free
  rule alone on "state_free" leaves. Defaults are the official pre-training
  scripts' (scripts/benchmark_c4, 60M-1B): rho 0.25, T 200, "descending",
  sign_sgd with inactive_lr_scale 1, proj_params_lr_scale 1, lr 1e-3
  (cosine with warm-up there: pass a schedule), betas (0.9, 0.999), eps
  1e-8, weight decay 0 (the class default is 0.01, applied to every leaf;
  the class and CLI default order is "random"). `density` and `update_gap`
  are static (None means the default, which `optax.inject_hyperparams`
  leaves alone).

  Args:
    learning_rate: float or optax schedule. Default 1e-3.
    density: rho in [0, 1], the fraction of matrices kept state-full (static;
      None means 0.25). Default None.
    update_gap: T, steps between switches (static; None means 200). Default None.
    block_order: "random", "ascending", "descending" or "mirror" (static). Default "descending".
    inactive_update_rule: "sign_sgd", "sgd" or "no" for inactive matrices. Default "sign_sgd".
    inactive_lr_scale: c, the state-free step relative to the state-full one. Default 1.0.
    proj_params_lr_scale: a, scales both parts of a matrix's step. Default 1.0.
    b1: Adam's first-moment decay rate. Default 0.9.
    b2: Adam's second-moment decay rate. Default 0.999.
    eps: Adam's eps, added after bias correction (PyTorch placement). Default 1e-8.
    weight_decay: decoupled decay with the plain lr. Default 0.0.
    mask: which leaves decay (tree or callable). Default None (every leaf, as the official code).
    param_labels: label tree or callable with labels "matrix", "embedding",
      "head", "vector", "state_free" (None means `matrix_labels`). Default None.
    seed: seed of the "random" order (carried in the state). Default 0.

  References:
    Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable
    Training", ICML 2025. https://arxiv.org/abs/2411.07837 ; official code:
    https://github.com/fzmushko/FRUGAL

  Example:
    >>> import jax.numpy as jnp
    >>> import gradkit
    >>> params = {"head": {"kernel": jnp.ones((8, 2))},
    ...           **{f"layer_{i}": {"kernel": jnp.ones((8, 8))} for i in range(4)}}
    >>> tx = gradkit.create("frugal_block")  # one of the four 8 x 8 kernels is state-full
    >>> gradkit.state_nbytes(tx.init(params))  # 2 x 64 + the head's 2 x 16 floats, counters, key
    668
  """
  rho = _check_options(density, update_gap, inactive_update_rule, b1, b2, eps,
                       proj_params_lr_scale, inactive_lr_scale)
  matrix_rule = scale_by_frugal_blocks(
      rho, BLOCK_UPDATE_GAP if update_gap is None else update_gap, block_order,
      inactive_update_rule, inactive_lr_scale, proj_params_lr_scale, b1, b2, eps, seed)
  return _recipe(matrix_rule, inactive_update_rule, proj_params_lr_scale * inactive_lr_scale,
                 b1, b2, eps, learning_rate, weight_decay, mask, param_labels)


@register("frugal_coord")
def frugal_coord(
    learning_rate: optax.ScalarOrSchedule = 1e-4,
    density: float | None = None,
    update_gap: int | None = None,
    coord_choice: CoordChoice = "columns",
    inactive_update_rule: InactiveRule = "sign_sgd",
    inactive_lr_scale: float = 0.1,
    proj_params_lr_scale: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.1,
    mask: MaskOrFn = None,
    param_labels: LabelsOrFn | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """FRUGAL (coordinate type, the paper's GLUE fine-tuning FRUGAL): AdamW on random features.

  `scale_by_frugal_coordinates` on the "matrix" leaves, AdamW on
  "embedding", "head" and "vector" leaves, the state-free rule alone on
  "state_free" leaves. Defaults are the official GLUE scripts'
  (scripts/glue): "columns", T 500, sign_sgd with inactive_lr_scale 0.1,
  proj_params_lr_scale 1, betas (0.9, 0.999), eps 1e-8, weight decay 0.1
  on matrices only (the Trainer's no-decay list is biases and LayerNorm
  weights); lr 1e-4, the median of the scripts' per-task rates (5e-5 to
  5e-4, linear decay, 6% warm-up); rho 0.25, the class and CLI default
  (the GLUE runs set rho = rank / 768 with rank 8 or 0, on the query and
  value matrices only, the other encoder matrices "state_free", embeddings
  frozen). `density` and `update_gap` are static (None means the default).

  Args:
    learning_rate: float or optax schedule. Default 1e-4.
    density: rho in [0, 1], the state-full fraction of each matrix's
      features (static; None means 0.25). Default None.
    update_gap: T, steps between redraws (static; None means 500). Default None.
    coord_choice: "columns" (input features), "rows" (output features) or
      "randk" (entries) (static). Default "columns".
    inactive_update_rule: "sign_sgd", "sgd" or "no" for the rest. Default "sign_sgd".
    inactive_lr_scale: c, the state-free step relative to the state-full one. Default 0.1.
    proj_params_lr_scale: a, scales both parts of a matrix's step. Default 1.0.
    b1: Adam's first-moment decay rate. Default 0.9.
    b2: Adam's second-moment decay rate. Default 0.999.
    eps: Adam's eps, added after bias correction (PyTorch placement). Default 1e-8.
    weight_decay: decoupled decay with the plain lr. Default 0.1.
    mask: which leaves decay (tree or callable). Default None (`matrices_only`:
      leaves with ndim >= 2, as the GLUE Trainer's groups).
    param_labels: label tree or callable with labels "matrix", "embedding",
      "head", "vector", "state_free" (None means `matrix_labels`). Default None.
    seed: seed of the index draws (carried in the state). Default 0.

  References:
    Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable
    Training", ICML 2025. https://arxiv.org/abs/2411.07837 ; official code:
    https://github.com/fzmushko/FRUGAL
  """
  rho = _check_options(density, update_gap, inactive_update_rule, b1, b2, eps,
                       proj_params_lr_scale, inactive_lr_scale)
  matrix_rule = scale_by_frugal_coordinates(
      rho, COORD_UPDATE_GAP if update_gap is None else update_gap, coord_choice,
      inactive_update_rule, inactive_lr_scale, proj_params_lr_scale, b1, b2, eps, seed)
  return _recipe(matrix_rule, inactive_update_rule, proj_params_lr_scale * inactive_lr_scale,
                 b1, b2, eps, learning_rate, weight_decay,
                 matrices_only if mask is None else mask, param_labels)
