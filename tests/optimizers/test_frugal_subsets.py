"""Oracles for `frugal_block` and `frugal_coord` (FRUGAL's block and coordinate types).

The oracles are numpy float64 ports of the official optimizer loops
(fzmushko/FRUGAL: `BlockOptimizer` / `CoordOptimizer` in
frugal/proj_optimizer_templates.py, `CoordinateProjector`, AdamW's
`_init_state` / `_compute_update` in frugal/adamw.py), written in the
official PyTorch (out, in) layout with per-tensor step counters and the
official refresh test on the first tensor's counter; the sheet's float64
literals (shared/algorithms/frugal.md, addendum); optax.adamw for the
fallback leaves and the rho = 1 reductions. Only the random draws (torch's
global RNG there, `seed` here) are read from gradkit's state and handed to
the oracles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.experiments.models import llama_like_params
from gradkit.optimizers.frugal_subsets import (
    FrugalBlocksState,
    FrugalCoordinatesState,
    block_windows,
    frugal_block,
    frugal_coord,
)
from gradkit.optimizers.matrix_labels import matrix_labels
from trajectories import assert_kernel_rule_and_adamw_elsewhere

B1, B2, EPS = 0.9, 0.999, 1e-8


def _all_matrix(params):
  return jax.tree.map(lambda _: "matrix", params)


def _inner(state, kind):
  is_kind = lambda x: isinstance(x, kind)  # noqa: E731
  (found,) = [x for x in jax.tree.leaves(state, is_leaf=is_kind) if is_kind(x)]
  return found


def _run(tx, params, grads_seq, kind):
  """(params after each step, inner state after each step); float64 if x64 is on."""
  update = jax.jit(tx.update)
  state, history, states = tx.init(params), [], []
  for g in grads_seq:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    history.append(jax.tree.map(np.asarray, params))
    states.append(jax.device_get(_inner(state, kind)))
  return history, states


def _adam_step(state, g, lr):
  """frugal/adamw.py `_compute_update` after `step += 1`: PyTorch eps placement."""
  state["exp_avg"] = B1 * state["exp_avg"] + (1 - B1) * g
  state["exp_avg_sq"] = B2 * state["exp_avg_sq"] + (1 - B2) * g * g
  denom = np.sqrt(state["exp_avg_sq"]) / np.sqrt(1 - B2 ** state["step"]) + EPS
  return -(lr / (1 - B1 ** state["step"])) * state["exp_avg"] / denom


def _state_free(g, rule, lr):
  if rule == "no":
    return np.zeros_like(g)
  return -lr * (np.sign(g) if rule == "sign_sgd" else g)


class OfficialBlockAdamW:
  """`BlockAdamW` on a list of tensors (numpy float64), one `step` per call."""

  def __init__(self, shapes, density, update_gap, order, lr, wd=0.0, rule="sign_sgd",
               inactive_lr_scale=1.0, proj_params_lr_scale=1.0, random_choice=None):
    self.state = [{} for _ in shapes]
    self.num_active = round(len(shapes) * density)
    self.gap, self.order, self.lr, self.wd, self.rule = update_gap, order, lr, wd, rule
    self.c, self.a = inactive_lr_scale, proj_params_lr_scale
    self.random_choice, self.refreshes, self.next_block_start = random_choice, 0, None
    self.shapes = shapes

  def _activate(self, i):
    self.state[i].update(step=0, active=True, exp_avg=np.zeros(self.shapes[i]),
                         exp_avg_sq=np.zeros(self.shapes[i]))

  def _update_states(self):
    n, k = len(self.state), self.num_active
    for st in self.state:
      st.clear()
      st.update(step=0, active=False)
    if self.order == "random":
      chosen = self.random_choice(self.refreshes)
    elif self.order == "ascending":
      if self.next_block_start is None:
        self.next_block_start = 0
      chosen = [i % n for i in range(self.next_block_start, self.next_block_start + k)]
      self.next_block_start += k
      if self.next_block_start >= n:
        self.next_block_start -= n
    elif self.order == "descending":
      if self.next_block_start is None:
        self.next_block_start = n - 1
      chosen = [i % n for i in range(self.next_block_start, self.next_block_start - k, -1)]
      self.next_block_start -= k
      if self.next_block_start < 0:
        self.next_block_start += n
    else:  # mirror
      if self.next_block_start is None:
        self.next_block_start = 0
      chosen = []
      for idx in range(self.next_block_start, self.next_block_start + k // 2):
        chosen += [idx % (n // 2), n - 1 - idx % (n // 2)]
      self.next_block_start += k // 2
      if self.next_block_start >= n // 2:
        self.next_block_start -= n // 2
    for i in chosen:
      self._activate(i)
    self.refreshes += 1
    return sorted(chosen)

  def step(self, params, grads):
    first = self.state[0]
    chosen = None
    if not ("step" in first and first["step"] % self.gap):
      chosen = self._update_states()
    out = []
    for p, g, st in zip(params, grads, self.state):
      p = p * (1 - self.lr * self.wd)
      st["step"] += 1
      if st["active"]:
        update = _adam_step(st, g, self.lr * self.a)
      else:
        update = _state_free(g, self.rule, self.lr * self.a * self.c)
      out.append(p + update)
    return out, chosen


class OfficialCoordAdamW:
  """`CoordAdamW` (reset_statistics=True) on PyTorch-layout (out, in) tensors.

  `draw(i, refresh, total)` returns the projector's chosen indices (the
  official `randperm(total)[:int(total * density)]`).
  """

  def __init__(self, shapes, update_gap, choice, lr, draw, wd=0.0, rule="sign_sgd",
               inactive_lr_scale=1.0, proj_params_lr_scale=1.0):
    self.state = [{} for _ in shapes]
    self.shapes, self.gap, self.choice, self.lr, self.draw = shapes, update_gap, choice, lr, draw
    self.wd, self.rule, self.c, self.a, self.refreshes = wd, rule, inactive_lr_scale, \
        proj_params_lr_scale, 0

  def _down(self, st, x):
    if self.choice == "columns":
      return x[:, st["indices"]]
    if self.choice == "rows":
      return x[st["indices"]]
    return x[st["indices"][0], st["indices"][1]]

  def _up(self, st, low, shape):
    full = np.zeros(shape)
    if self.choice == "columns":
      full[:, st["indices"]] = low
    elif self.choice == "rows":
      full[st["indices"]] = low
    else:
      full[st["indices"][0], st["indices"][1]] = low
    return full

  def _update_states(self, grads):
    for i, (st, g) in enumerate(zip(self.state, grads)):
      out_features, in_features = g.shape
      if self.choice == "columns":
        st["indices"] = self.draw(i, self.refreshes, in_features)
      elif self.choice == "rows":
        st["indices"] = self.draw(i, self.refreshes, out_features)
      else:
        flat = self.draw(i, self.refreshes, out_features * in_features)
        st["indices"] = (flat // in_features, flat % in_features)
      low = self._down(st, g)
      st.update(step=0, exp_avg=np.zeros(low.shape), exp_avg_sq=np.zeros(low.shape))
    self.refreshes += 1

  def step(self, params, grads):
    first = self.state[0]
    if not ("step" in first and first["step"] % self.gap):
      self._update_states(grads)
    out = []
    for p, g, st in zip(params, grads, self.state):
      p = p * (1 - self.lr * self.wd)
      st["step"] += 1
      low = self._down(st, g)
      update = self._up(st, _adam_step(st, low, self.lr * self.a), g.shape)
      if self.rule != "no":
        update = update + _state_free(g - self._up(st, low, g.shape), self.rule,
                                      self.lr * self.a * self.c)
      out.append(p + update)
    return out


# ---------------------------------------------------------------------------- block type


def _sheet_block_grads():
  g = [np.array([[1.0, -2.0]]), np.array([[0.5, 0.0]]), np.array([[-3.0, 4.0]])]
  return [[(1 + 0.5 * (s - 1)) * gi for gi in g] for s in range(1, 6)]


SHEET_BLOCK_UPDATES = [
    [[-0.1, 0.1], [-0.1, 0.0], [0.9999999967, -0.9999999975]],
    [[-0.1, 0.1], [-0.1, 0.0], [0.9908072619, -0.9908072626]],
    [[-0.1, 0.1], [-0.99999999, 0.0], [0.1, -0.1]],
    [[-0.1, 0.1], [-0.9996410271, 0.0], [0.1, -0.1]],
    [[-0.9999999967, 0.9999999983], [-0.1, 0.0], [0.1, -0.1]],
]


def test_sheet_block_oracle_descending_with_switches_every_two_steps():
  """3 tensors, rho = 1/3 (one active), T = 2, "descending": active 2, 2, 1, 1, 0;
  a tensor entering restarts Adam (step 3 and 5 are fresh first steps, ~1)."""
  grads = _sheet_block_grads()
  oracle = OfficialBlockAdamW([(1, 2)] * 3, 1 / 3, 2, "descending", lr=1.0,
                              inactive_lr_scale=0.1)
  params, want = [np.zeros((1, 2))] * 3, []
  for g in grads:
    new, _ = oracle.step(params, g)
    want.append([n - p for n, p in zip(new, params)])
    params = new
  np.testing.assert_allclose(np.asarray(want)[:, :, 0], SHEET_BLOCK_UPDATES, atol=1e-9)

  with jax.enable_x64(True):
    names = ["t0", "t1", "t2"]
    tx = frugal_block(learning_rate=1.0, density=1 / 3, update_gap=2, inactive_lr_scale=0.1,
                      param_labels=_all_matrix)
    zeros = {n: jnp.zeros((1, 2), jnp.float64) for n in names}
    history, states = _run(tx, zeros, [dict(zip(names, map(jnp.asarray, g))) for g in grads],
                           FrugalBlocksState)
  got = np.diff(np.asarray([[zeros[n] for n in names]] + [[h[n] for n in names]
                                                           for h in history]), axis=0)
  np.testing.assert_allclose(got[:, :, 0], SHEET_BLOCK_UPDATES, atol=1e-9)
  assert [int(np.flatnonzero(s.active)[0]) for s in states] == [2, 2, 1, 1, 0]


SHAPES = [(2, 3), (3, 3), (1, 4), (4, 2), (2, 2)]


@pytest.mark.parametrize(("order", "rule"), [
    ("descending", "sign_sgd"), ("ascending", "sgd"), ("mirror", "sign_sgd"),
    ("random", "no")])
def test_block_type_follows_the_official_loop(order, rule):
  """5 tensors of different sizes, 2 active (round(5 * 0.4)), T = 2, 7 steps:
  tensors enter and leave, the packed moments of differently sized tensors
  reuse each other's slots; every parameter equals the official loop's
  (decay with the plain lr first, both lr scales)."""
  rng = np.random.default_rng(0)
  keys = [f"w{i}" for i in range(len(SHAPES))]
  p0 = [rng.normal(size=s) for s in SHAPES]
  grads = [[rng.normal(size=s) for s in SHAPES] for _ in range(7)]
  hparams = dict(learning_rate=0.05, density=0.4, update_gap=2, block_order=order,
                 inactive_update_rule=rule, inactive_lr_scale=0.3, proj_params_lr_scale=0.7,
                 weight_decay=0.1, param_labels=_all_matrix, seed=3)
  with jax.enable_x64(True):
    history, states = _run(frugal_block(**hparams), dict(zip(keys, map(jnp.asarray, p0))),
                           [dict(zip(keys, map(jnp.asarray, g))) for g in grads],
                           FrugalBlocksState)
  drawn = [sorted(np.flatnonzero(states[2 * r].active).tolist()) for r in range(4)]
  oracle = OfficialBlockAdamW([s for s in SHAPES], 0.4, 2, order, lr=0.05, wd=0.1, rule=rule,
                              inactive_lr_scale=0.3, proj_params_lr_scale=0.7,
                              random_choice=lambda r: drawn[r])
  params = p0
  for step, (g, got) in enumerate(zip(grads, history)):
    params, chosen = oracle.step(params, g)
    if chosen is not None:
      assert chosen == drawn[step // 2], (step, chosen)
    for k, want in zip(keys, params):
      np.testing.assert_allclose(got[k], want, rtol=1e-12, atol=1e-14, err_msg=f"{step} {k}")
  assert all(len(d) == 2 for d in drawn)


def test_rotation_orders():
  """The sheet's bookkeeping (28 tensors, rho 0.25: 7 active, "descending"
  27..21, 20..14, 13..7, 6..0, again 27..21), a window that does not divide
  L (5 tensors, 2 active: it wraps through 0), and "mirror"."""
  sheet = block_windows(28, 7, "descending")
  assert [tuple(range(27 - 7 * r, 20 - 7 * r, -1)) for r in range(4)] == sheet
  assert block_windows(5, 2, "descending") == [(4, 3), (2, 1), (0, 4), (3, 2), (1, 0)]
  assert block_windows(5, 2, "ascending") == [(0, 1), (2, 3), (4, 0), (1, 2), (3, 4)]
  assert block_windows(6, 2, "mirror") == [(0, 5), (1, 4), (2, 3)]
  for n, k, order in ((28, 7, "descending"), (5, 2, "descending"), (5, 2, "ascending"),
                      (6, 4, "mirror"), (7, 2, "mirror")):
    oracle = OfficialBlockAdamW([(1,)] * n, k / n, 1, order, lr=1.0)
    windows = block_windows(n, k, order)
    for r in range(2 * len(windows)):
      assert oracle._update_states() == sorted(windows[r % len(windows)]), (n, k, order, r)

  # gradkit's state at each refresh: 28 tensors, T = 1, five switches.
  params = {f"layer_{i:02d}": jnp.zeros((1, 1)) for i in range(28)}
  _, states = _run(frugal_block(density=0.25, update_gap=1, param_labels=_all_matrix), params,
                   [params] * 5, FrugalBlocksState)
  assert [tuple(np.flatnonzero(s.active)[::-1]) for s in states] == [*sheet, sheet[0]]


def test_random_order_draws_num_active_from_the_seed():
  params = {f"w{i}": jnp.zeros((1, 2)) for i in range(8)}

  def actives(seed):
    tx = frugal_block(density=0.25, update_gap=1, block_order="random", seed=seed,
                      param_labels=_all_matrix)
    _, states = _run(tx, params, [params] * 6, FrugalBlocksState)
    return [tuple(np.flatnonzero(s.active)) for s in states]

  first = actives(0)
  assert all(len(a) == 2 for a in first)
  assert len(set(first)) > 1  # redrawn at each refresh
  assert actives(0) == first and actives(1) != first


def test_switch_zeroes_moments_and_restarts_bias_correction():
  """rho = 1 keeps every tensor active: AdamW exactly for the first T steps;
  at step T + 1 the moments restart (a fresh first step, g / (|g| + eps)),
  also for tensors chosen again, which a carried AdamW does not give."""
  rng = np.random.default_rng(1)
  params = {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=(2, 2))}
  grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(4)]
  with jax.enable_x64(True):
    tx = frugal_block(learning_rate=0.1, density=1.0, update_gap=3, param_labels=_all_matrix)
    got, states = _run(tx, jax.tree.map(jnp.asarray, params),
                       [jax.tree.map(jnp.asarray, g) for g in grads], FrugalBlocksState)
    adam, _ = _run(optax.adam(0.1), jax.tree.map(jnp.asarray, params),
                   [jax.tree.map(jnp.asarray, g) for g in grads], optax.ScaleByAdamState)
  for step in range(3):
    for k in params:
      np.testing.assert_allclose(got[step][k], adam[step][k], rtol=1e-12)
  for k in params:
    fresh = got[2][k] - 0.1 * grads[3][k] / (np.abs(grads[3][k]) + EPS)
    np.testing.assert_allclose(got[3][k], fresh, rtol=1e-12)
    assert not np.allclose(got[3][k], adam[3][k], rtol=1e-3)
  assert states[3].active.all()


# ---------------------------------------------------------------------- coordinate type


def _draws_from(states, gap, keys, choice):
  """The indices gradkit drew at each refresh, per leaf, as the oracle's `draw`."""
  def draw(i, refresh, total):
    idx = np.asarray(states[refresh * gap].indices[keys[i]]["kernel"])
    assert len(set(idx.tolist())) == len(idx) and np.all(np.diff(idx) > 0)
    assert 0 <= idx.min() and idx.max() < total
    return idx
  return draw


