"""float64 runs follow float64 oracles: no constant, step count or buffer is forced to float32.

Each oracle is the paper's (or official code's) rule re-derived in numpy
float64 here, not gradkit's code. Everything runs inside `jax.enable_x64`, as
tests/test_sharding.py does for its float64 methods, so arrays made in the
test are float64 and the flag is restored afterwards. Tolerances: 1e-12
relative to the largest entry of the compared step; a float32 constant
anywhere in the path shows up as 1e-8 or more (1 - 0.999 in float32 is
9.99987e-4: 6e-6 of the first Adam-style step).
"""

from __future__ import annotations

import fractions
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.registry import get_factory
from gradkit.transforms import (
    mix_gradients,
    module_dissimilarity,
    optimistic_multiplicative_weights,
    scale_by_agvm,
    scale_by_hypergradient_lr,
)

RTOL = 1e-12


def _steps(tx, params, grads, **extra):
  """Parameter changes p_t - p_{t-1} of a jitted run, as numpy float64 trees."""
  update = jax.jit(functools.partial(tx.update, **extra))
  state = tx.init(params)
  out = []
  for g in grads:
    u, state = update(g, state, params)
    for leaf in jax.tree.leaves(u):
      assert leaf.dtype == jnp.float64
    params = optax.apply_updates(params, u)
    out.append(jax.tree.map(np.asarray, u))
  return out


def _assert_steps_close(got, want, rtol=RTOL):
  for t, (a, b) in enumerate(zip(got, want)):
    for k in b:
      scale = np.max(np.abs(b[k]))
      err = np.max(np.abs(np.asarray(a[k]) - b[k]))
      assert err <= rtol * scale, f"step {t + 1}, leaf {k}: {err / scale:.3g} relative"


def _problem(seed, steps, shapes=None):
  rng = np.random.default_rng(seed)
  shapes = shapes or {"w": (3, 4), "b": (4,)}
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  grads = [{k: rng.normal(size=s) * scale for k, s in shapes.items()}
           for scale in rng.uniform(0.5, 2.0, size=steps)]
  return params, grads


