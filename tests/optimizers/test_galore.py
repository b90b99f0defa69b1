"""Oracles for `galore` and `natural_galore`.

The sheet's numpy float64 steps (lr = 1, wd = 0), optax.contrib's GaLore on a
square matrix with swapped dimension numbers, the subspace invariant, a
float64 numpy port of the official Natural GaLore step (SVD factors, dense
Fisher solve, Hugging Face Adam, U N V^T) and of the official GaLore step
with per-layer (per parameter group) rank, period and scale, written here.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import GaLoreDimensionNumbers, scale_by_galore

import gradkit
from gradkit.optimizers.galore import galore, natural_galore
from gradkit.transforms.low_rank import ProjectLowRankState
from trajectories import run_updates_and_state


def _find_subspace(state) -> ProjectLowRankState:
  is_node = lambda x: isinstance(x, ProjectLowRankState)  # noqa: E731
  (found,) = [x for x in jax.tree.leaves(state, is_leaf=is_node) if is_node(x)]
  return found


def _updates(tx, params, grads_seq):
  update, state, out = jax.jit(tx.update), tx.init(params), []
  for g in grads_seq:
    u, state = update(g, state, params)
    out.append(jax.device_get(u))
  return out, state


def _w(g):
  return {"w": jnp.asarray(g, jnp.float32)}


def test_sheet_oracle_rank_one_tall():
  tx = galore(learning_rate=1.0, rank=1)
  (u,), _ = _updates(tx, _w(np.zeros((3, 2))), [_w([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])])
  # float32 bias correction (as in optax) costs ~7e-6 relative at t = 1.
  np.testing.assert_allclose(u["w"], [[-0.2499974, 0], [0, 0], [0, 0]], rtol=2e-5, atol=1e-7)


def test_sheet_oracle_two_steps_tall_rank_two():
  g1 = [[1, 2, 0], [0, -1, 3], [2, 0, 1], [-1, 1, 1]]
  g2 = [[0, 1, 1], [2, -1, 0], [1, 1, 1], [0, -2, 1]]
  out, _ = _updates(galore(learning_rate=1.0, rank=2), _w(np.zeros((4, 3))), [_w(g1), _w(g2)])
  np.testing.assert_allclose(out[0]["w"], [
      [-0.1680742, -0.2303309, 0.2090191], [0.1680543, 0.2303204, -0.209034],
      [-0.2232253, -0.0761346, -0.2633785], [0.1679758, 0.230254, -0.2090333]],
      rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(out[1]["w"], [
      [-0.1771753, -0.1224567, -0.063006], [-0.1232446, -0.0191135, -0.1993788],
      [-0.2214585, -0.0781359, -0.2551632], [0.1271667, 0.1903075, -0.195903]],
      rtol=2e-5, atol=1e-6)


def test_square_matrix_matches_optax_contrib_galore_with_swapped_dimensions():
  grads = [_w([[2, 1, 0], [1, 3, 1], [0, 1, 4]]), _w([[1, 0, 1], [0, 2, 0], [1, -1, 1]])]
  params = _w(np.zeros((3, 3)))
  ours, _ = _updates(galore(learning_rate=1.0, rank=2, eps=1e-12), params, grads)

  def contrib(dims):
    return optax.chain(
        scale_by_galore(rank=2, scale=0.25, base_optimizer=optax.scale_by_adam(eps=1e-12),
                        weight_dimension_numbers=dims),
        optax.scale(-1.0))

  swapped, _ = _updates(contrib({"w": GaLoreDimensionNumbers(1, 0)}), params, grads)
  default, _ = _updates(contrib(None), params, grads)
  sheet = ([[-0.1971688, -0.2886751, -0.0528312], [-0.1971688, -0.2886751, -0.0528312],
            [0.0915064, 0, -0.3415064]],
           [[-0.1495458, -0.2410521, -0.1004542], [-0.1879746, -0.270968, -0.0387678],
            [0.0861262, 0.0175352, -0.2735204]])
  for a, b, s in zip(ours, swapped, sheet):
    # optax computes 1 - b2^t in float32 (1 - 0.999 is 9.99987e-4 there: 6.4e-6
    # of the step); gradkit's bias corrections avoid that cancellation.
    np.testing.assert_allclose(a["w"], b["w"], rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(a["w"], s, rtol=2e-6, atol=1e-7)
  assert np.max(np.abs(ours[0]["w"] - default[0]["w"])) > 1e-2


@pytest.mark.parametrize("shape", [(8, 5), (5, 8)])
def test_updates_stay_in_the_projector_subspace_until_the_refresh(shape):
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=shape) for _ in range(4)]
  out, _ = _updates(galore(learning_rate=1.0, rank=2, update_proj_gap=3),
                    _w(np.zeros(shape)), [_w(g) for g in grads])
  tall = shape[0] >= shape[1]

  def off_subspace(update, g):
    u, _, vt = np.linalg.svd(g)
    if tall:
      return update @ (np.eye(shape[1]) - vt[:2].T @ vt[:2])
    return (np.eye(shape[0]) - u[:, :2] @ u[:, :2].T) @ update

  for step in range(3):
    assert np.max(np.abs(off_subspace(np.asarray(out[step]["w"], np.float64), grads[0]))) < 1e-5
  # Step 4 (k = 3) uses the projector of its own gradient, not the first one.
  assert np.max(np.abs(off_subspace(np.asarray(out[3]["w"], np.float64), grads[3]))) < 1e-5
  assert np.max(np.abs(off_subspace(np.asarray(out[3]["w"], np.float64), grads[0]))) > 1e-2


def _hf_adam_step(m, v, g, t, b1=0.9, b2=0.999, eps=1e-6):
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  return m, v, np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)


def _natural_galore_reference(grads, rank, history, lam=1e-3, alpha=0.25):
  """Official SubSpaceAdamW (natural_galore) updates in float64, lr = 1, wd = 0, no refresh."""
  u, _, vt = np.linalg.svd(grads[0], full_matrices=False)
  left, right = u[:, :rank], vt[:rank].T
  kept, m, v, out = [], 0.0, 0.0, []
  for t, g in enumerate(grads, start=1):
    core = (left.T @ g @ right).reshape(-1)
    kept = (kept + [core])[-history:]
    h = np.stack(kept, axis=1)
    s = np.eye(h.shape[1]) + h.T @ h / lam
    z = np.linalg.solve(s, h.T @ core)
    natural = (core / lam - h @ z / lam**2).reshape(rank, rank)
    m, v, step = _hf_adam_step(m, v, natural, t)
    out.append(-alpha * left @ step @ right.T)
  return out


def test_natural_galore_first_steps_by_hand():
  # The first gradient's top-2 singular vectors are coordinate axes (rows
  # {0, 2}, columns {1, 3}), so float32 reproduces the factors exactly: with
  # a generic first gradient the first core's off-diagonal entries are
  # rounding noise (exactly 0 in float64) that Adam's per-coordinate
  # normalisation turns into steps of relative size ~1e-3.
  rng = np.random.default_rng(0)
  first = np.zeros((6, 4))
  first[0, 1], first[2, 3], first[4, 0] = 3.0, -2.0, 0.5
  grads = [first] + [rng.normal(size=(6, 4)) for _ in range(4)]
  tx = natural_galore(learning_rate=1.0, rank=2, natural_history=3)
  out, _ = _updates(tx, _w(np.zeros((6, 4))), [_w(g) for g in grads])
  want = _natural_galore_reference(grads, rank=2, history=3)
  for step, (a, b) in enumerate(zip(out, want)):
    np.testing.assert_allclose(a["w"], b, rtol=1e-4, atol=1e-6, err_msg=f"step {step + 1}")
  # Five steps with s = 3: the oracle depends on the eviction.
  unevicted = _natural_galore_reference(grads, rank=2, history=5)[-1]
  assert np.max(np.abs(unevicted - want[-1])) > 1e-3


@pytest.mark.parametrize("shape", [(12, 7), (7, 12)])
def test_galore_state_is_projector_plus_low_rank_moments(shape):
  m, n, r = *shape, 3
  nbytes = gradkit.state_nbytes(galore(rank=r).init({"w": jnp.zeros(shape)}))
  floats = r * min(m, n) + 2 * r * max(m, n)  # P on the smaller side; M, V keep the larger
  assert 4 * floats <= nbytes <= 4 * floats + 64


def test_natural_galore_state_is_the_sheet_memory_formula():
  m, n, r, s = 12, 7, 3, 5
  tx = natural_galore(rank=r, natural_history=s)
  nbytes = gradkit.state_nbytes(tx.init({"w": jnp.zeros((m, n))}))
  floats = (m + n) * r + (2 + s) * r * r  # U, V; Adam's M, V; the s x r^2 history
  # Beyond the float32 arrays: a few int32 step counts and the projector key.
  assert 4 * floats <= nbytes <= 4 * floats + 64


def test_fallback_leaves_get_hf_adam_with_the_same_rate():
  rng = np.random.default_rng(1)
  params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3), "s": jnp.zeros(())}
  grads = [{"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=3), jnp.float32),
            "s": jnp.asarray(rng.normal(), jnp.float32)} for _ in range(4)]
  for factory in (galore, natural_galore):
    history, _ = run_updates_and_state(factory(learning_rate=0.1, weight_decay=0.5),
                                       params, grads)
    for k in ("b", "s"):
      p, m, v = 0.0, 0.0, 0.0
      for t, g in enumerate(grads, start=1):
        m, v, step = _hf_adam_step(m, v, np.asarray(g[k], np.float64), t)
        p = p - 0.1 * (step + 0.5 * p)
        np.testing.assert_allclose(history[t - 1][k], p, rtol=1e-5, atol=1e-7)


def _galore_first_step(g, rank, lr, alpha=0.25):
  """Official GaLore step 1 on a tall (m >= n) matrix: P = top-r right singular
  vectors, R = G P^T, HF Adam's first step on R, -lr alpha N P (wd 0)."""
  p = np.linalg.svd(g, full_matrices=False)[2][:rank]
  _, _, step = _hf_adam_step(0.0, 0.0, g @ p.T, 1)
  return -lr * alpha * step @ p