@pytest.mark.parametrize("choice", ["columns", "rows", "randk"])
def test_coordinate_type_follows_the_official_loop(choice):
  """Flax (in, out) kernels against the official loop on their PyTorch
  (out, in) transposes: "columns" are input features, "rows" output
  features, "randk" entries; T = 2 over 5 steps (three draws, each zeroing
  the moments and restarting the bias correction)."""
  rng = np.random.default_rng(2)
  keys = ["k0", "k1"]
  shapes = [(5, 3), (4, 6)]  # (in, out)
  p0 = [rng.normal(size=s) for s in shapes]
  grads = [[rng.normal(size=s) for s in shapes] for _ in range(5)]
  tree = lambda xs: {k: {"kernel": jnp.asarray(x)} for k, x in zip(keys, xs)}  # noqa: E731
  with jax.enable_x64(True):
    tx = frugal_coord(learning_rate=0.05, density=0.5, update_gap=2, coord_choice=choice,
                      inactive_lr_scale=0.3, proj_params_lr_scale=0.7, weight_decay=0.1,
                      param_labels=_all_matrix, seed=4)
    history, states = _run(tx, tree(p0), [tree(g) for g in grads], FrugalCoordinatesState)
  if choice == "randk":  # gradkit's flat index runs over (in, out): map it to (out, in)
    def draw(i, refresh, total):
      flat = _draws_from(states, 2, keys, choice)(i, refresh, total)
      n_in, n_out = shapes[i]
      return (flat % n_out) * n_in + flat // n_out
  else:
    draw = _draws_from(states, 2, keys, choice)
  k_expected = {"columns": [2, 2], "rows": [1, 3], "randk": [7, 12]}[choice]
  assert [states[0].indices[k]["kernel"].shape[0] for k in keys] == k_expected
  assert any(not np.array_equal(states[0].indices[k]["kernel"], states[2].indices[k]["kernel"])
             for k in keys)
  oracle = OfficialCoordAdamW([s[::-1] for s in shapes], 2, choice, lr=0.05, draw=draw, wd=0.1,
                              inactive_lr_scale=0.3, proj_params_lr_scale=0.7)
  params = [p.T for p in p0]
  for step, (g, got) in enumerate(zip(grads, history)):
    params = oracle.step(params, [x.T for x in g])
    for k, want in zip(keys, params):
      np.testing.assert_allclose(got[k]["kernel"], want.T, rtol=1e-12, atol=1e-14,
                                 err_msg=f"{step} {k}")