def _to_jax(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def _diffgrad_oracle(grads, lr, b1, b2, eps):
  """diffGrad_v2.py (shivram1987/diffGrad), weight decay 0: the step -lr * ... per leaf."""
  out, m, v, prev = [], {}, {}, {}
  for t, g in enumerate(grads, start=1):
    step = {}
    for k, gk in g.items():
      m[k] = b1 * m.get(k, 0.0) + (1 - b1) * gk
      v[k] = b2 * v.get(k, 0.0) + (1 - b2) * gk * gk
      xi = 1.0 / (1.0 + np.exp(-np.abs(prev.get(k, 0.0) - gk)))
      prev[k] = gk
      step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
      step[k] = -step_size * xi * m[k] / (np.sqrt(v[k]) + eps)
    out.append(step)
  return out


def _rectified_adabelief_oracle(grads, lr, b1, b2, eps):
  """adabelief-pytorch 0.2 with rectify=True (degenerated_to_sgd), weight decay 0.

  rho_t is taken in exact rational arithmetic of the double b2: its direct
  float64 form (the official code's) cancels two ~2000-sized terms and is
  2e-12 off near the threshold, above this file's tolerance.
  """
  out, m, s = [], {}, {}
  rho_inf = 2.0 / (1.0 - b2) - 1.0
  exact_b2 = fractions.Fraction(b2)
  for t, g in enumerate(grads, start=1):
    rho = float(2 / (1 - exact_b2) - 1 - 2 * t * exact_b2**t / (1 - exact_b2**t))
    step = {}
    for k, gk in g.items():
      m[k] = b1 * m.get(k, 0.0) + (1 - b1) * gk
      s[k] = b2 * s.get(k, 0.0) + (1 - b2) * (gk - m[k]) ** 2 + eps
      if rho >= 5.0:
        r = math.sqrt((1 - b2**t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho
                      * rho_inf / (rho_inf - 2)) / (1 - b1**t)
        step[k] = -lr * r * m[k] / (np.sqrt(s[k]) + eps)
      else:
        step[k] = -lr * m[k] / (1 - b1**t)
    out.append(step)
  return out


def test_diffgrad_float64_matches_a_float64_oracle():
  with jax.enable_x64(True):
    params, grads = _problem(0, 3)
    tx = gradkit.create("diffgrad", learning_rate=1e-2)
    got = _steps(tx, _to_jax(params), _to_jax(grads))
  _assert_steps_close(got, _diffgrad_oracle(grads, 1e-2, 0.9, 0.999, 1e-8))


@pytest.mark.parametrize("name", ["adabelief", "adabelief8bit"])
def test_rectified_adabelief_float64_matches_a_float64_oracle(name):
  """Eight steps: the first ones are momentum SGD, from rho_t >= 5 on (t = 6
  at b2 = 0.999) the rectified adaptive step. adabelief8bit's leaves are
  below its min_size, so their state stays in the params' dtype."""
  with jax.enable_x64(True):
    params, grads = _problem(1, 8)
    tx = gradkit.create(name, learning_rate=1e-2)
    got = _steps(tx, _to_jax(params), _to_jax(grads))
  want = _rectified_adabelief_oracle(grads, 1e-2, 0.9, 0.999, 1e-16)
  _assert_steps_close(got, want)


@pytest.mark.parametrize("name", ["galore", "natural_galore", "apollo", "scale"])
def test_adam_fallback_of_matrix_methods_float64_matches_a_float64_oracle(name):
  """A vector leaf goes to the fallback Adam with eps added to the
  uncorrected sqrt(v) (diffGrad's rule without the friction)."""
  lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-6
  with jax.enable_x64(True):
    params, grads = _problem(2, 3, {"b": (5,)})
    tx = gradkit.create(name, learning_rate=lr, b1=b1, b2=b2, eps=eps)
    got = _steps(tx, _to_jax(params), _to_jax(grads))
  want, m, v = [], 0.0, 0.0
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g["b"]
    v = b2 * v + (1 - b2) * g["b"] ** 2
    want.append({"b": -lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)})
  _assert_steps_close(got, want)


class _Regression64:
  """f(W, b) = mean ||x W + b - y||^2, everything float64 (call inside enable_x64)."""

  def __init__(self, seed=0, n=16, d_in=6, d_out=3):
    rng = np.random.default_rng(seed)
    self.x = jnp.asarray(rng.normal(size=(n, d_in)) * np.geomspace(1, 4, d_in))
    self.y = jnp.asarray(rng.normal(size=(n, d_out)))
    self.params = {"w": jnp.asarray(rng.normal(size=(d_in, d_out)) * 0.1),
                   "b": jnp.zeros((d_out,), jnp.float64)}

  def loss(self, params):
    return jnp.mean(jnp.sum((self.x @ params["w"] + params["b"] - self.y) ** 2, axis=-1))


def _trajectory(tx, problem, steps, **extra):
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))
  params, state, out = problem.params, tx.init(problem.params), []
  for _ in range(steps):
    u, state = update(jax.grad(problem.loss)(params), state, params)
    params = optax.apply_updates(params, u)
    out.append(jax.tree.map(np.asarray, u))
  return out, state


@pytest.mark.parametrize("name", ["approx_newton", "sgd_sai", "cosmos", "galore",
                                  "natural_galore", "apollo", "frugal"])
def test_injected_float64_run_matches_the_plain_float64_run(name):
  """Under x64 an injected hyperparameter is a float64 array: approx_newton's
  while_loop carry and sgd_sai's lax.cond branches used to split into
  float32 and float64 (a TypeError), and the low-rank methods computed in
  float32 with float64 constants mixed in (8e-6 apart from the plain run)."""
  factory = get_factory(name)
  with jax.enable_x64(True):
    problem = _Regression64()
    extra = {"obj_fn": problem.loss} if name == "approx_newton" else {}
    plain, plain_state = _trajectory(factory(learning_rate=0.01), problem, 3, **extra)
    injected, _ = _trajectory(
        optax.inject_hyperparams(factory)(learning_rate=0.01), problem, 3, **extra)
    for leaf in jax.tree.leaves(plain_state):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float64, (name, leaf.dtype)
  _assert_steps_close(injected, plain)