@pytest.mark.parametrize("name", ["galore", "natural_galore"])
def test_bf16_conv_kernel_follows_the_rule_on_its_matrix_view(name):
  """A (3, 3, 4, 8) bf16 kernel is the (36, 8) matrix G (leading axes merged):
  its first update is the official rule on G at rank 4, re-derived in float64
  (GaLore: right projector, m >= n; Natural GaLore: U^T G V, the Fisher over one
  core, HF Adam, U N V^T). Both are invariant to the SVD's signs at step 1."""
  rng = np.random.default_rng(2)
  params = {"conv": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.bfloat16),
            "b": jnp.zeros(8, jnp.bfloat16)}
  lr, rank = 1e-2, 4
  tx = gradkit.create(name, rank=rank, learning_rate=lr)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  chex.assert_trees_all_equal_dtypes(u, params)
  g = np.asarray(grads["conv"], np.float64).reshape(36, 8)
  if name == "galore":
    want = _galore_first_step(g, rank, lr)
  else:
    want = lr * _natural_galore_reference([g], rank=rank, history=20)[0]
  got = np.asarray(u["conv"], np.float64).reshape(36, 8)
  # bf16 updates carry 8 significant bits (4e-3 relative); Natural GaLore's
  # float32 core has off-diagonal rounding noise that Adam turns into ~1e-3.
  assert np.max(np.abs(got - want)) <= 1e-2 * np.max(np.abs(want))