def test_sheet_coord_oracle_columns():
  """The sheet's (2, 4) PyTorch-layout gradients with columns [1, 3] chosen
  (a seed that draws them), T large: Adam on those columns, 0.1 sign(G)
  elsewhere (0 where the residual is 0)."""
  g1 = np.array([[0.5, -2, 0, 1], [3, 0.25, -1, -0.5]])
  g2 = np.array([[1, 1, -1, 0], [-2, 0.5, 2, 1.5]])
  want = [[[-0.1, 0.999999995, 0.0, -0.99999999], [-0.1, -0.99999996, 0.1, 0.99999998]],
          [[-0.1, 0.266337038, 0.1, -0.6700582447], [0.1, -0.9651820014, -0.1, -0.4941898289]]]
  with jax.enable_x64(True):
    for seed in range(64):
      tx = frugal_coord(learning_rate=1.0, density=0.5, weight_decay=0.0, seed=seed,
                        param_labels=_all_matrix)
      zeros = {"w": {"kernel": jnp.zeros((4, 2))}}
      history, states = _run(tx, zeros, [{"w": {"kernel": jnp.asarray(g.T)}} for g in (g1, g2)],
                             FrugalCoordinatesState)
      if np.asarray(states[0].indices["w"]["kernel"]).tolist() == [1, 3]:
        break
    else:
      pytest.fail("no seed in 0..63 draws columns [1, 3]")
  got = np.diff([np.zeros((2, 4))] + [h["w"]["kernel"].T for h in history], axis=0)
  np.testing.assert_allclose(got, want, atol=1e-9)