def test_sgd_sai_float64_matches_the_official_rule():
  """SGD-SaI (AnonymousAlethiometer/SGD_SaI): g-SNR ||g|| / (std(g, ddof=1) + eps)
  per leaf from the first gradient; m_1 = g_1, m <- b m + (1 - b) g;
  p <- p (1 - lr wd) - lr gsnr m."""
  lr, beta, eps, wd = 1e-2, 0.9, 1e-8, 1e-2
  params, grads = _problem(3, 3)
  with jax.enable_x64(True):
    tx = gradkit.create("sgd_sai", learning_rate=lr, momentum=beta, eps=eps, weight_decay=wd)
    got = _steps(tx, _to_jax(params), _to_jax(grads))
  gsnr = {k: np.linalg.norm(g) / (np.std(g, ddof=1) + eps) for k, g in grads[0].items()}
  want, m, p = [], {}, dict(params)
  for t, g in enumerate(grads):
    m = dict(g) if t == 0 else {k: beta * m[k] + (1 - beta) * g[k] for k in g}
    new = {k: p[k] * (1 - lr * wd) - lr * gsnr[k] * m[k] for k in g}
    want.append({k: new[k] - p[k] for k in g})
    p = new
  _assert_steps_close(got, want)


def test_approx_newton_state_follows_float64_params():
  with jax.enable_x64(True):
    problem = _Regression64()
    _, state = _trajectory(gradkit.create("approx_newton"), problem, 1, obj_fn=problem.loss)
  inner = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "gamma"))
           if hasattr(s, "gamma")][0]
  assert inner.gamma.dtype == jnp.float64 and inner.regularization.dtype == jnp.float64


def _galore_oracle(g, rank, scale, lr, b1, b2, eps, side):
  """First GaLore(-AdamW, HF eps placement) step on a (m, n) gradient (galore_torch):
  P from the SVD of G; step 1 of Adam on R is sqrt(1-b2)/(1-b1) m / (sqrt(v) + eps)."""
  u, _, vt = np.linalg.svd(g, full_matrices=False)

  def adam1(r):
    return math.sqrt(1 - b2) / (1 - b1) * ((1 - b1) * r) / (np.sqrt((1 - b2) * r * r) + eps)

  if side == "full":
    return -lr * scale * u[:, :rank] @ adam1(u[:, :rank].T @ g @ vt[:rank].T) @ vt[:rank]
  return -lr * scale * adam1(g @ vt[:rank].T) @ vt[:rank]  # m >= n: P = V_r^T on the right


def test_galore_first_step_float64_matches_a_float64_oracle():
  lr, scale = 1e-2, 0.25
  params, grads = _problem(4, 1, {"w": (6, 4)})
  with jax.enable_x64(True):
    tx = gradkit.create("galore", learning_rate=lr, rank=2, scale=scale)
    got = _steps(tx, _to_jax(params), _to_jax(grads))
  want = _galore_oracle(grads[0]["w"], 2, scale, lr, 0.9, 0.999, 1e-6, "std")
  _assert_steps_close(got, [{"w": want}])


