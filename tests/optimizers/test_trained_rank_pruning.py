"""The `trp` recipe against a float64 numpy run of the official training step.

The oracles re-derive cifar-TRP.py in numpy: its layer table
(`get_look_up_table`: Conv2d kernels that are not 1x1, after the first), its
"NC" decomposition of a (out, in, kh, kw) kernel viewed as (out, in*kh*kw),
decompose.py's EnergyThreshold loop, the sub-gradient U_k V_k^T and
torch.optim.SGD (coupled L2, momentum buffer). Flax kernels (kh, kw, in, out)
are transposed to the torch layout for it and back.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import gradkit
from gradkit.optimizers.matrix_labels import matrix_labels
from gradkit.optimizers.trained_rank_pruning import trp_labels
from trajectories import f32, run_updates


def energy_count(s, threshold):
  """decompose.py's EnergyThreshold: the fewest sigmas whose s^2 reach the fraction."""
  energy = s ** 2
  for i in range(len(energy)):
    if energy[: i + 1].sum() / energy.sum() >= threshold:
      # float32 SVDs must not land on the other side of the threshold.
      assert abs(energy[: i + 1].sum() / energy.sum() - threshold) > 1e-4
      assert i == 0 or abs(energy[:i].sum() / energy.sum() - threshold) > 1e-4
      return i + 1
  return len(energy)


def truncate(w, energy):
  u, s, vt = np.linalg.svd(w, full_matrices=False)
  k = energy_count(s, energy)
  return u[:, :k], s[:k], vt[:k]


def to_nc(kernel):
  """Flax (kh, kw, in, out) -> torch (out, in, kh, kw) -> the "NC" view (out, in*kh*kw)."""
  return kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[3], -1)


def from_nc(nc, shape):
  kh, kw, cin, cout = shape
  return nc.reshape(cout, cin, kh, kw).transpose(2, 3, 1, 0)


def official_run(params, grads, selected, lr, mom, lam, wd, energy):
  """cifar-TRP.py with --trp --type NC, period 1, in float64.

  The official loop projects at the start of each step; gradkit projects at
  the end of the step before, so the weights after step t here are the
  official weights after its step t and the projection that opens step t+1.
  """
  p = {k: v.copy() for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  history, ranks = [], []
  for g in grads:
    for k in p:
      d = g[k] + wd * p[k]
      if k in selected:
        nc = to_nc(p[k]) if p[k].ndim == 4 else p[k]
        u, _, vt = truncate(nc, energy)
        sub = u @ vt
        d = d + lam * (from_nc(sub, p[k].shape) if p[k].ndim == 4 else sub)
      buf[k] = mom * buf[k] + d
      p[k] = p[k] - lr * buf[k]
      if k in selected:
        nc = to_nc(p[k]) if p[k].ndim == 4 else p[k]
        u, s, vt = truncate(nc, energy)
        low = (u * s) @ vt
        p[k] = from_nc(low, p[k].shape) if p[k].ndim == 4 else low
        ranks.append(len(s))
    history.append({k: v.copy() for k, v in p.items()})
  return history, ranks


def flax_like_tree(rng):
  """A small CNN as Flax names it; sorted keys put the 3x3x8x8 conv before the stem."""
  return {
      "Conv_0": rng.normal(size=(3, 3, 3, 8)),                # first conv: reads RGB
      "BasicBlock_0": {"Conv_0": rng.normal(size=(3, 3, 8, 8)),
                       "Conv_1": rng.normal(size=(1, 1, 8, 8))},  # 1x1
      "Dense_0": {"kernel": rng.normal(size=(8, 5)), "bias": rng.normal(size=(5,))},
      "Embed_0": {"embedding": rng.normal(size=(10, 8))},
  }


def flat(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf, np.float64)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


CONV = "['BasicBlock_0']['Conv_0']"
HP = dict(lr=0.05, mom=0.9, lam=0.05, wd=1e-3, energy=0.9)


def _run(selected, **trp_kwargs):
  rng = np.random.default_rng(0)
  params = flax_like_tree(rng)
  grads = [flax_like_tree(rng) for _ in range(2)]
  tx = gradkit.create("trp", learning_rate=HP["lr"], momentum=HP["mom"],
                      nuclear_weight=HP["lam"], weight_decay=HP["wd"], energy=HP["energy"],
                      **trp_kwargs)
  got = [flat(t) for t in run_updates(tx, f32(params), [f32(g) for g in grads])]
  want, ranks = official_run(flat(params), [flat(g) for g in grads], selected, **HP)
  return got, want, ranks


def test_default_selection_is_the_official_table():
  labels = flat(jax.tree.map(lambda s: s == "matrix", trp_labels(flax_like_tree(
      np.random.default_rng(0)))))
  assert [k for k, v in labels.items() if v] == [CONV]
  assert trp_labels(flax_like_tree(np.random.default_rng(0)))["Embed_0"]["embedding"] == (
      "embedding")


def test_only_the_second_conv_is_truncated_and_regularised_by_default():
  got, want, ranks = _run({CONV})
  assert ranks and max(ranks) < 8  # the truncation bites on the selected conv
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], atol=2e-5, err_msg=k)
  # The other kernels stay full rank (their official step has no projection).
  for k in ("['Conv_0']", "['BasicBlock_0']['Conv_1']", "['Dense_0']['kernel']",
            "['Embed_0']['embedding']"):
    view = got[-1][k].reshape(-1, got[-1][k].shape[-1])
    assert np.linalg.matrix_rank(view, tol=1e-4) == min(view.shape), k