def test_coordinate_density_one_is_adamw_until_the_first_redraw():
  """randk with rho = 1: every entry state-full, so AdamW (optax's) for the
  first T steps; the redraw at step T + 1 zeroes the moments."""
  rng = np.random.default_rng(3)
  params = {"w": {"kernel": rng.normal(size=(3, 4))}}
  grads = [{"w": {"kernel": rng.normal(size=(3, 4))}} for _ in range(3)]
  with jax.enable_x64(True):
    tx = frugal_coord(learning_rate=0.1, density=1.0, update_gap=2, coord_choice="randk",
                      weight_decay=0.1, param_labels=_all_matrix)
    got, _ = _run(tx, jax.tree.map(jnp.asarray, params),
                  [jax.tree.map(jnp.asarray, g) for g in grads], FrugalCoordinatesState)
    want, _ = _run(optax.adamw(0.1, weight_decay=0.1), jax.tree.map(jnp.asarray, params),
                   [jax.tree.map(jnp.asarray, g) for g in grads], optax.ScaleByAdamState)
  for step in range(2):
    np.testing.assert_allclose(got[step]["w"]["kernel"], want[step]["w"]["kernel"], rtol=1e-12)
  g, p = grads[2]["w"]["kernel"], got[1]["w"]["kernel"]
  fresh = p - 0.1 * (g / (np.abs(g) + EPS) + 0.1 * p)
  np.testing.assert_allclose(got[2]["w"]["kernel"], fresh, rtol=1e-12)


