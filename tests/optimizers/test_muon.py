"""Tests of the `muon` recipe: optax.contrib.muon as oracle where settings coincide.

Oracles: the COSMOS/Muon sheet's first step (oracle 3), `optax.contrib.muon`
(which routes the same leaves once given `muon_weight_dimension_numbers`),
`optax.adamw` for the fallback leaves, and numpy's polar factor for the
shape of the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

from gradkit.optimizers.muon import muon
from trajectories import run_updates

RNG = np.random.default_rng(11)
DENSE = MuonDimensionNumbers()
CONV = MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)

# One leaf per label: Dense and conv kernels ("matrix"), an embedding table and
# an LM head (AdamW by gradkit's default labels), a bias and a scalar ("vector").
SHAPES = {
    "dense": {"kernel": (6, 10), "bias": (10,)},
    "conv": {"kernel": (3, 3, 2, 5)},
    "embed": {"embedding": (12, 6)},
    "lm_head": {"kernel": (10, 12)},
    "scale": (),
}
# The same routing for optax.contrib.muon: dimension numbers on Muon leaves.
OPTAX_DIMS = {
    "dense": {"kernel": DENSE, "bias": None},
    "conv": {"kernel": CONV},
    "embed": {"embedding": None},
    "lm_head": {"kernel": None},
    "scale": None,
}


def _draw(shape, scale=1.0):
  return jnp.asarray(RNG.normal(size=shape) * scale, jnp.float32)


PARAMS = jax.tree.map(_draw, SHAPES, is_leaf=lambda s: isinstance(s, tuple))
GRADS = [jax.tree.map(lambda s, c=c: _draw(s, c), SHAPES, is_leaf=lambda s: isinstance(s, tuple))
         for c in RNG.uniform(0.1, 3.0, size=6)]


def _assert_histories_close(ours, theirs, atol=2e-5):
  for a, b in zip(ours, theirs):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=atol), a, b)


def test_first_step_is_the_sheet_oracle():
  params = {"w": jnp.zeros((2, 4)), "b": jnp.zeros(4)}
  grads = {"w": jnp.array([[1.0, 2, 3, 4], [0, 1, 0, -1]]), "b": jnp.array([2.0, -1, 0.5, 3])}
  tx = muon(learning_rate=1.0)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  expected_w = [[-0.1927388, -0.4268545, -0.5782165, -0.7295786],
                [-0.0413768, -0.8547682, -0.1241305, 0.6065072]]
  np.testing.assert_allclose(updates["w"], expected_w, atol=2e-5)
  np.testing.assert_allclose(updates["b"], -1.4736842 * np.sign(grads["b"]), atol=2e-5)


@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_optax_muon_with_the_same_routing(nesterov):
  hp = dict(beta=0.9, weight_decay=0.05, adam_b1=0.8, adam_b2=0.99, adam_weight_decay=0.02,
            adam_learning_rate=3e-3, nesterov=nesterov)
  ours = muon(learning_rate=0.05, adam_nesterov=nesterov, **hp)
  theirs = optax.contrib.muon(0.05, muon_weight_dimension_numbers=OPTAX_DIMS, **hp)
  _assert_histories_close(run_updates(ours, PARAMS, GRADS), run_updates(theirs, PARAMS, GRADS))


def test_labelling_every_matrix_reproduces_optax_default_routing():
  def two_d_is_matrix(params):
    return jax.tree.map(lambda p: "matrix" if p.ndim == 2 else "vector", params)

  params = {k: PARAMS[k] for k in ("dense", "embed", "lm_head", "scale")}
  grads = [{k: g[k] for k in params} for g in GRADS]
  ours = muon(learning_rate=0.02, param_labels=two_d_is_matrix)
  theirs = optax.contrib.muon(0.02)
  _assert_histories_close(run_updates(ours, params, grads), run_updates(theirs, params, grads))


def test_default_labels_send_embedding_and_head_to_adamw():
  tx = muon(learning_rate=0.01, adam_learning_rate=1e-3, adam_weight_decay=0.1)
  adamw = optax.adamw(1e-3, weight_decay=0.1, nesterov=True)
  ours = run_updates(tx, PARAMS, GRADS)
  theirs = run_updates(adamw, PARAMS, GRADS)
  for a, b in zip(ours, theirs):
    for path in (("embed", "embedding"), ("lm_head", "kernel"), ("dense", "bias"), ("scale",)):
      x, y = a, b
      for key in path:
        x, y = x[key], y[key]
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_conv_kernel_step_is_the_orthogonalized_fan_in_by_out_view():
  # One step from zero momentum: the debiased Nesterov momentum is g itself,
  # so the step is -lr sqrt(max(1, 5 / 18)) NS5(G) with G = g viewed as
  # (3*3*2, 5) = U S V^T, and NS5(G) = U f^5(S / ||S||) V^T.
  params = {"k": PARAMS["conv"]["kernel"]}
  g = GRADS[0]["conv"]["kernel"]
  tx = muon(learning_rate=1.0)
  updates, _ = jax.jit(tx.update)({"k": g}, tx.init(params), params)
  u, s, vt = np.linalg.svd(np.asarray(g, np.float64).reshape(18, 5), full_matrices=False)
  s = s / np.linalg.norm(s)
  for _ in range(5):
    s = 3.4445 * s - 4.7750 * s**3 + 2.0315 * s**5
  np.testing.assert_allclose(-np.asarray(updates["k"]).reshape(18, 5), u @ np.diag(s) @ vt,
                             atol=3e-5)


def test_wide_matrix_step_is_scaled_by_the_width_ratio():
  params = {"w": jnp.zeros((3, 12))}
  g = {"w": _draw((3, 12))}
  tx = muon(learning_rate=1.0)
  updates, _ = jax.jit(tx.update)(g, tx.init(params), params)
  sv = np.linalg.svd(np.asarray(updates["w"]), compute_uv=False) / 2.0  # sqrt(12 / 3)
  assert sv.min() >= 0.68 and sv.max() <= 1.14


def test_bf16_params_keep_their_dtype_and_follow_float32():
  params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  grads16 = [jax.tree.map(lambda g: g.astype(jnp.bfloat16), g) for g in GRADS[:2]]
  tx = muon(learning_rate=0.01)
  out16 = run_updates(tx, params16, grads16)[-1]
  out32 = run_updates(tx, PARAMS, GRADS[:2])[-1]
  jax.tree.map(lambda x: np.testing.assert_equal(x.dtype, jnp.bfloat16), out16)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x, np.float32), y, atol=0.05), out16, out32)


def test_vector_labelled_matrix_raises_a_clear_error():
  params = {"w": PARAMS["dense"]["kernel"], "b": PARAMS["dense"]["bias"]}
  tx = muon(param_labels={"w": "matrix", "b": "matrix"})
  with pytest.raises(ValueError, match=r"acts on matrices.*\['b'\]"):
    tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("hp", [
    {"learning_rate": -0.02}, {"beta": 1.0}, {"ns_steps": 0}, {"eps": -1.0},
    {"adam_b1": 1.0}, {"adam_b2": -0.5}, {"adam_eps": -1e-8}, {"adam_learning_rate": -1e-3},
    {"weight_decay": -0.1}, {"adam_weight_decay": -0.1}, {"ns_coefficients": (1.0, 2.0)},
])
def test_invalid_hyperparameters_raise(hp):
  with pytest.raises(ValueError):
    muon(**hp)


def _keller_jordan_newton_schulz(g):
  """zeropower_via_newtonschulz5 of KellerJordan/Muon in float64 (torch orientation)."""
  a, b, c = 3.4445, -4.7750, 2.0315
  tall = g.shape[0] > g.shape[1]
  x = g.T if tall else g
  x = x / (np.linalg.norm(x) + 1e-7)
  for _ in range(5):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


@pytest.mark.parametrize("nesterov", [True, False])
def test_official_momentum_and_fallback_follow_keller_jordans_update(nesterov):
  # KellerJordan/Muon, SingleDeviceMuonWithAuxAdam: muon_update (momentum.lerp_(g, 1 - beta),
  # then g.lerp_(momentum, beta) with nesterov, else the momentum; no bias correction; NS5;
  # * max(1, rows/cols)^0.5 on the torch (out, in) weight, the transpose of a Flax (in, out)
  # kernel), p *= 1 - lr wd, p -= lr u; adam_update on the other leaves (bias-corrected,
  # betas (0.9, 0.95), eps 1e-10).
  lr, wd, beta, adam_lr, adam_wd = 0.02, 0.1, 0.95, 3e-4, 0.05
  rng = np.random.default_rng(3)

  def draw():
    return {"dense": {"kernel": rng.normal(size=(6, 10)), "bias": rng.normal(size=10)},
            "proj": {"kernel": rng.normal(size=(10, 4))}}

  params, grads = draw(), [draw() for _ in range(3)]
  tx = muon(learning_rate=lr, beta=beta, eps=1e-7, weight_decay=wd, nesterov=nesterov,
            bias_correction=False, adam_learning_rate=adam_lr, adam_b1=0.9, adam_b2=0.95,
            adam_eps=1e-10, adam_weight_decay=adam_wd, adam_nesterov=False)
  history = run_updates(tx, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params),
                        [jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g) for g in grads])
  w = {"dense": params["dense"]["kernel"].T, "proj": params["proj"]["kernel"].T}  # (out, in)
  momentum = {k: np.zeros_like(v) for k, v in w.items()}
  bias, m1, m2 = params["dense"]["bias"].copy(), np.zeros(10), np.zeros(10)
  for t, g in enumerate(grads, start=1):
    for k in w:
      grad = g[k]["kernel"].T
      momentum[k] = momentum[k] + (1 - beta) * (grad - momentum[k])
      update = grad + beta * (momentum[k] - grad) if nesterov else momentum[k]
      update = _keller_jordan_newton_schulz(update) * max(1, grad.shape[0] / grad.shape[1]) ** 0.5
      w[k] = w[k] * (1 - lr * wd) - lr * update
      np.testing.assert_allclose(history[t - 1][k]["kernel"], w[k].T, rtol=1e-4, atol=2e-5)
    gb = g["dense"]["bias"]
    m1, m2 = m1 + 0.1 * (gb - m1), m2 + 0.05 * (gb**2 - m2)
    step = (m1 / (1 - 0.9**t)) / (np.sqrt(m2 / (1 - 0.95**t)) + 1e-10)
    bias = bias * (1 - adam_lr * adam_wd) - adam_lr * step
    np.testing.assert_allclose(history[t - 1]["dense"]["bias"], bias, rtol=1e-5, atol=1e-7)


COEFFICIENTS = (3.0, -3.2, 1.2)  # not Muon's: the alias must carry them through


def test_optax_s_ns_coeffs_is_an_alias_of_ns_coefficients():
  hp = dict(beta=0.9, weight_decay=0.05, adam_learning_rate=3e-3)
  ours = muon(learning_rate=0.05, ns_coeffs=COEFFICIENTS, **hp)
  spelled = muon(learning_rate=0.05, ns_coefficients=COEFFICIENTS, **hp)
  theirs = optax.contrib.muon(0.05, ns_coeffs=COEFFICIENTS,
                              muon_weight_dimension_numbers=OPTAX_DIMS, **hp)
  history = run_updates(ours, PARAMS, GRADS[:3])
  _assert_histories_close(history, run_updates(theirs, PARAMS, GRADS[:3]))
  _assert_histories_close(history, run_updates(spelled, PARAMS, GRADS[:3]), atol=0.0)
  default = run_updates(muon(learning_rate=0.05, **hp), PARAMS, GRADS[:1])
  assert not np.allclose(history[0]["dense"]["kernel"], default[0]["dense"]["kernel"])
  injected = optax.inject_hyperparams(muon)(learning_rate=0.05, ns_coeffs=COEFFICIENTS, **hp)
  _assert_histories_close(history, run_updates(injected, PARAMS, GRADS[:3]))


def test_ns_coefficients_and_ns_coeffs_together_are_refused():
  with pytest.raises(ValueError, match=r"ns_coefficients=.*ns_coeffs="):
    muon(ns_coefficients=COEFFICIENTS, ns_coeffs=COEFFICIENTS)
