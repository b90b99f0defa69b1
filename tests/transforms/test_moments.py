"""Oracles for the moment-style directions of transforms/moments.py.

Every oracle is the paper's / official code's rule written out in numpy
float64, step by step; nothing is shared with the code under test.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradkit.transforms.moments import (
    debiased_ema,
    ema_from_first_update,
    scale_by_adam_eps_before_correction,
    scale_by_adam_lookahead,
    scale_by_adan_official,
    scale_by_rectified_belief,
    trace_with_dampening,
)

RNG = np.random.default_rng(7)
GRADS = [{"w": RNG.normal(size=(2, 3)) * s, "b": RNG.normal(size=(3,)) * s}
         for s in RNG.uniform(0.1, 2.0, size=8)]


def _f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _outputs(tx, grads=GRADS):
  """The transform's outputs over `grads`, each update run under jit."""
  update = jax.jit(tx.update)
  state = tx.init(_f32(grads[0]))
  out = []
  for g in grads:
    u, state = update(_f32(g), state)
    out.append(jax.device_get(u))
  return out, state


def _assert_trajectories_close(ours, expected, rtol=1e-5, atol=1e-6):
  assert len(ours) == len(expected)
  for u, e in zip(ours, expected):
    for k in e:
      np.testing.assert_allclose(u[k], e[k], rtol=rtol, atol=atol)


def _per_leaf(rule, grads=GRADS):
  """Runs a stateful per-array numpy `rule(g, t, memo) -> u` on every leaf."""
  memos = {k: {} for k in grads[0]}
  return [{k: rule(g[k], t, memos[k]) for k in g} for t, g in enumerate(grads, start=1)]


# --- scale_by_adan_official -------------------------------------------------


def _adan_rule(b1, b2, b3, eps):
  def rule(g, t, memo):
    m, v, n = memo.get("m", 0 * g), memo.get("v", 0 * g), memo.get("n", 0 * g)
    d = g - memo["prev"] if "prev" in memo else 0 * g
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * d
    n = b3 * n + (1 - b3) * (g + b2 * d) ** 2
    memo.update(m=m, v=v, n=n, prev=g)
    m_hat, v_hat, n_hat = m / (1 - b1**t), v / (1 - b2**t), n / (1 - b3**t)
    return (m_hat + b2 * v_hat) / (np.sqrt(n_hat) + eps)

  return rule


@pytest.mark.parametrize("b1,b2,b3,eps", [(0.98, 0.92, 0.99, 1e-8), (0.7, 0.3, 0.8, 1e-2)])
def test_adan_official_matches_the_paper_rule(b1, b2, b3, eps):
  ours, state = _outputs(scale_by_adan_official(b1, b2, b3, eps))
  _assert_trajectories_close(ours, _per_leaf(_adan_rule(b1, b2, b3, eps)))
  assert int(state.count) == len(GRADS)
  np.testing.assert_array_equal(state.previous_grad["w"], np.float32(GRADS[-1]["w"]))


def test_adan_official_weights_the_difference_by_b2_not_one_minus_b2():
  """optax.scale_by_adan uses 1 - b2; both agree only where b2 = 1 - b2."""
  ours, _ = _outputs(scale_by_adan_official(0.9, 0.5, 0.99))
  theirs, _ = _outputs(optax.scale_by_adan(0.9, 0.5, 0.99))
  _assert_trajectories_close(ours, theirs)
  ours, _ = _outputs(scale_by_adan_official(0.9, 0.8, 0.99))
  theirs, _ = _outputs(optax.scale_by_adan(0.9, 0.8, 0.99))
  assert not np.allclose(ours[-1]["w"], theirs[-1]["w"], rtol=1e-2)


# --- scale_by_rectified_belief ----------------------------------------------


def _rectified_belief_rule(b1, b2, eps, branches):
  """juntang-zhuang/Adabelief-Optimizer's rectify=True step, without lr."""

  def rule(g, t, memo):
    m, s = memo.get("m", 0 * g), memo.get("s", 0 * g)
    m = b1 * m + (1 - b1) * g
    s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
    memo.update(m=m, s=s)
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    branches.add(rho >= 5)
    if rho < 5:
      return m / (1 - b1**t)
    r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    return r * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(s) + eps)

  return rule


def test_rectified_belief_matches_the_official_rule_across_both_branches():
  # b2 = 0.9 reaches the rectified branch at step 6; a large eps makes both
  # of its placements (inside s, on the uncorrected sqrt(s)) visible.
  b1, b2, eps = 0.9, 0.9, 1e-2
  branches = set()
  expected = _per_leaf(_rectified_belief_rule(b1, b2, eps, branches))
  assert branches == {False, True}
  ours, state = _outputs(scale_by_rectified_belief(b1, b2, eps))
  _assert_trajectories_close(ours, expected)
  assert isinstance(state, optax.ScaleByBeliefState)


# --- scale_by_adam_eps_before_correction ------------------------------------