# ------------------------------------------------------------------ shared: rules, labels


@pytest.mark.parametrize("factory", [frugal_block, frugal_coord])
def test_zero_density_is_the_state_free_rule_and_adamw_elsewhere(factory):
  """rho = 0: matrices get a c sign(G) and no moments; embedding, bias, head
  and scalar get optax.adamw's steps."""
  every_leaf = lambda p: jax.tree.map(lambda _: True, p)  # noqa: E731
  tx = functools.partial(factory, density=0.0, inactive_lr_scale=0.5, proj_params_lr_scale=0.8,
                         mask=every_leaf)
  assert_kernel_rule_and_adamw_elsewhere(tx, lambda g: 0.4 * np.sign(g))
  state = tx().init({"w": jnp.zeros((4, 4))})
  kind = FrugalBlocksState if factory is frugal_block else FrugalCoordinatesState
  inner = _inner(state, kind)
  assert not jax.tree.leaves((inner.mu, inner.nu))


def test_state_free_label_and_rules():
  """A "state_free" leaf (the GLUE runs' key/intermediate/output matrices)
  gets a c rule(G) whatever the density; "sgd" and "no" rules."""
  g = np.array([[0.5, -2.0], [0.0, 3.0]])
  labels = {"q": "matrix", "k": "state_free"}
  params = {"q": jnp.zeros((2, 2)), "k": jnp.zeros((2, 2))}
  for rule, want in (("sign_sgd", -0.1 * np.sign(g)), ("sgd", -0.1 * g), ("no", 0 * g)):
    tx = frugal_coord(learning_rate=1.0, density=1.0, weight_decay=0.0, param_labels=labels,
                      inactive_update_rule=rule)
    u, _ = tx.update({"q": jnp.asarray(g), "k": jnp.asarray(g)}, tx.init(params), params)
    np.testing.assert_allclose(u["k"], want, rtol=1e-6)
    np.testing.assert_allclose(u["q"], -g / (np.abs(g) + EPS), rtol=1e-5)


