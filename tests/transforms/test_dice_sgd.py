"""DiceSGD: the sheet's hand-computed steps, reduction to SGD/DP-SGD, error buffer, noise."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.dice_sgd import dice_sgd, dice_sgd_aggregate, dp_sgd


def _run(tx, params, per_example_seq):
  update = jax.jit(tx.update)
  state = tx.init(params)
  outs = []
  for g in per_example_seq:
    u, state = update(g, state, params)
    outs.append(jax.device_get(u))
  return outs, state


def _reference(per_example_seq, c1, c2):
  """The paper's recursion in float64 on flat per-example gradients (B, d)."""
  e = np.zeros(per_example_seq[0].shape[1])
  vs, es = [], []
  for g in per_example_seq:
    norms = np.linalg.norm(g, axis=1)
    clipped = g * np.minimum(1.0, c1 / np.maximum(norms, 1e-300))[:, None]
    e_norm = np.linalg.norm(e)
    v = clipped.mean(axis=0) + (e * min(1.0, c2 / e_norm) if e_norm > 0 else e)
    e = e + g.mean(axis=0) - v
    vs.append(v)
    es.append(e)
  return vs, es


def test_sheet_oracle_three_steps():
  g = jnp.array([[3.0, 0.0], [0.2, 0.1], [-0.5, 2.0]])
  tx = dice_sgd_aggregate(1.0, 0.5, 0.0)
  update, state = jax.jit(tx.update), tx.init(jnp.zeros(2))
  for v_expected, e_expected in (
      ([0.3191547917, 0.3567141667], [0.5808452083, 0.3432858333]),
      ([0.7495988662, 0.6111112947], [0.7312463422, 0.4321745386]),
      ([0.7495988662, 0.6111112947], [0.881647476, 0.5210632439])):
    v, state = update(g, state)
    np.testing.assert_allclose(v, v_expected, rtol=1e-5)
    np.testing.assert_allclose(state.error, e_expected, rtol=1e-5)


def test_error_buffer_holds_what_clipping_removed():
  rng = np.random.default_rng(0)
  seq = [rng.normal(size=(5, 7)) * rng.uniform(0.2, 3.0, size=(5, 1)) for _ in range(6)]
  params = {"a": jnp.zeros((3,)), "b": jnp.zeros((2, 2))}

  def as_tree(g):  # global norm over both leaves: split one flat vector in two
    return {"a": jnp.asarray(g[:, :3], jnp.float32),
            "b": jnp.asarray(g[:, 3:].reshape(5, 2, 2), jnp.float32)}

  tx = dice_sgd_aggregate(1.0, 0.7, 0.0)
  update, state = jax.jit(tx.update), tx.init(params)
  vs, es = _reference(seq, 1.0, 0.7)
  total_v, total_g = 0.0, 0.0
  for g, v_ref, e_ref in zip(seq, vs, es):
    u, state = update(as_tree(g), state, params)
    flat_u = np.concatenate([u["a"], u["b"].ravel()])
    flat_e = np.concatenate([state.error["a"], state.error["b"].ravel()])
    np.testing.assert_allclose(flat_u, v_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat_e, e_ref, rtol=1e-5, atol=1e-6)
    total_v, total_g = total_v + flat_u, total_g + g.mean(axis=0)
    np.testing.assert_allclose(total_v + flat_e, total_g, rtol=1e-5, atol=1e-5)  # telescoping


def test_large_thresholds_and_no_noise_is_sgd_on_the_mean():
  rng = np.random.default_rng(1)
  seq = [jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(5)]
  params = jnp.zeros(3)
  dice, state = _run(dice_sgd(0.05, 1e6, 1e6, 0.0, momentum=0.9), params, seq)
  sgd, _ = _run(optax.sgd(0.05, momentum=0.9), params, [g.mean(axis=0) for g in seq])
  for a, b in zip(dice, sgd):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(state[0].error, 0.0, atol=1e-6)


