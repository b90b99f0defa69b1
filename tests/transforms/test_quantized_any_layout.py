"""quantized on states not laid out like the params: masked, partition, Muon, GaLore, inject.

Oracles: the expected 8-bit leaves are listed by hand per optimizer and
their bytes computed as n codes + 4 ceil(n / block) absmax bytes; the step-2
check bounds the 8-bit AdamW step by interval arithmetic over the codec's
largest rounding error (half the widest gap of the dynamic map, times the
block's absmax), with AdamW's moments written out in numpy.
"""

from __future__ import annotations

import math
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.transforms import (
    NothingQuantizedWarning,
    QuantizedState,
    quantization_plan,
    quantized,
    quantized_view,
)
from gradkit.transforms.quantization import dynamic_map

RNG = np.random.default_rng(0)
SHAPES = {"w": (64, 64), "b": (64,), "emb": {"embedding": (128, 64)}, "head": (64, 128)}
PARAMS = jax.tree.map(lambda s: jnp.asarray(RNG.normal(size=s), jnp.float32), SHAPES,
                      is_leaf=lambda s: isinstance(s, tuple))
GRADS = [jax.tree.map(lambda p: jnp.asarray(RNG.normal(size=p.shape), jnp.float32), PARAMS)
         for _ in range(3)]
MASK = {"w": True, "b": False, "emb": {"embedding": True}, "head": True}
LABELS = {"w": "adam", "b": "adam", "emb": {"embedding": "sgd"}, "head": "sgd"}
BLOCK = 256  # quantized's default, with min_size 4096: "b" (64 elements) stays float32
LR, WD, B1, B2, EPS = 1e-2, 1e-2, 0.9, 0.999, 1e-8


def _partition():
  return optax.partition({"adam": optax.adam(1e-3), "sgd": optax.sgd(1e-2, momentum=0.9)},
                         LABELS)


# inner -> the state paths expected in 8 bits (default keep_fp32: the
# embedding's moments stay float32; "b" is under min_size).
CASES = {
    "masked_adamw": (
        lambda: optax.masked(optax.adamw(1e-3), MASK),
        [".inner_state[0].mu['w']", ".inner_state[0].mu['head']",
         ".inner_state[0].nu['w']", ".inner_state[0].nu['head']"]),
    "partition": (
        _partition,
        [".inner_states['adam'].inner_state[0].mu['w']",
         ".inner_states['adam'].inner_state[0].nu['w']",
         ".inner_states['sgd'].inner_state[0].trace['head']"]),
    "optax_contrib_muon": (
        lambda: optax.contrib.muon(1e-3),
        [".inner_states['muon'].inner_state[0].mu['head']",
         ".inner_states['muon'].inner_state[0].mu['w']"]),
    "gradkit_muon": (
        lambda: gradkit.create("muon"),
        ["[1].inner_states['head'].inner_state[0].mu['head']",
         "[1].inner_states['head'].inner_state[0].nu['head']",
         "[1].inner_states['matrix'].inner_state[0].ema['w']"]),
    # GaLore's rank-8 moments of "w" are (64, 8): not parameter-shaped.
    "gradkit_galore": (
        lambda: gradkit.create("galore", rank=8),
        ["[1].inner_states['head'].inner_state[0].mu['head']",
         "[1].inner_states['head'].inner_state[0].nu['head']"]),
    "inject_hyperparams_adam": (
        lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
        [".inner_state[0].mu['head']", ".inner_state[0].mu['w']",
         ".inner_state[0].nu['head']", ".inner_state[0].nu['w']"]),
}


def _uint8_paths(state):
  return sorted(jax.tree_util.keystr(path)
                for path, leaf in jax.tree_util.tree_flatten_with_path(state.inner)[0]
                if leaf.dtype == jnp.uint8)