def test_bad_options_are_rejected():
  params = {f"w{i}": jnp.zeros((2, 2)) for i in range(3)}
  with pytest.raises(ValueError, match="even number of active blocks"):
    frugal_block(density=1 / 3, block_order="mirror", param_labels=_all_matrix).init(params)
  with pytest.raises(ValueError, match="block_order"):
    frugal_block(block_order="sideways")
  with pytest.raises(ValueError, match="coord_choice"):
    frugal_coord(coord_choice="diagonal")
  with pytest.raises(ValueError, match="inactive_update_rule"):
    frugal_block(inactive_update_rule="same")  # the official CLI default
  with pytest.raises(ValueError, match="density"):
    frugal_coord(density=jnp.asarray(0.5))


# ------------------------------------------------------------------------------- memory

SMALL = llama_like_params(d_model=64, layers=4, ffn=172, vocab=256)


def _matrices(params):
  labels = matrix_labels(params)
  return [p.shape for p, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels))
          if lab == "matrix"]


def _bytes(name, params, **hparams):
  return gradkit.state_nbytes(jax.eval_shape(gradkit.create(name, **hparams).init, params))


def _matrix_bytes(name, params, **hparams):
  labels = matrix_labels(params)
  rest = jax.tree.map(lambda p, lab: None if lab == "matrix" else p, params, labels)
  return _bytes(name, params, **hparams) - _bytes(name, rest, **hparams)