def test_no_feedback_equals_optax_clipped_mean_and_dp_sgd():
  rng = np.random.default_rng(2)
  seq = [jnp.asarray(rng.normal(size=(6, 4)) * 2.0, jnp.float32) for _ in range(3)]
  params = jnp.zeros(4)
  dice, _ = _run(dice_sgd_aggregate(0.5, 0.0, 0.0), params, seq)
  optax_dp, _ = _run(optax.contrib.differentially_private_aggregate(0.5, 0.0, key=0), params, seq)
  for a, b in zip(dice, optax_dp):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  baseline, _ = _run(dp_sgd(0.1, 0.5, 0.0, seed=3), params, seq)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # optax's deprecated `seed`
    reference, _ = _run(optax.contrib.dpsgd(0.1, 0.5, 0.0, seed=3), params, seq)
  for a, b in zip(baseline, reference):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _measured_std(tx, batch, size):
  zeros = jnp.zeros((batch, size))
  outs, state = _run(tx, jnp.zeros(size), [zeros, zeros])
  return outs, state


@pytest.mark.parametrize("c1, c2", [(0.5, 1.0), (1.0, 0.25), (0.5, 0.0)])
def test_noise_std_is_the_dice_sgd_calibration(c1, c2):
  # Official code (DiceSGD/optimizers_utils.py): std sigma * C1 * sqrt(1 + 2 C2/C1) on the
  # clipped sum, i.e. sigma * sqrt(C1^2 + 2 C1 C2) / B on the mean; C2 = 0 is DP-SGD's sigma C1 / B.
  sigma, batch, size = 2.0, 4, 40_000
  outs, state = _measured_std(dice_sgd_aggregate(c1, c2, sigma, seed=7), batch, size)
  std = sigma * np.sqrt(c1**2 + 2 * c1 * c2) / batch
  # Sample std of n normals has relative sd ~ 1/sqrt(2n) = 0.35%; allow 6 of those.
  for out in outs:
    assert abs(np.std(out) / std - 1) < 6 / np.sqrt(2 * size)
    assert abs(np.mean(out)) < 6 * std / np.sqrt(size)
  assert np.corrcoef(outs[0], outs[1])[0, 1] < 0.05  # fresh noise each step
  np.testing.assert_allclose(state.error, 0.0)  # the buffer never sees the noise
  again, _ = _run(dice_sgd_aggregate(c1, c2, sigma, seed=7), jnp.zeros(size),
                  [jnp.zeros((batch, size))])
  np.testing.assert_array_equal(again[0], outs[0])


def test_dp_sgd_noise_calibration_keeps_sigma_c1():
  sigma, c1, batch, size = 2.0, 0.5, 4, 40_000
  tx = dice_sgd_aggregate(c1, 1.0, sigma, seed=7, noise_calibration="dp_sgd")
  outs, _ = _measured_std(tx, batch, size)
  assert abs(np.std(outs[0]) / (sigma * c1 / batch) - 1) < 6 / np.sqrt(2 * size)
  with pytest.raises(ValueError, match="noise_calibration"):
    dice_sgd_aggregate(c1, 1.0, sigma, noise_calibration="opacus")


def test_dice_sgd_chain_uses_the_calibration():
  sigma, c1, c2, batch, size = 1.5, 1.0, 2.0, 2, 40_000
  u, _ = _run(dice_sgd(1.0, c1, c2, sigma, seed=3), jnp.zeros(size), [jnp.zeros((batch, size))])
  std = sigma * np.sqrt(c1**2 + 2 * c1 * c2) / batch  # sqrt(5) x DP-SGD's
  assert abs(np.std(u[0]) / std - 1) < 6 / np.sqrt(2 * size)


@pytest.mark.parametrize("kwargs", [
    dict(clip_threshold=-1.0), dict(feedback_clip_threshold=-0.1), dict(noise_multiplier=-1.0),
    dict(learning_rate=-0.1)])
def test_invalid_hyperparameters(kwargs):
  args = dict(learning_rate=0.1, clip_threshold=1.0, feedback_clip_threshold=1.0,
              noise_multiplier=1.0) | kwargs
  with pytest.raises(ValueError):
    dice_sgd(**args)


def test_per_example_axis_is_required():
  tx = dice_sgd_aggregate(1.0, 1.0, 0.0)
  params = {"a": jnp.zeros(3), "b": jnp.zeros(())}
  with pytest.raises(ValueError, match="per-example"):
    tx.update({"a": jnp.zeros((2, 3)), "b": jnp.zeros(())}, tx.init(params))