def _sizes(state, paths):
  flat = {jax.tree_util.keystr(p): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
  return [math.prod(flat[p].shape) for p in paths]


@pytest.mark.parametrize("case", sorted(CASES))
def test_parameter_shaped_moments_are_8bit_wherever_they_sit(case):
  make, expected = CASES[case]
  fp32 = jax.eval_shape(make().init, PARAMS)
  state = jax.eval_shape(quantized(make()).init, PARAMS)
  assert _uint8_paths(state) == sorted(expected)
  sizes = _sizes(fp32, expected)
  eight = sum(n + 4 * math.ceil(n / BLOCK) for n in sizes)
  assert eight <= 0.27 * sum(4 * n for n in sizes)
  assert gradkit.state_nbytes(state) == gradkit.state_nbytes(fp32) - 4 * sum(sizes) + eight
  assert gradkit.state_nbytes_breakdown(state) == {
      "quantized": eight, "other": gradkit.state_nbytes(fp32) - 4 * sum(sizes)}


def _adam_interval(m1, v1, g2, p1, h_signed, h_unsigned):
  """Bounds of AdamW's step-2 update over every state within the codec's error."""
  def block_absmax(x):
    flat = np.abs(x).ravel()
    blocks = np.pad(flat, (0, -flat.size % BLOCK)).reshape(-1, BLOCK).max(axis=1)
    return np.repeat(blocks, BLOCK)[:flat.size].reshape(x.shape)

  # 1e-6: the absmax is taken in float32 on the optimizer's side.
  dm = h_signed * block_absmax(m1) * (1 + 1e-6)
  dv = h_unsigned * block_absmax(v1) * (1 + 1e-6)
  corners = []
  for m in (m1 - dm, m1 + dm):
    for v in (np.maximum(v1 - dv, 0.0), v1 + dv):
      m_hat = (B1 * m + (1 - B1) * g2) / (1 - B1**2)
      v_hat = (B2 * v + (1 - B2) * g2**2) / (1 - B2**2)
      corners.append(-LR * (m_hat / (np.sqrt(v_hat) + EPS) + WD * p1))
  return np.min(corners, axis=0), np.max(corners, axis=0)


def test_masked_adamw_steps_match_float32_within_the_codec_error():
  fp32 = optax.masked(optax.adamw(LR, B1, B2, EPS, weight_decay=WD), MASK)
  eight = quantized(fp32)
  runs = {}
  for name, tx in (("fp32", fp32), ("8bit", eight)):
    update = jax.jit(tx.update)
    params, state, steps = PARAMS, jax.jit(tx.init)(PARAMS), []
    for g in GRADS:
      u, state = update(g, state, params)
      steps.append((params, u))
      params = optax.apply_updates(params, u)
    runs[name] = steps
  assert isinstance(state, QuantizedState) and len(state.absmax) == 4
  (_, u1_8), (_, u1_32) = runs["8bit"][0], runs["fp32"][0]
  chex.assert_trees_all_equal(u1_8, u1_32)  # step 1 reads exactly-zero state
  h_signed = np.diff(dynamic_map(True).astype(np.float64)).max() / 2
  h_unsigned = np.diff(dynamic_map(False).astype(np.float64)).max() / 2
  (p1, u2_8), (_, u2_32) = runs["8bit"][1], runs["fp32"][1]
  for key in ("w", "head"):
    g1, g2 = (np.asarray(g[key], np.float64) for g in GRADS[:2])
    low, high = _adam_interval((1 - B1) * g1, (1 - B2) * g1**2, g2,
                               np.asarray(p1[key], np.float64), h_signed, h_unsigned)
    got = np.asarray(u2_8[key], np.float64)
    slack = 1e-5 * np.abs(got) + 1e-9
    assert np.all(got >= low - slack) and np.all(got <= high + slack), key
    assert np.any(got != np.asarray(u2_32[key]))  # the 8-bit state is really read
  # The masked-out "b" passes its gradient through.
  np.testing.assert_array_equal(runs["8bit"][2][1]["b"], GRADS[2]["b"])
  moved = np.abs(np.asarray(runs["fp32"][2][0]["w"] - PARAMS["w"])).mean()
  drift = np.abs(np.asarray(runs["8bit"][2][0]["w"] - runs["fp32"][2][0]["w"])).mean()
  assert drift <= 0.05 * moved


def test_keep_fp32_reaches_masked_and_partition_states():
  kinds = {}
  for name, make in (("masked", lambda: optax.masked(optax.adamw(1e-3), MASK)),
                     ("partition", _partition)):
    # The default keeps the embedding; a bool tree keeps the head instead.
    default = jax.eval_shape(quantized(make()).init, PARAMS)
    flags = {"w": False, "b": False, "emb": {"embedding": False}, "head": True}
    by_tree = jax.eval_shape(quantized(make(), keep_fp32=flags).init, PARAMS)
    kinds[name] = ([p for p in _uint8_paths(default) if "emb" in p or "head" in p],
                   [p for p in _uint8_paths(by_tree) if "emb" in p or "head" in p])
  assert kinds["masked"] == (
      [".inner_state[0].mu['head']", ".inner_state[0].nu['head']"],
      [".inner_state[0].mu['emb']['embedding']", ".inner_state[0].nu['emb']['embedding']"])
  assert kinds["partition"] == (
      [".inner_states['sgd'].inner_state[0].trace['head']"],
      [".inner_states['sgd'].inner_state[0].trace['emb']['embedding']"])


def test_same_shaped_parameters_are_told_apart_by_the_path_tail():
  params = {"a": jnp.zeros((64, 64)), "c": jnp.zeros((64, 64))}
  keep = {"a": True, "c": False}
  state = jax.eval_shape(optax.masked(optax.adam(1e-3), {"a": True, "c": True}).init, params)
  masked = jax.eval_shape(optax.masked(optax.adam(1e-3), {"a": False, "c": True}).init, params)
  # A leaf whose path names no parameter (a custom state) is ambiguous when
  # the same-shaped parameters disagree, and follows them when they agree.
  stash = {"stash": jax.ShapeDtypeStruct((64, 64), jnp.float32)}
  plans = {name: {e.path: (e.decision, e.parameter)
                  for e in quantization_plan(tree, params, keep_fp32=flags)}
           for name, tree, flags in (("full", state, keep), ("masked", masked, keep),
                                     ("split", stash, keep),
                                     ("agree", stash, {"a": False, "c": False}))}
  assert plans["full"][".inner_state[0].mu['a']"] == ("keep_fp32", "['a']")
  assert plans["full"][".inner_state[0].nu['c']"] == ("quantized", "['c']")
  assert plans["masked"][".inner_state[0].mu['c']"] == ("quantized", "['c']")
  assert plans["split"] == {"['stash']": ("ambiguous", None)}
  assert plans["agree"] == {"['stash']": ("quantized", None)}


def test_plan_reports_low_rank_small_and_integer_leaves():
  galore = gradkit.create("galore", rank=8)
  plan = {e.path: e for e in quantization_plan(jax.eval_shape(galore.init, PARAMS), PARAMS)}
  matrix = "[1].inner_states['matrix'].inner_state[0]"
  low_rank = plan[f"{matrix}.inner.mu['w']"]
  assert (low_rank.shape, low_rank.decision) == ((64, 8), "not shaped like any parameter")
  small = plan["[1].inner_states['vector'].inner_state[0].nu['b']"]
  assert (small.shape, small.decision, small.parameter) == ((64,), "below min_size", "['b']")
  count = plan[f"{matrix}.inner.count"]
  assert (count.dtype, count.decision) == (jnp.int32, "not floating")
  assert plan[f"{matrix}.projection.key"].decision == "not floating"
  emb = plan["[1].inner_states['embedding'].inner_state[0].mu['emb']['embedding']"]
  assert emb.decision == "keep_fp32"
  assert plan["[1].inner_states['head'].inner_state[0].nu['head']"].decision == "quantized"


def test_init_warns_when_nothing_is_quantized():
  with pytest.warns(NothingQuantizedWarning, match=r"0 leaves kept.*lower min_size"):
    jax.eval_shape(quantized(optax.sgd(0.1, momentum=None)).init, PARAMS)
  tiny = {"w": jnp.zeros((4, 4))}
  with pytest.warns(NothingQuantizedWarning, match=r"3 leaves kept: 2 below min_size, "
                                                   r"1 not floating; min_size=4096"):
    jax.eval_shape(quantized(optax.adam(1e-3)).init, tiny)
  with warnings.catch_warnings():
    warnings.simplefilter("error", NothingQuantizedWarning)
    jax.eval_shape(quantized(optax.adam(1e-3)).init, PARAMS)
    jax.eval_shape(quantized(optax.adam(1e-3), min_size=0).init, tiny)
    # A partition branch that got no leaves has nothing to report.
    jax.eval_shape(quantized(optax.adam(1e-3)).init, {"w": optax.MaskedNode()})


def test_partitioned_muon_update_keeps_its_8bit_leaves_and_equals_step_one():
  tx, twin = quantized(gradkit.create("muon")), gradkit.create("muon")
  state = jax.jit(tx.init)(PARAMS)
  u, new_state = jax.jit(tx.update)(GRADS[0], state, PARAMS)
  want, _ = jax.jit(twin.update)(GRADS[0], twin.init(PARAMS), PARAMS)
  chex.assert_trees_all_close(u, want, rtol=4 * 2.0**-23, atol=1e-12)
  assert _uint8_paths(new_state) == _uint8_paths(state)
  ema = quantized_view(new_state)[1].inner_states["matrix"].inner_state[0].ema["w"]
  assert int(jnp.max(ema.codes)) > 0 and ema.absmax.shape == (16,)


def test_nested_quantized_state_is_left_to_the_inner_wrapper_and_uint8_state_rejected():
  params = {"w": jnp.zeros((16, 16))}
  inner = quantized(optax.adam(1e-3), block_size=64, min_size=0)
  outer = quantized(inner, block_size=64, min_size=0)
  plan = quantization_plan(jax.eval_shape(inner.init, params), params, min_size=0)
  assert {e.decision for e in plan if ".absmax" in e.path} == {"already quantized"}
  g = {"w": jnp.asarray(RNG.normal(size=(16, 16)), jnp.float32)}
  with pytest.warns(NothingQuantizedWarning):
    state = outer.init(params)
  (u_outer, s_outer), (u_inner, s_inner) = (
      jax.jit(tx.update)(g, s, params) for tx, s in ((outer, state), (inner, inner.init(params))))
  chex.assert_trees_all_equal(u_outer, u_inner)
  chex.assert_trees_all_equal(s_outer.inner, s_inner)

  holds_uint8 = optax.GradientTransformation(
      lambda p: {"mask": jnp.zeros((16, 16), jnp.uint8)}, lambda u, s, p=None: (u, s))
  with pytest.raises(ValueError, match="uint8"):
    quantized(holds_uint8).init(params)