VARIANTS = (("frugal_block", {}), ("frugal_block", {"block_order": "random"}),
            ("frugal_coord", {}))


def test_memory_table_of_the_module_docstring():
  """State bytes owned by the 28 matrices of a 4-layer LLaMA-like tree
  (7 per layer, flatten order layer by layer): "descending" packs one
  layer's worth, a quarter of AdamW's; "random" the 7 largest tensors;
  "columns" 2 * int(0.25 m) * n floats plus the indices per matrix. Then
  the docstring's ratios, small tree and LLaMA-60M-like tree."""
  shapes = _matrices(SMALL)
  assert len(shapes) == 28
  sizes = [m * n for m, n in shapes]
  adamw = _matrix_bytes("adamw", SMALL)
  assert adamw == 8 * sum(sizes)
  flags = 28  # the active flags (count and key exist without matrices too)
  assert _matrix_bytes("frugal_block", SMALL) == 8 * sum(sizes) // 4 + flags
  assert _matrix_bytes("frugal_block", SMALL, block_order="random") == (
      8 * sum(sorted(sizes)[-7:]) + flags)
  coord = sum(8 * int(0.25 * m) * n + 4 * int(0.25 * m) for m, n in shapes)
  assert _matrix_bytes("frugal_coord", SMALL) == coord
  for params, whole, matrices in ((SMALL, [0.358, 0.478, 0.359], [0.25, 0.39, 0.251]),
                                  (llama_like_params(), [0.673, 0.734, 0.673],
                                   [0.25, 0.39, 0.25])):
    total, owned = _bytes("adamw", params), _matrix_bytes("adamw", params)
    assert [round(_bytes(n, params, **h) / total, 3) for n, h in VARIANTS] == whole
    assert [round(_matrix_bytes(n, params, **h) / owned, 3) for n, h in VARIANTS] == matrices


def test_bf16_params_keep_bf16_packed_moments():
  """bf16 params: the packed moments are bf16 (the params' dtype, as optax's
  Adam keeps them), one quarter of the four kernels; updates are bf16."""
  params = {f"w{i}": jnp.ones((4, 4), jnp.bfloat16) for i in range(4)}
  tx = frugal_block(param_labels=_all_matrix)
  state = tx.init(params)
  inner = _inner(state, FrugalBlocksState)
  assert inner.mu.dtype == jnp.bfloat16 and inner.mu.shape == (16,)
  u, state = jax.jit(tx.update)(params, state, params)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))
  mu = np.asarray(_inner(state, FrugalBlocksState).mu, np.float32)
  np.testing.assert_allclose(mu, 0.1, rtol=2 ** -8)  # (1 - b1) g, rounded to bf16