def test_adam_eps_before_correction_matches_the_step_size_form():
  b1, b2, eps = 0.9, 0.999, 1e-2

  def rule(g, t, memo):
    m = b1 * memo.get("m", 0 * g) + (1 - b1) * g
    v = b2 * memo.get("v", 0 * g) + (1 - b2) * g**2
    memo.update(m=m, v=v)
    return math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)

  ours, _ = _outputs(scale_by_adam_eps_before_correction(b1, b2, eps))
  _assert_trajectories_close(ours, _per_leaf(rule))
  # With this eps the placement matters: optax's eps-after-correction differs.
  theirs, _ = _outputs(optax.scale_by_adam(b1, b2, eps))
  assert not np.allclose(ours[0]["w"], theirs[0]["w"], rtol=1e-2)


# --- scale_by_adam_lookahead ------------------------------------------------


def test_adam_lookahead_corrects_the_whole_lookahead_by_one_minus_b1_t():
  b1, b2, eps = 0.9, 0.99, 1e-3

  def rule(g, t, memo):
    m = b1 * memo.get("m", 0 * g) + (1 - b1) * g
    v = b2 * memo.get("v", 0 * g) + (1 - b2) * g**2
    memo.update(m=m, v=v)
    lookahead = (b1 * m + (1 - b1) * g) / (1 - b1**t)
    return lookahead / (np.sqrt(v / (1 - b2**t)) + eps)

  ours, state = _outputs(scale_by_adam_lookahead(b1, b2, eps))
  _assert_trajectories_close(ours, _per_leaf(rule))
  assert isinstance(state, optax.ScaleByAdamState)
  # NAdam's correction (optax nesterov=True) is a different direction.
  theirs, _ = _outputs(optax.scale_by_adam(b1, b2, eps, nesterov=True))
  assert not np.allclose(ours[0]["w"], theirs[0]["w"], rtol=1e-2)


# --- trace_with_dampening ---------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("dampening", [0.0, 0.3])
def test_trace_with_dampening_matches_sgdp_buffer(nesterov, dampening):
  decay = 0.9

  def rule(g, t, memo):
    buf = decay * memo.get("buf", 0 * g) + (1 - dampening) * g
    memo["buf"] = buf
    return g + decay * buf if nesterov else buf

  ours, _ = _outputs(trace_with_dampening(decay, dampening, nesterov))
  _assert_trajectories_close(ours, _per_leaf(rule))


def test_trace_with_zero_dampening_is_optax_trace():
  ours, _ = _outputs(trace_with_dampening(0.8, 0.0, nesterov=True))
  theirs, _ = _outputs(optax.trace(0.8, nesterov=True))
  _assert_trajectories_close(ours, theirs)


# --- ema_from_first_update --------------------------------------------------


def test_ema_starts_at_the_first_update():
  mu = 0.9
  tx = ema_from_first_update(mu)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(2)
  gs = [rng.normal(size=(3,)) for _ in range(4)]
  state = tx.init(jnp.zeros(3))
  expected = gs[0]
  out, state = update(jnp.asarray(gs[0], jnp.float32), state)
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  for g in gs[1:]:
    expected = mu * expected + (1 - mu) * g
    out, state = update(jnp.asarray(g, jnp.float32), state)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
  np.testing.assert_allclose(state.ema, expected, rtol=1e-5)


def test_ema_with_zero_decay_passes_updates_through():
  tx = ema_from_first_update(0.0)
  state = tx.init(jnp.zeros(2))
  for g in ([1.0, -2.0], [3.0, 0.5]):
    out, state = jax.jit(tx.update)(jnp.asarray(g), state)
    np.testing.assert_array_equal(out, np.asarray(g, np.float32))


# --- every transform --------------------------------------------------------

ALL = {
    "adan_official": (scale_by_adan_official, {}),
    "rectified_belief": (scale_by_rectified_belief, {}),
    "adam_eps_before_correction": (scale_by_adam_eps_before_correction, {}),
    "adam_lookahead": (scale_by_adam_lookahead, {}),
    "trace_with_dampening": (trace_with_dampening, {"decay": 0.9, "dampening": 0.1}),
    "ema_from_first_update": (ema_from_first_update, {"decay": 0.9}),
}


@pytest.mark.parametrize("factory,kwargs", ALL.values(), ids=ALL.keys())
def test_state_can_be_donated_in_a_jitted_step(factory, kwargs):
  """Every state field is its own buffer, so params and state can be donated."""
  tx = factory(**kwargs)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  donating = jax.jit(step, donate_argnums=(0, 1))
  plain = jax.jit(step)
  params, state = _f32(GRADS[0]), tx.init(_f32(GRADS[0]))
  ref_params, ref_state = _f32(GRADS[0]), tx.init(_f32(GRADS[0]))
  for g in GRADS[1:4]:
    params, state = donating(params, state, _f32(g))
    ref_params, ref_state = plain(ref_params, ref_state, _f32(g))
  for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((ref_params, ref_state))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("factory,kwargs", ALL.values(), ids=ALL.keys())