def test_natural_galore_first_step_float64_matches_a_float64_oracle():
  """Natural GaLore (selfsupervised-ai/Natural-GaLore): R = U^T G V (r x r);
  with one gradient in the history the natural gradient is
  (lambda I + g g^T)^{-1} g = g / (lambda + |g|^2), g = vec(R); then HF Adam."""
  lr, scale, damping, b1, b2, eps, rank = 1e-2, 0.25, 1e-3, 0.9, 0.999, 1e-6, 2
  params, grads = _problem(5, 1, {"w": (6, 4)})
  with jax.enable_x64(True):
    tx = gradkit.create("natural_galore", learning_rate=lr, rank=rank, scale=scale,
                        damping=damping)
    got = _steps(tx, _to_jax(params), _to_jax(grads))
  g = grads[0]["w"]
  u, _, vt = np.linalg.svd(g, full_matrices=False)
  r = u[:, :rank].T @ g @ vt[:rank].T
  nat = r / (damping + np.sum(r * r))
  adam = math.sqrt(1 - b2) / (1 - b1) * ((1 - b1) * nat) / (np.sqrt((1 - b2) * nat**2) + eps)
  want = -lr * scale * u[:, :rank] @ adam @ vt[:rank]
  _assert_steps_close(got, [{"w": want}])


def test_hypergradient_sgd_float64_matches_the_paper_rule():
  """HD-SGD (Baydin et al., 2018): eta_t = eta_{t-1} + beta <g_t, g_{t-1}>, u_t = -eta_t g_t."""
  eta, beta = 1e-3, 1e-4
  params, grads = _problem(6, 3)
  grads = [{k: g[k] + 3.0 for k in g} for g in grads]  # correlated: eta grows, never clipped
  with jax.enable_x64(True):
    got = _steps(scale_by_hypergradient_lr(eta, beta), _to_jax(params), _to_jax(grads))
  want, prev = [], None
  for g in grads:
    if prev is not None:
      eta = eta + beta * sum(np.sum(g[k] * prev[k]) for k in g)
    want.append({k: -eta * g[k] for k in g})
    prev = g
  _assert_steps_close(got, want)


def test_mix_gradients_float64_is_exact():
  rng = np.random.default_rng(7)
  g, e = rng.normal(size=5), rng.normal(size=5)
  with jax.enable_x64(True):
    tx = mix_gradients(0.3)
    u, _ = tx.update(jnp.asarray(g), tx.init(jnp.zeros(5)), aux_grads=jnp.asarray(e))
    assert u.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(u), 0.3 * g + 0.7 * e, rtol=RTOL, atol=0)


def test_agvm_dissimilarity_float64_matches_numpy():
  rng = np.random.default_rng(8)
  a = {"x": rng.normal(size=7), "y": rng.normal(size=(2, 3))}
  b = {"x": a["x"] + 0.3 * rng.normal(size=7), "y": rng.normal(size=(2, 3))}
  labels = {"x": "backbone", "y": "head"}
  with jax.enable_x64(True):
    phi = module_dissimilarity(_to_jax(a), _to_jax(b), labels)
    state = scale_by_agvm(labels, "backbone").init(_to_jax(a))
  for k, label in labels.items():
    want = 1 - np.sum(a[k] * b[k]) / (np.linalg.norm(a[k]) * np.linalg.norm(b[k]))
    np.testing.assert_allclose(float(phi[label]), want, rtol=RTOL)
  assert state.scales.dtype == jnp.float64


def test_optimistic_multiplicative_weights_float64_matches_the_rule():
  """x^_{t+1} ∝ x^_t exp(-eta g_t), x_{t+1} ∝ x^_{t+1} exp(-eta g_t), x^_1 = x_1."""
  eta = 0.1
  rng = np.random.default_rng(9)
  x = rng.uniform(0.5, 1.5, size=4)
  x = x / x.sum()
  grads = [rng.normal(size=4) for _ in range(3)]
  with jax.enable_x64(True):
    got = _steps(optimistic_multiplicative_weights(eta), {"p": jnp.asarray(x)},
                 [{"p": jnp.asarray(g)} for g in grads])
  want, hat, played = [], x.copy(), x.copy()
  for g in grads:
    hat = hat * np.exp(-eta * g)
    hat = hat / hat.sum()
    new = hat * np.exp(-eta * g)
    new = new / new.sum()
    want.append({"p": new - played})
    played = new
  _assert_steps_close(got, want)