@pytest.mark.parametrize("name", ["galore", "natural_galore"])
def test_vector_routed_to_the_matrix_rule_is_rejected(name):
  tx = gradkit.create(name, param_labels={"w": "matrix", "b": "matrix"})
  with pytest.raises(ValueError, match=r"acts on matrices.*\['b'\]"):
    tx.init({"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)})


@pytest.mark.parametrize("name, kwargs", [
    ("galore", {"rank": 0}), ("galore", {"update_proj_gap": 0}), ("galore", {"scale": -1.0}),
    ("galore", {"proj_type": "diagonal"}), ("galore", {"b1": 1.0}), ("galore", {"eps": -1.0}),
    ("galore", {"weight_decay": -0.1}), ("natural_galore", {"natural_history": 0}),
    ("natural_galore", {"damping": 0.0}), ("natural_galore", {"rank": 1.5}),
    ("natural_galore", {"b2": -0.1})])
def test_invalid_hyperparameters_raise(name, kwargs):
  with pytest.raises(ValueError):
    gradkit.create(name, **kwargs)


LABELS = {"attn": "matrix", "mlp": "matrix"}  # both hidden matrices (no output head here)


def _per_layer(attn, mlp):
  return lambda path, shape: attn if "attn" in jax.tree_util.keystr(path) else mlp


def _galore_leaf_oracle(grads, rank, gap, scale, theirs, lr, b1=0.9, b2=0.999, eps=1e-6):
  """galore_torch AdamW on one parameter of its own group (rank, update_proj_gap,
  scale), float64: P from the SVD of G when step % gap == 0 (right vectors if
  m >= n, left ones otherwise; each vector given gradkit's sign, after checking
  it is gradkit's up to sign); Adam's moments and count carried across refreshes."""
  out, m, v = [], 0.0, 0.0
  tall = grads[0].shape[0] >= grads[0].shape[1]
  for k, g in enumerate(grads):
    if k % gap == 0:
      u, _, vt = np.linalg.svd(g, full_matrices=False)
      p = vt[:rank] if tall else u[:, :rank]
      frame, ref = (p, theirs[k]) if tall else (p.T, theirs[k].T)
      overlap = np.sum(frame * ref, axis=1)
      np.testing.assert_allclose(np.abs(overlap), 1.0, atol=1e-9)
      p = p * (np.sign(overlap)[:, None] if tall else np.sign(overlap)[None, :])
    r = g @ p.T if tall else p.T @ g
    m, v, step = _hf_adam_step(m, v, r, k + 1, b1, b2, eps)
    out.append(-lr * scale * (step @ p if tall else p @ step))
  return out


def test_per_layer_rank_period_and_scale_follow_each_leafs_own_rule():
  """Two leaves, as two official parameter groups: "attn" (8, 5) at rank 1,
  refreshed every step, scale 0.5; "mlp" (6, 9) at rank 3, every 3 steps,
  scale 0.25. Float64, four steps; each leaf against its own oracle."""
  shapes = {"attn": (8, 5), "mlp": (6, 9)}
  rng = np.random.default_rng(7)
  grads = [{k: rng.normal(size=s) * c for k, s in shapes.items()} for c in (1.0, 0.5, 2.0, 1.5)]
  lr = 0.1
  tx = galore(learning_rate=lr, rank=_per_layer(1, 3), update_proj_gap=_per_layer(1, 3),
              scale=_per_layer(0.5, 0.25), param_labels=LABELS)
  with jax.enable_x64(True):
    params = {k: jnp.zeros(s, jnp.float64) for k, s in shapes.items()}
    state = tx.init(params)
    subspace = _find_subspace(state)
    assert subspace.projection.projectors["attn"].shape == (1, 5)  # right, m >= n
    assert subspace.projection.projectors["mlp"].shape == (6, 3)  # left, m < n
    adam = subspace.inner
    assert adam.mu["attn"].shape == (8, 1) and adam.mu["mlp"].shape == (3, 9)
    update, got, theirs = jax.jit(tx.update), [], []
    for g in grads:
      u, state = update(jax.tree.map(jnp.asarray, g), state, params)
      got.append(jax.tree.map(np.asarray, u))
      theirs.append(jax.tree.map(np.asarray, _find_subspace(state).projection.projectors))
  for key, (rank, gap, scale) in {"attn": (1, 1, 0.5), "mlp": (3, 3, 0.25)}.items():
    want = _galore_leaf_oracle([g[key] for g in grads], rank, gap, scale,
                               [t[key] for t in theirs], lr)
    for t, (a, b) in enumerate(zip(got, want), start=1):
      err = np.max(np.abs(a[key] - b)) / np.max(np.abs(b))
      assert err <= 1e-10, f"{key}, step {t}: {err:.3g} relative"
  # mlp keeps its first projector for steps 1-3; attn takes a new one each step.
  np.testing.assert_array_equal(theirs[2]["mlp"], theirs[0]["mlp"])
  assert np.max(np.abs(np.abs(theirs[1]["attn"]) - np.abs(theirs[0]["attn"]))) > 1e-2


def test_a_per_layer_rule_with_a_bad_value_names_the_leaf():
  tx = galore(update_proj_gap=_per_layer(0, 10), param_labels=LABELS)
  with pytest.raises(ValueError, match=r"update_every of leaf \['attn'\]"):
    tx.init({"attn": jnp.zeros((4, 3)), "mlp": jnp.zeros((4, 3))})
  tx = galore(scale=_per_layer(-1.0, 0.25), param_labels=LABELS)
  with pytest.raises(ValueError, match=r"scale of leaf \['attn'\]"):
    tx.init({"attn": jnp.zeros((4, 3)), "mlp": jnp.zeros((4, 3))})


def test_per_layer_rules_under_inject_hyperparams_as_static_args():
  params = {"attn": jnp.zeros((8, 5)), "mlp": jnp.zeros((6, 9))}
  rules = dict(rank=_per_layer(1, 3), update_proj_gap=_per_layer(1, 3),
               scale=_per_layer(0.5, 0.25))
  tx = optax.inject_hyperparams(galore, static_args=tuple(rules))(
      learning_rate=0.1, param_labels=LABELS, **rules)
  state = tx.init(params)
  assert _find_subspace(state).projection.projectors["attn"].shape == (1, 5)
  rng = np.random.default_rng(8)
  grads = {k: jnp.asarray(rng.normal(size=p.shape), jnp.float32) for k, p in params.items()}
  got, _ = jax.jit(tx.update)(grads, state, params)
  plain = galore(learning_rate=0.1, param_labels=LABELS, **rules)
  want, _ = jax.jit(plain.update)(grads, plain.init(params), params)
  # Injected b1, b2 are float32 arrays (1 - 0.999 is 9.99987e-4 there): ~1e-5 relative.
  chex.assert_trees_all_close(got, want, rtol=2e-5, atol=1e-9)
  # gradkit.inject_hyperparams keeps the rules static by itself.
  tx = gradkit.inject_hyperparams(galore)(learning_rate=0.1, param_labels=LABELS, **rules)
  found, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  chex.assert_trees_all_close(found, got, rtol=1e-6, atol=1e-9)
