"""Oracles for SCALE (sheet scale.md; official scale_optimizer.py ported to float64 numpy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.scale import scale
from trajectories import f32, run_updates, run_updates_and_state

# Sheet oracles 1 and 3 (PyTorch layout (out=2, in=3)); Flax kernels are the transposes.
G1 = np.asarray([[1.0, 2.0, 2.0], [0.0, -3.0, 4.0]])
G2 = np.asarray([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
U1 = np.asarray([[0.5773503, 1.1547005, 1.1547005], [0.0, -1.0392305, 1.3856406]])
HEAD_STEP_2 = np.asarray([[1.3017011, 0.8079524, 0.8079524],
                          [0.3460643, -0.5883093, 1.5918956]])


def _column_normalize(g):
  """float64: divide each column of a Flax-layout gradient by max(its RMS, 1e-8)."""
  g = np.asarray(g, np.float64).reshape(-1, np.shape(g)[-1])
  return g / np.maximum(np.sqrt(np.mean(g * g, axis=0, keepdims=True)), 1e-8)


def _hf_adamw(params, grads_seq, lrs, wd, b1=0.9, b2=0.999, eps=1e-8):
  """The official 1-D branch in float64: eps on the uncorrected sqrt(v), decay (1 - lr wd)."""
  p = np.asarray(params, np.float64)
  m, v = np.zeros_like(p), np.zeros_like(p)
  history = []
  for t, (g, lr) in enumerate(zip(grads_seq, lrs), start=1):
    g = np.asarray(g, np.float64)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    p = (1 - lr * wd) * p - step * m / (np.sqrt(v) + eps)
    history.append(p)
  return history


def test_sheet_oracle_1_matrix_direction():
  g = {"w": f32(G1.T)}
  u, _ = jax.jit(scale(learning_rate=1.0).update)(g, scale().init(g), g)
  np.testing.assert_allclose(-u["w"], U1.T, atol=2e-6)
  np.testing.assert_allclose(np.sqrt(np.mean(np.square(u["w"]), axis=0)), 1.0, atol=1e-6)


def test_sheet_oracle_2_embedding_over_the_vocabulary():
  e = {"embed": {"embedding": jnp.asarray([[1.0, 0.0], [2.0, 1.0], [2.0, -1.0]])}}
  tx = scale(learning_rate=1.0)
  u, _ = jax.jit(tx.update)(e, tx.init(e), e)
  np.testing.assert_allclose(
      -u["embed"]["embedding"],
      [[0.5773503, 0.0], [1.1547005, 1.2247449], [1.1547005, -1.2247449]], atol=2e-6)


def test_sheet_oracle_3_momentum_only_on_the_head():
  params = {"lm_head": {"kernel": f32(np.zeros((3, 2)))}, "w": f32(np.zeros((3, 2)))}
  grads = [{"lm_head": {"kernel": f32(g.T)}, "w": f32(g.T)} for g in (G1, G2)]
  history = run_updates(scale(learning_rate=1.0), params, grads)
  np.testing.assert_allclose(-history[0]["lm_head"]["kernel"], U1.T, atol=2e-6)
  np.testing.assert_allclose(history[0]["lm_head"]["kernel"] - history[1]["lm_head"]["kernel"],
                             HEAD_STEP_2.T, atol=5e-6)
  # A plain matrix has no momentum: its second step is the normalized g2 alone.
  np.testing.assert_allclose(history[0]["w"] - history[1]["w"], _column_normalize(G2.T),
                             atol=5e-6)


def test_conv_kernel_is_normalized_over_all_leading_axes():
  g = np.random.default_rng(0).normal(size=(3, 3, 2, 4))
  tree = {"conv": f32(g)}
  u, _ = jax.jit(scale(learning_rate=1.0).update)(tree, scale().init(tree), tree)
  np.testing.assert_allclose(-u["conv"], _column_normalize(g).reshape(g.shape), atol=1e-5)


def test_weight_decay_matches_the_official_multiplicative_form():
  rng = np.random.default_rng(1)
  p0 = rng.normal(size=(4, 3))
  grads = [rng.normal(size=(4, 3)) for _ in range(3)]
  lr, wd = 0.05, 0.3
  got = run_updates(scale(learning_rate=lr, weight_decay=wd), {"w": f32(p0)},
                    [{"w": f32(g)} for g in grads])
  p = p0
  for g, step in zip(grads, got):
    p = (1 - lr * wd) * p - lr * _column_normalize(g)
    np.testing.assert_allclose(step["w"], p, rtol=1e-5, atol=1e-6)


def test_vectors_get_hf_adamw_at_the_adam_learning_rate():
  # Gradients ~1e-6 make eps placement visible (eps / sqrt(1 - b2^t) ~ 3e-7 at t = 1).
  rng = np.random.default_rng(2)
  p0 = {"b": rng.normal(size=(5,)), "s": rng.normal(size=()), "w": rng.normal(size=(5, 2))}
  grads = [{k: rng.normal(size=np.shape(v)) * 1e-6 for k, v in p0.items()} for _ in range(5)]
  lr, adam_lr, wd = 1e-3, 2e-2, 0.1
  got = run_updates(scale(learning_rate=lr, adam_learning_rate=adam_lr, weight_decay=wd),
                    f32(p0), [f32(g) for g in grads])
  for key in ("b", "s"):
    want = _hf_adamw(p0[key], [g[key] for g in grads], [adam_lr] * 5, wd)
    for step, w in zip(got, want):
      np.testing.assert_allclose(step[key], w, rtol=1e-5, atol=1e-7)
  torch_style = run_updates(optax.adamw(adam_lr, eps=1e-8, weight_decay=wd), f32(p0["b"]),
                            [f32(g["b"]) for g in grads])
  assert np.max(np.abs(torch_style[0] - got[0]["b"])) > 1e-3
  # The matrix moves at lr, not adam_lr.
  np.testing.assert_allclose(got[0]["w"], (1 - lr * wd) * p0["w"] - lr * _column_normalize(
      grads[0]["w"]), rtol=1e-5, atol=1e-6)


def test_adam_learning_rate_defaults_to_the_matrix_schedule():
  rng = np.random.default_rng(3)
  p0 = {"b": rng.normal(size=(4,)), "w": rng.normal(size=(4, 3))}
  grads = [{k: rng.normal(size=np.shape(v)) for k, v in p0.items()} for _ in range(4)]
  schedule = optax.linear_schedule(1e-2, 1e-3, 4)
  lrs = [float(schedule(t)) for t in range(4)]
  for kwargs, adam_lrs in (({}, lrs),
                           ({"adam_learning_rate": optax.linear_schedule(0.2, 0.02, 4)},
                            [20 * x for x in lrs])):
    got = run_updates(scale(learning_rate=schedule, **kwargs), f32(p0), [f32(g) for g in grads])
    want = _hf_adamw(p0["b"], [g["b"] for g in grads], adam_lrs, 0.0)
    p = p0["w"]
    for g, lr, step, w in zip(grads, lrs, got, want):
      # float32 bias correction (as in optax) costs ~7e-6 relative on a step.
      np.testing.assert_allclose(step["b"], w, rtol=1e-5, atol=5e-6)
      p = p - lr * _column_normalize(g["w"])
      np.testing.assert_allclose(step["w"], p, rtol=1e-5, atol=1e-6)


def _llama_like_tree():
  return {
      "embed": {"embedding": jnp.zeros((50, 8))},
      "layer": {"attn": {"kernel": jnp.zeros((8, 16))}, "mlp": {"kernel": jnp.zeros((16, 8))},
                "norm": {"scale": jnp.zeros(8)}, "bias": jnp.zeros(16)},
      "lm_head": {"kernel": jnp.zeros((8, 50))},
  }


def test_state_bytes_only_head_and_vectors():
  params = _llama_like_tree()
  state = scale().init(params)
  head, vectors = 8 * 50, 8 + 16
  # float32 head momentum; AdamW mu and nu; the int32 counts of the ema and of AdamW.
  assert gradkit.state_nbytes(state) == 4 * head + 2 * 4 * vectors + 2 * 4
  del params["lm_head"]
  assert gradkit.state_nbytes(scale().init(params)) == 2 * 4 * vectors + 2 * 4


def test_bfloat16_params_keep_their_dtype():
  rng = np.random.default_rng(4)
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _llama_like_tree())
  grads = jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.bfloat16), params)
  history, state = run_updates_and_state(scale(learning_rate=1.0), params, [grads, grads])
  jax.tree.map(lambda p, q: np.testing.assert_equal(p.dtype, q.dtype), history[-1], params)
  # The head momentum stays in the params' dtype, as in the official code.
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state)
             if getattr(x, "ndim", 0) == 2)
  step = np.asarray(params["layer"]["attn"]["kernel"], np.float32) - np.asarray(
      history[0]["layer"]["attn"]["kernel"], np.float32)
  g = np.asarray(grads["layer"]["attn"]["kernel"], np.float64)
  np.testing.assert_allclose(step, _column_normalize(g), atol=3e-2, rtol=1e-2)


def test_wrong_rank_leaf_labelled_head_raises():
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  tx = scale(param_labels={"w": "matrix", "b": "head"})
  with pytest.raises(ValueError, match=r"ndim >= 2.*\['b'\]"):
    tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("hparams", [
    {"momentum": 1.0}, {"momentum": -0.1}, {"b1": 1.0}, {"b2": 1.5}, {"eps": -1.0},
    {"adam_learning_rate": -1e-3}, {"weight_decay": -0.1},
])
def test_invalid_hyperparameters_raise(hparams):
  with pytest.raises(ValueError):
    scale(**hparams)