def test_bfloat16_updates_and_state_keep_their_dtype(factory, kwargs):
  tx = factory(**kwargs)
  grads = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _f32(GRADS[0]))
  state = tx.init(grads)
  dtypes = [x.dtype for x in jax.tree.leaves(state)]
  update = jax.jit(tx.update)
  for _ in range(2):
    updates, state = update(grads, state)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  assert [x.dtype for x in jax.tree.leaves(state)] == dtypes


@pytest.mark.parametrize("name,buffer", [("trace_with_dampening", "trace"),
                                         ("ema_from_first_update", "ema")])
def test_momentum_buffer_keeps_params_dtype_under_injected_float32(name, buffer):
  # Injected hyperparameters are float32 arrays, not weak Python floats: they
  # promote a bfloat16 buffer unless the transform casts it back.
  factory, kwargs = ALL[name]
  tx = optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(**kwargs)
  grads = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _f32(GRADS[0]))
  state = tx.init(grads)
  update = jax.jit(tx.update)
  for _ in range(2):
    _, state = update(grads, state)
  assert all(x.dtype == jnp.bfloat16
             for x in jax.tree.leaves(getattr(state.inner_state, buffer)))


@pytest.mark.parametrize(
    "build",
    [
        lambda: scale_by_adan_official(b1=1.0),
        lambda: scale_by_adan_official(b2=-0.1),
        lambda: scale_by_adan_official(b3=1.5),
        lambda: scale_by_adan_official(eps=-1e-8),
        lambda: scale_by_rectified_belief(b1=1.0),
        lambda: scale_by_rectified_belief(b2=1.0),
        lambda: scale_by_rectified_belief(eps=-1.0),
        lambda: scale_by_adam_eps_before_correction(b1=-0.1),
        lambda: scale_by_adam_eps_before_correction(b2=1.0),
        lambda: scale_by_adam_eps_before_correction(eps=-1.0),
        lambda: scale_by_adam_lookahead(b1=1.0),
        lambda: scale_by_adam_lookahead(b2=2.0),
        lambda: scale_by_adam_lookahead(eps=-1.0),
        lambda: trace_with_dampening(1.0),
        lambda: trace_with_dampening(0.9, dampening=1.5),
        lambda: ema_from_first_update(1.0),
        lambda: ema_from_first_update(-0.1),
        lambda: debiased_ema(1.0),
        lambda: debiased_ema(-0.1, nesterov=False),
    ],
)
def test_invalid_hyperparameters_raise(build):
  with pytest.raises(ValueError):
    build()


# --- debiased_ema ---------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [True, False])
def test_debiased_ema_matches_the_bias_corrected_momentum(nesterov):
  beta = 0.8

  def rule(g, t, memo):
    mu = beta * memo.get("mu", 0 * g) + (1 - beta) * g
    memo["mu"] = mu
    if nesterov:
      return beta * mu / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta**t)
    return mu / (1 - beta**t)

  ours, state = _outputs(debiased_ema(beta, nesterov))
  _assert_trajectories_close(ours, _per_leaf(rule))
  assert isinstance(state, optax.EmaState) and int(state.count) == len(GRADS)


def test_debiased_ema_is_the_first_moment_of_nadam():
  # With b2 = 0 and eps_root = 0, Adam divides by |g|: undo that to expose
  # optax.scale_by_adam(nesterov=True)'s own first moment.
  adam, _ = _outputs(optax.scale_by_adam(0.9, 0.0, eps=0.0, nesterov=True))
  ours, _ = _outputs(debiased_ema(0.9))
  for u, a, g in zip(ours, adam, GRADS):
    for k in g:
      np.testing.assert_allclose(u[k], a[k] * np.abs(g[k]), rtol=1e-5, atol=1e-6)


def test_float32_rectified_belief_matches_double_precision_rho_and_bias_correction():
  """RAdam's rho_t - 4 near its threshold is a small difference of two
  ~2 / (1 - b2) terms; in float32 the direct form loses up to 3.5% of it
  (0.57% of AdaBelief's step at t = 6). gradkit's float32 steps follow the
  official double-precision formulas to float32 rounding: a one-element
  tree with g = 1, 0, 1, 0, ... so that s stays far from eps, 12 steps."""
  b1, b2, eps = 0.9, 0.999, 1e-16
  tx = scale_by_rectified_belief(b1, b2, eps)
  update = jax.jit(tx.update)
  state = tx.init(jnp.zeros(1, jnp.float32))
  m = s = 0.0
  for t in range(1, 13):
    g = float(t % 2)
    u, state = update(jnp.full(1, g, jnp.float32), state)
    m = b1 * m + (1 - b1) * g
    s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
    m_hat = m / (1 - b1**t)
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    if rho >= 5:
      r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
      want = r * np.sqrt(1 - b2**t) * m_hat / (np.sqrt(s) + eps)
    else:
      want = m_hat
    np.testing.assert_allclose(float(u[0]), want, rtol=2e-6, err_msg=f"step {t}")
