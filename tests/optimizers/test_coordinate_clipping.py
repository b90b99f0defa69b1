"""sgd_clip and adam_clip against optax (fraction 0) and float64 numpy steps."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.optimizers.coordinate_clipping import adam_clip, sgd_clip

P0 = {"w": np.array([[0.5, -1.0, 2.0], [1.5, 0.2, -0.3]]), "b": np.array([0.1, -0.4, 3.0, 0.0])}
G1 = {"w": np.array([[0.1, -5.0, 0.3], [2.0, -0.05, 0.7]]), "b": np.array([-1.2, 0.0, 4.0, 0.2])}
G2 = {"w": np.array([[1.0, 0.5, -0.25], [-3.0, 0.6, 0.1]]), "b": np.array([0.3, -0.8, 0.05, 6.0])}
# float32 1 - 0.999 carries a 1.3e-5 relative error, which Adam's sqrt halves.
ADAM_TOL = {"rtol": 2e-5, "atol": 1e-6}


def _clip(g, fraction):
  """Brute-force global clip over the tree (numpy sort, float64)."""
  flat = np.sort(np.abs(np.concatenate([g["w"].ravel(), g["b"]])))[::-1]
  index = int(flat.size * fraction)
  tau = 0.0 if index >= flat.size else flat[index]
  return {k: np.clip(v, -tau, tau) for k, v in g.items()}


def _f32(tree):
  return {k: jnp.asarray(v, jnp.float32) for k, v in tree.items()}


def _run(tx, grads, params=P0):
  params = _f32(params)
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    g = g(params) if callable(g) else _f32(g)
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out, state


def _quadratic_grads(steps):
  """Gradients of a fixed quadratic at the current params, plus noise."""
  rng = np.random.default_rng(0)
  noise = [_f32({k: rng.normal(size=v.shape) for k, v in P0.items()}) for _ in range(steps)]
  scales = {"w": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.arange(1.0, 5.0)}
  return [lambda p, n=n: jax.tree.map(lambda x, s, e: s * x + e, p, scales, n) for n in noise]


def test_sgd_clip_zero_fraction_is_torch_sgd_over_50_steps():
  grads = _quadratic_grads(50)
  mask = {"w": True, "b": False}
  ours, _ = _run(sgd_clip(learning_rate=0.02, momentum=0.9, fraction=0.0, weight_decay=0.1,
                          mask=mask), grads)
  ref = optax.chain(optax.add_decayed_weights(0.1, mask), optax.sgd(0.02, momentum=0.9))
  theirs, _ = _run(ref, grads)
  chex.assert_trees_all_close(ours[-1], theirs[-1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(ours[-1]["w"], P0["w"], atol=1e-2)


def test_adam_clip_zero_fraction_is_optax_adamw_over_50_steps():
  grads = _quadratic_grads(50)
  ours, _ = _run(adam_clip(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-6, fraction=0.0,
                           weight_decay=0.1), grads)
  theirs, _ = _run(optax.adamw(0.01, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1), grads)
  chex.assert_trees_all_close(ours[-1], theirs[-1], rtol=1e-5, atol=1e-6)


def _numpy_sgd_clip(lrs, mu, fraction, wd):
  p, buf, out = dict(P0), None, []
  for g, lr in zip([G1, G2], lrs):
    d = {k: v + wd * p[k] for k, v in _clip(g, fraction).items()}
    buf = d if buf is None else {k: mu * buf[k] + d[k] for k in d}
    p = {k: p[k] - lr * buf[k] for k in p}
    out.append(p)
  return out


def _numpy_adam_clip(lrs, b1, b2, eps, fraction, wd):
  p, m, v, out = dict(P0), {k: 0.0 for k in P0}, {k: 0.0 for k in P0}, []
  for t, (g, lr) in enumerate(zip([G1, G2], lrs), start=1):
    gc = _clip(g, fraction)
    m = {k: b1 * m[k] + (1 - b1) * gc[k] for k in p}
    v = {k: b2 * v[k] + (1 - b2) * g[k] ** 2 for k in p}
    p = {k: p[k] - lr * ((m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
                         + wd * p[k]) for k in p}
    out.append(p)
  return out


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_sgd_clip_two_steps_by_hand(fraction):
  # d = 10 coordinates: fraction 0.1 clips the -5 (tau = 4 at step 1, 3 at step 2).
  expected = _numpy_sgd_clip([0.1, 0.1], 0.9, fraction, 0.01)
  got, _ = _run(sgd_clip(learning_rate=0.1, momentum=0.9, fraction=fraction,
                         weight_decay=0.01), [G1, G2])
  for g, e in zip(got, expected):
    chex.assert_trees_all_close(g, e, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_adam_clip_two_steps_by_hand(fraction):
  expected = _numpy_adam_clip([0.1, 0.1], 0.9, 0.999, 1e-8, fraction, 0.05)
  got, _ = _run(adam_clip(learning_rate=0.1, fraction=fraction, weight_decay=0.05), [G1, G2])
  for g, e in zip(got, expected):
    chex.assert_trees_all_close(g, e, **ADAM_TOL)


def test_defaults():
  got, state = _run(gradkit.create("sgd_clip"), [G1, G2])
  chex.assert_trees_all_close(got[-1], _numpy_sgd_clip([5e-3] * 2, 0.0, 0.1, 0.0)[-1], rtol=1e-6)
  assert gradkit.state_nbytes(state) == 0  # momentum 0 keeps no buffer, as torch.
  got, _ = _run(gradkit.create("adam_clip"), [G1, G2])
  chex.assert_trees_all_close(got[-1], _numpy_adam_clip([1e-3] * 2, 0.9, 0.999, 1e-8, 0.5, 0.0)[-1],
                              **ADAM_TOL)


def test_learning_rate_schedules():
  schedule = optax.linear_schedule(0.1, 0.0, transition_steps=4)
  got, _ = _run(sgd_clip(learning_rate=schedule, momentum=0.9, fraction=0.1), [G1, G2])
  chex.assert_trees_all_close(got[-1], _numpy_sgd_clip([0.1, 0.075], 0.9, 0.1, 0.0)[-1],
                              rtol=1e-6)
  got, _ = _run(adam_clip(learning_rate=schedule, fraction=0.5), [G1, G2])
  chex.assert_trees_all_close(got[-1], _numpy_adam_clip([0.1, 0.075], 0.9, 0.999, 1e-8, 0.5,
                                                        0.0)[-1], **ADAM_TOL)


@pytest.mark.parametrize("factory", [sgd_clip, adam_clip])
@pytest.mark.parametrize("static", [("fraction",), ()], ids=["static", "traced"])
def test_inject_hyperparams_matches_plain_factory(factory, static):
  hparams = {"learning_rate": 0.05, "fraction": 0.1, "weight_decay": 0.01}
  if factory is sgd_clip:
    hparams["momentum"] = 0.9
  plain, _ = _run(factory(**hparams), [G1, G2, G1])
  injected, state = _run(optax.inject_hyperparams(factory, static_args=static)(**hparams),
                         [G1, G2, G1])
  chex.assert_trees_all_close(plain, injected, **ADAM_TOL)
  assert ("fraction" in state.hyperparams) == (not static)


@pytest.mark.parametrize("factory", [sgd_clip, adam_clip])
@pytest.mark.parametrize(
    "hparams", [{"learning_rate": -1.0}, {"fraction": -0.1}, {"fraction": 1.1},
                {"weight_decay": -0.1}, {"threshold_scale": -1.0}],
)
def test_invalid_hyperparameters_raise(factory, hparams):
  with pytest.raises(ValueError, match=next(iter(hparams))):
    factory(**hparams)


@pytest.mark.parametrize(
    "build", [lambda: sgd_clip(momentum=1.0), lambda: adam_clip(b1=1.0), lambda: adam_clip(b2=-0.5),
              lambda: adam_clip(eps=-1e-8)],
)
def test_invalid_moment_hyperparameters_raise(build):
  with pytest.raises(ValueError):
    build()