def test_param_labels_override_the_selection():
  rng = np.random.default_rng(0)
  labels = jax.tree.map(lambda _: "vector", flax_like_tree(rng))
  labels["Dense_0"]["kernel"] = "matrix"
  labels["Conv_0"] = "matrix"
  got, want, _ = _run({"['Dense_0']['kernel']", "['Conv_0']"}, param_labels=labels)
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], atol=2e-5, err_msg=k)


def test_matrix_labels_select_every_hidden_matrix():
  every = {"['Conv_0']", CONV, "['BasicBlock_0']['Conv_1']"}  # Dense_0 is the head
  got, want, _ = _run(every, param_labels=matrix_labels)
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], atol=2e-5, err_msg=k)


def test_first_conv_ties_go_to_the_flattening_order_and_one_conv_is_never_selected():
  convs = {"a": np.zeros((3, 3, 4, 4)), "b": np.zeros((3, 3, 4, 4)), "c": np.zeros((5, 5, 4, 2))}
  assert trp_labels(convs) == {"a": "full_rank", "b": "matrix", "c": "matrix"}
  assert trp_labels({"stem": np.zeros((3, 3, 1, 4)), "w": np.zeros((4, 2))}) == {
      "stem": "full_rank", "w": "full_rank"}


def test_unknown_label_is_rejected_naming_it():
  tx = gradkit.create("trp", param_labels={"w": "matrx"})
  with pytest.raises(ValueError, match=r"param_labels.*matrx"):
    tx.init({"w": np.zeros((4, 3), np.float32)})


def test_trp_step_on_a_matrix_is_nuclear_subgradient_coupled_decay_momentum_then_projection():
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(6, 4)) * np.geomspace(1, 0.1, 4), "b": rng.normal(size=4)}
  grads = [{"w": rng.normal(size=(6, 4)), "b": rng.normal(size=4)} for _ in range(4)]
  lr, mom, lam, wd, energy, period = 0.05, 0.9, 0.01, 1e-3, 0.9, 2
  tx = gradkit.create("trp", learning_rate=lr, momentum=mom, nuclear_weight=lam,
                      weight_decay=wd, energy=energy, period=period,
                      param_labels={"w": "matrix", "b": "vector"})
  got = run_updates(tx, f32(params), [f32(g) for g in grads])
  w, b = params["w"].copy(), params["b"].copy()
  buf_w, buf_b = np.zeros_like(w), np.zeros_like(b)
  for t, g in enumerate(grads):
    gw = g["w"] + wd * w
    if t % period == 0:
      u, _, vt = truncate(w, energy)
      gw = gw + lam * u @ vt
    buf_w, buf_b = mom * buf_w + gw, mom * buf_b + g["b"] + wd * b
    w, b = w - lr * buf_w, b - lr * buf_b
    if t % period == 0:
      u, s, vt = truncate(w, energy)
      w = (u * s) @ vt
      assert np.linalg.matrix_rank(np.asarray(got[t]["w"], np.float64), tol=1e-4) == len(s)
    np.testing.assert_allclose(got[t]["w"], w, atol=2e-5)
    np.testing.assert_allclose(got[t]["b"], b, atol=2e-5)


def test_fixed_rank_projection_bounds_every_selected_matrix():
  rng = np.random.default_rng(1)
  params = {"w": f32(rng.normal(size=(8, 6)))}
  got = run_updates(gradkit.create("trp", rank=2, energy=None, period=3,
                                   param_labels={"w": "matrix"}), params, [params] * 4)
  assert np.linalg.matrix_rank(np.asarray(got[0]["w"], np.float64), tol=1e-4) <= 2
  assert np.linalg.matrix_rank(np.asarray(got[3]["w"], np.float64), tol=1e-4) <= 2


@pytest.mark.parametrize("kwargs", [{"energy": None}, {"energy": 2.0}, {"rank": 0},
                                    {"period": 0}, {"momentum": 1.0}, {"nuclear_weight": -1.0},
                                    {"weight_decay": -1.0}])
def test_invalid_hyperparameters_are_rejected(kwargs):
  with pytest.raises(ValueError):
    gradkit.create("trp", **kwargs)
