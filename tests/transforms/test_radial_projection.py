"""Oracles for project_radial (AdamP/SGDP's projection with weakened decay)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.radial_projection import project_radial
from oracles import torch_adamp_projection as _torch_projection

EPS = 1e-8


def _step(tx, params, grads):
  return jax.jit(tx.update)(grads, tx.init(params), params)[0]


def _adamp_like(lr, wd):
  return optax.chain(
      project_radial(optax.scale_by_adam(), weight_decay=wd),
      optax.scale_by_learning_rate(lr),
  )


def _f32(x):
  return jnp.asarray(x, jnp.float32)


# Sheet oracles 1-3, PyTorch layout (out, in); Flax kernels are the transposes.
SHEET_ADAMP = {
    "channel_fires": (
        [[1.0, 0.0], [0.0, 2.0]],
        [[0.01, 1.0], [1.0, 0.02]],
        [[-0.001000002, -0.099999999], [-0.099999999, -0.002000001]],
    ),
    "nothing_fires": (
        [[1.0, 0.0], [0.0, 2.0]],
        [[1.0, 0.0], [0.0, 1.0]],
        [[-0.109999999, 0.0], [0.0, -0.119999999]],
    ),
    "layer_fires": (
        [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]],
        [[1.0, 0.0, 1.0, 1.0], [0.0, -0.5, 1.0, 1.0]],
        [[-0.1209999982, 0.0, -0.099999999, -0.099999999],
         [0.0, 0.0579999996, -0.099999999, -0.099999999]],
    ),
}


@pytest.mark.parametrize("case", sorted(SHEET_ADAMP))
def test_sheet_adamp_oracles_in_flax_layout(case):
  p, g, expected = (np.asarray(x) for x in SHEET_ADAMP[case])
  delta_p = _step(_adamp_like(lr=0.1, wd=0.1), _f32(p.T), _f32(g.T))
  np.testing.assert_allclose(np.asarray(delta_p).T, expected, rtol=3e-5, atol=1e-7)


def test_sheet_sgdp_two_step_oracle():
  # SGDP = momentum buffer (optax.trace, dampening 0) with decay wd / (1 - momentum).
  tx = optax.chain(
      project_radial(optax.trace(decay=0.9), weight_decay=1e-5 / (1 - 0.9)),
      optax.scale_by_learning_rate(0.1),
  )
  p = _f32([[1.0, 0.0], [0.0, 2.0]])
  g = _f32([[0.01, 1.0], [1.0, 0.02]])
  state = tx.init(p)
  update = jax.jit(tx.update)
  expected = [
      [[0.999999, -0.1], [-0.1, 1.999998]],
      [[0.9924207017, -0.2894321696], [-0.2894321696, 1.9848414034]],
  ]
  for want in expected:
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p, want, rtol=1e-6, atol=1e-7)


def _case(kind, rng, out=4, fan_in=6):
  """PyTorch-layout (p, g) built so that `kind` is the view that fires."""
  p = rng.normal(size=(out, fan_in))
  g = rng.normal(size=(out, fan_in))
  g -= p * (np.sum(g * p, axis=1, keepdims=True) / np.sum(p * p, axis=1, keepdims=True))
  if kind == "channel":
    g += 1e-3 * p
  elif kind == "layer":
    g[0] = 1e-2 * p[0]
  else:
    g += 0.5 * p
  return p, g


@pytest.mark.parametrize("kind,rows", [("channel", 4), ("layer", 1), ("none", None)])
@pytest.mark.parametrize("seed", [0, 1])
def test_projection_matches_official_rule_and_is_tangential(kind, rows, seed):
  p, g = _case(kind, np.random.default_rng(seed))
  want_d, _, fired_rows = _torch_projection(p, g, np.sign(g))
  assert fired_rows == rows
  tx = project_radial(optax.scale_by_sign())
  d = np.asarray(_step(tx, _f32(p.T), _f32(g.T)), np.float64).T
  np.testing.assert_allclose(d, want_d, rtol=1e-5, atol=1e-6)
  if rows is None:
    np.testing.assert_allclose(d, np.sign(g), rtol=1e-6)
  else:
    # Sheet invariant 5: no radial component left in any row of the fired view.
    y, z = p.reshape(rows, -1), d.reshape(rows, -1)
    p_hat = y / np.linalg.norm(y, axis=1, keepdims=True)
    np.testing.assert_allclose(np.sum(p_hat * z, axis=1), 0.0, atol=1e-5)
    assert np.abs(np.sum(p_hat * np.sign(g).reshape(rows, -1))).max() > 0.1


@pytest.mark.parametrize("kind,rows", [("channel", 4), ("layer", 1), ("none", None)])
@pytest.mark.parametrize("g_scale,p_scale", [(1e30, 1.0), (1.0, 1e25)])
def test_huge_gradients_or_weights_give_the_unscaled_decision(kind, rows, g_scale, p_scale):
  # Their squares overflow float32 (1e60, 1e50). Norms taken naively gave
  # cos = 0 (every view fired, "none" included) for the huge gradient and
  # p_hat = 0 (nothing projected) for the huge weights.
  p, g = _case(kind, np.random.default_rng(0))
  want, _, fired_rows = _torch_projection(p, g, g)
  assert fired_rows == rows
  d = _step(project_radial(optax.identity()), _f32(p.T * p_scale), _f32(g.T * g_scale))
  np.testing.assert_allclose(np.asarray(d, np.float64).T / g_scale, want, rtol=1e-5, atol=1e-6)


def test_channels_are_grouped_by_the_last_flax_axis():
  # Out-channel grouping fires the channel view; grouping by the input axis
  # would not, and falls back to the layer view with a different result.
  p = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
  g = np.array([[0.01, 0.0, 1.0], [0.0, 0.02, 1.0]])
  d = np.sign(g)
  want, _, rows = _torch_projection(p, g, d)
  wrong, _, wrong_rows = _torch_projection(p.T, g.T, d.T)
  assert (rows, wrong_rows) == (2, 1)
  assert np.abs(want - wrong.T).max() > 0.1
  tx = project_radial(optax.scale_by_sign())
  np.testing.assert_allclose(np.asarray(_step(tx, _f32(p.T), _f32(g.T))).T, want, atol=1e-6)
  torch_tx = project_radial(optax.scale_by_sign(), channel_axis=0)
  np.testing.assert_allclose(_step(torch_tx, _f32(p), _f32(g)), want, atol=1e-6)


def test_conv_kernel_channels_are_the_last_axis():
  rng = np.random.default_rng(5)
  p, g = _case("channel", rng, out=3, fan_in=8)
  p, g = p.reshape(3, 2, 2, 2), g.reshape(3, 2, 2, 2)  # torch (out, in, kh, kw)
  want, _, rows = _torch_projection(p, g, np.sign(g))
  assert rows == 3
  to_flax = (2, 3, 1, 0)  # Flax Conv kernel (kh, kw, in, out)
  d = _step(project_radial(optax.scale_by_sign()), _f32(p.transpose(to_flax)),
            _f32(g.transpose(to_flax)))
  np.testing.assert_allclose(np.asarray(d).transpose(3, 2, 0, 1), want, atol=1e-6)


def test_vectors_pass_through_and_decay_uses_ratio_and_mask():
  p_w, g_w = (np.asarray(x) for x in SHEET_ADAMP["channel_fires"][:2])
  params = {"w": _f32(p_w), "b": _f32([1.0, 0.0, 0.0]), "s": _f32(2.0), "v": _f32([3.0, 1.0])}
  # "b" is orthogonal to its gradient yet, being a vector, is never projected.
  grads = {"w": _f32(g_w), "b": _f32([0.0, 1.0, 1.0]), "s": _f32(0.5), "v": _f32([0.1, -0.2])}
  mask = {"w": True, "b": True, "s": True, "v": False}
  tx = project_radial(optax.identity(), wd_ratio=0.25, weight_decay=0.2, mask=mask)
  out = _step(tx, params, grads)
  want_w, ratio, _ = _torch_projection(p_w, g_w, g_w, wd_ratio=0.25)
  assert ratio == 0.25
  np.testing.assert_allclose(out["w"], want_w + 0.2 * 0.25 * p_w, atol=1e-6)
  np.testing.assert_allclose(out["b"], [0.2, 1.0, 1.0], atol=1e-7)
  np.testing.assert_allclose(out["s"], 0.5 + 0.2 * 2.0, atol=1e-7)
  np.testing.assert_allclose(out["v"], [0.1, -0.2], atol=1e-7)


def test_weight_decay_schedule_is_followed():
  tx = project_radial(optax.identity(), weight_decay=lambda count: 0.1 * (count + 1))
  p, g = _f32([1.0, -2.0]), _f32([0.5, 0.5])
  state = tx.init(p)
  for t in range(3):
    u, state = jax.jit(tx.update)(g, state, p)
    np.testing.assert_allclose(u, np.array([0.5, 0.5]) + 0.1 * (t + 1) * np.array([1.0, -2.0]),
                               rtol=1e-6)


def test_zero_parameter_row_is_harmless():
  p = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
  g = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
  want, _, rows = _torch_projection(p, g, g)
  assert rows == 2
  d = _step(project_radial(optax.identity(), channel_axis=0), _f32(p), _f32(g))
  assert np.all(np.isfinite(d))
  np.testing.assert_allclose(d, want, atol=1e-6)


def test_params_are_required():
  tx = project_radial(optax.identity())
  with pytest.raises(ValueError, match="params"):
    tx.update(_f32([1.0]), tx.init(_f32([1.0])))


@pytest.mark.parametrize(
    "hparams",
    [{"delta": -0.1}, {"wd_ratio": -1.0}, {"eps": -1e-8}, {"weight_decay": -1e-2},
     {"channel_axis": 1.5}],
)
def test_invalid_hyperparameters_raise(hparams):
  with pytest.raises(ValueError):
    project_radial(optax.identity(), **hparams)
