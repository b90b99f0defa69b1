"""SGD-SaI against the sheet's two-step oracle and float64 numpy steps (v1.0.3
and the official code's later v1.1.0 rule)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.sgd_sai import sgd_sai
from gradkit.transforms.gsnr_scaling import ScaleByGsnrAtInitState

G1 = np.array([[1.0, 2.0], [3.0, 4.0]])
G2 = np.array([[0.0, 1.0], [1.0, 0.0]])
P1_SHEET = np.array([[0.9574735935, 0.9150471869], [0.8726207804, 0.8301943738]])
P2_SHEET = np.array([[0.9191940802, 0.8343455098], [0.75373958, 0.6773762908]])


def _gsnr(g):
  g = np.asarray(g, np.float64).ravel()
  return np.linalg.norm(g) / (np.std(g, ddof=1) + 1e-8)


def _numpy_sgd_sai(p0, grads, lrs, mu, wd, scales):
  """Official update in float64: p <- p (1 - lr wd) - lr gsnr buf, EMA buf."""
  p, buf, out = dict(p0), {}, []
  for t, (g, lr) in enumerate(zip(grads, lrs)):
    for k in p:
      buf[k] = g[k] if t == 0 else mu * buf[k] + (1 - mu) * g[k]
      p[k] = p[k] * (1 - lr * wd) - lr * scales[k] * buf[k]
    out.append(dict(p))
  return out


def _run(tx, p0, grads):
  params = {k: jnp.asarray(v, jnp.float32) for k, v in p0.items()}
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    updates, state = update({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out, state


def test_sheet_two_step_oracle():
  p0, grads = {"w": np.ones((2, 2))}, [{"w": G1}, {"w": G2}]
  ref = _numpy_sgd_sai(p0, grads, [0.01, 0.01], 0.9, 0.01, {"w": _gsnr(G1)})
  np.testing.assert_allclose(ref[0]["w"], P1_SHEET, rtol=1e-9)
  np.testing.assert_allclose(ref[1]["w"], P2_SHEET, rtol=1e-8)
  (p1, p2), state = _run(sgd_sai(learning_rate=0.01, momentum=0.9, weight_decay=0.01), p0, grads)
  np.testing.assert_allclose(p1["w"], P1_SHEET, rtol=1e-6)
  np.testing.assert_allclose(p2["w"], P2_SHEET, rtol=1e-6)
  (gsnr_state,) = [s for s in state if isinstance(s, ScaleByGsnrAtInitState)]
  np.testing.assert_allclose(gsnr_state.gsnr["w"], 4.2426407, rtol=1e-6)


def test_defaults_are_the_official_class_defaults():
  # lr 1e-2, momentum 0.9, eps 1e-8, wd 1e-2: the sheet oracle uses exactly these.
  (_, p2), _ = _run(gradkit.create("sgd_sai"), {"w": np.ones((2, 2))}, [{"w": G1}, {"w": G2}])
  np.testing.assert_allclose(p2["w"], P2_SHEET, rtol=1e-6)


def test_max_normalized_variant_with_two_blocks_and_a_mask():
  rng = np.random.default_rng(0)
  p0 = {"w": rng.normal(size=(2, 2)), "b": rng.normal(size=(3,))}
  grads = [{"w": G1, "b": np.array([0.5, -0.5, 1.0])},
           {"w": G2, "b": np.array([0.2, 0.1, -0.3])},
           {"w": -G1, "b": np.array([1.0, 1.0, 1.0])}]
  scales = {"w": 1.0, "b": 0.3779645}
  mask = {"w": True, "b": False}
  ref_w = _numpy_sgd_sai({"w": p0["w"]}, [{"w": g["w"]} for g in grads], [0.05] * 3, 0.8, 0.1,
                         scales)
  ref_b = _numpy_sgd_sai({"b": p0["b"]}, [{"b": g["b"]} for g in grads], [0.05] * 3, 0.8, 0.0,
                         scales)
  tx = sgd_sai(learning_rate=0.05, momentum=0.8, weight_decay=0.1, mask=mask,
               normalize_by_max=True)
  out, _ = _run(tx, p0, grads)
  for got, rw, rb in zip(out, ref_w, ref_b):
    np.testing.assert_allclose(got["w"], rw["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["b"], rb["b"], rtol=1e-5, atol=1e-6)


def test_zero_momentum_is_sgd_with_the_gsnr_scale():
  p0, grads = {"w": np.ones((2, 2))}, [{"w": G1}, {"w": G2}, {"w": G1}]
  ref = _numpy_sgd_sai(p0, grads, [0.01] * 3, 0.0, 0.01, {"w": _gsnr(G1)})
  out, _ = _run(sgd_sai(momentum=0.0), p0, grads)
  for got, r in zip(out, ref):
    np.testing.assert_allclose(got["w"], r["w"], rtol=1e-6)


def test_single_element_leaf_gets_unit_scale():
  p0 = {"s": np.array([1.0])}
  grads = [{"s": np.array([0.3])}, {"s": np.array([-0.1])}]
  ref = _numpy_sgd_sai(p0, grads, [0.01, 0.01], 0.9, 0.01, {"s": 1.0})
  out, _ = _run(sgd_sai(), p0, grads)
  np.testing.assert_allclose(out[1]["s"], ref[1]["s"], rtol=1e-6)


def test_learning_rate_schedule():
  schedule = optax.linear_schedule(0.02, 0.0, transition_steps=4)
  p0, grads = {"w": np.ones((2, 2))}, [{"w": G1}, {"w": G2}, {"w": -G1}]
  ref = _numpy_sgd_sai(p0, grads, [0.02, 0.015, 0.01], 0.9, 0.01, {"w": _gsnr(G1)})
  out, _ = _run(sgd_sai(learning_rate=schedule), p0, grads)
  for got, r in zip(out, ref):
    np.testing.assert_allclose(got["w"], r["w"], rtol=1e-6)


def test_inject_hyperparams_matches_plain_factory():
  p0, grads = {"w": np.ones((2, 2))}, [{"w": G1}, {"w": G2}, {"w": -G1}]
  plain, _ = _run(sgd_sai(learning_rate=0.03, momentum=0.5), p0, grads)
  injected, state = _run(optax.inject_hyperparams(sgd_sai)(learning_rate=0.03, momentum=0.5),
                         p0, grads)
  chex.assert_trees_all_close(plain, injected, rtol=1e-6)
  assert float(state.hyperparams["momentum"]) == pytest.approx(0.5)


def _v110_reference(p0, grads, lr, mu, wd, normalize_by_max=False):
  """sgd_sai.py v1.1.0 in float64: gsnr = numel ** 0.5 per tensor (set at the
  first step, whatever the gradient), buf_1 = g_1, buf <- mu buf + (1 - mu) g,
  p <- p (1 - lr wd) - lr gsnr buf. With `normalize_by_max` the scores are
  divided by their maximum (the paper's Algorithm 1 applied to these scores)."""
  scales = {k: np.asarray(v).size ** 0.5 for k, v in p0.items()}
  if normalize_by_max:
    top = max(scales.values())
    scales = {k: v / top for k, v in scales.items()}
  return _numpy_sgd_sai(p0, grads, [lr] * len(grads), mu, wd, scales)


@pytest.mark.parametrize("normalize_by_max", [False, True])
def test_v1_1_0_scales_by_sqrt_numel_as_the_later_official_code(normalize_by_max):
  rng = np.random.default_rng(4)
  shapes = {"w": (3, 4), "b": (4,), "s": ()}
  p0 = {k: rng.normal(size=s) for k, s in shapes.items()}
  # A constant first gradient for "b" has std 0: v1.0.3's g-SNR would differ.
  grads = [{k: rng.normal(size=s) * c for k, s in shapes.items()} for c in (3.0, 0.5, 1.0)]
  grads[0]["b"] = np.full(4, 0.7)
  lr, mu, wd = 0.01, 0.9, 0.01
  tx = sgd_sai(learning_rate=lr, momentum=mu, weight_decay=wd, version="v1.1.0",
               normalize_by_max=normalize_by_max)
  with jax.enable_x64(True):
    params = {k: jnp.asarray(v, jnp.float64) for k, v in p0.items()}
    update, state, got = jax.jit(tx.update), tx.init(params), []
    for g in grads:
      u, state = update({k: jnp.asarray(v, jnp.float64) for k, v in g.items()}, state, params)
      params = optax.apply_updates(params, u)
      got.append(jax.tree.map(np.asarray, params))
  want = _v110_reference(p0, grads, lr, mu, wd, normalize_by_max)
  for a, b in zip(got, want):
    for k in b:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-13, atol=1e-15)
  gsnr = [x for x in state if isinstance(x, ScaleByGsnrAtInitState)][0].gsnr
  top = 12 ** 0.5 if normalize_by_max else 1.0
  np.testing.assert_allclose([gsnr["w"], gsnr["b"], gsnr["s"]],
                             np.array([12 ** 0.5, 2.0, 1.0]) / top, rtol=1e-15)
  if not normalize_by_max:  # v1.0.3's g-SNR of the same run (gradkit's unit score for b, s)
    v103 = _numpy_sgd_sai(p0, grads, [lr] * 3, mu, wd,
                          {"w": _gsnr(grads[0]["w"]), "b": 1.0, "s": 1.0})
    assert max(np.max(np.abs(a[k] - b[k])) for a, b in zip(v103, want) for k in b) > 1e-3


def test_unknown_version_raises():
  with pytest.raises(ValueError, match="version"):
    sgd_sai(version="v2")


@pytest.mark.parametrize(
    "hparams", [{"learning_rate": -1e-3}, {"momentum": 1.0}, {"momentum": -0.1},
                {"eps": -1e-8}, {"weight_decay": -0.1}],
)
def test_invalid_hyperparameters_raise(hparams):
  with pytest.raises(ValueError, match=next(iter(hparams))):
    sgd_sai(**hparams)
