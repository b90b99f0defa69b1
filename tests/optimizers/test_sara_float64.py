"""SaRA in float64, plain and under `optax.inject_hyperparams`, against a float64 AdamW.

Under x64 an injected hyperparameter is an array of the params' dtype, so
with float64 params AdamW's moments become float64 at the first step; the
re-selection's `lax.cond` then has to return the same dtypes from both
branches, and the trainable entries' buffers have to be float64 from the
start. Oracle: the official optimizer (sjtuplayer/SaRA, optim/adamw.py)
re-derived in numpy float64: AdamW on the k smallest |w|, frozen elsewhere,
re-created (zero moments, step 1) on the re-selected set after
`progressive_iter` steps; no nuclear penalty (every leaf is below min_dim).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradkit.optimizers.sara import sara

LR, WD, EPS, REFINE_AT, K = 0.05, 1e-2, 1e-8, 3, 6


def _oracle(w0, grads):
  w, out = w0.copy(), []
  m = v = np.zeros(w.size)
  n = 0
  for t, g in enumerate(grads):
    if t == 0 or t == REFINE_AT:
      mask = np.zeros(w.size, bool)
      mask[np.argsort(np.abs(w.ravel()))[:K]] = True
      m, v, n = np.zeros(w.size), np.zeros(w.size), 0
    n += 1
    gf, wf = g.ravel(), w.ravel()
    m = np.where(mask, 0.9 * m + 0.1 * gf, 0.0)
    v = np.where(mask, 0.999 * v + 0.001 * gf * gf, 0.0)
    step = (m / (1 - 0.9**n)) / (np.sqrt(v / (1 - 0.999**n)) + EPS)
    w = np.where(mask, wf - LR * (step + WD * wf), wf).reshape(w.shape)
    out.append(w)
  return out


def _run(tx, w0, grads):
  with jax.enable_x64(True):
    params = {"w": jnp.asarray(w0, jnp.float64)}
    update, state, out = jax.jit(tx.update), tx.init(params), []
    for g in grads:
      u, state = update({"w": jnp.asarray(g, jnp.float64)}, state, params)
      params = optax.apply_updates(params, u)
      out.append(np.asarray(params["w"]))
    floats = [x.dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert all(d == jnp.float64 for d in floats), floats
  return out


def test_injected_float64_run_equals_the_plain_run_and_a_float64_adamw():
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(4, 3)) * 0.1
  # Pushing the trainable weights outwards makes the re-selection admit new ones.
  grads = [-np.sign(w0) * rng.uniform(0.5, 1.5, size=w0.shape) for _ in range(6)]
  kwargs = dict(learning_rate=LR, threshold=10.0, max_fraction=0.5, progressive_iter=REFINE_AT,
                weight_decay=WD, lambda_rank=0.0)
  plain = _run(sara(**kwargs), w0, grads)
  injected = _run(optax.inject_hyperparams(sara, static_args=("max_fraction",))(**kwargs),
                  w0, grads)
  want = _oracle(w0, grads)
  for t, (a, b, c) in enumerate(zip(plain, injected, want), start=1):
    np.testing.assert_allclose(a, c, rtol=1e-13, atol=1e-15, err_msg=f"plain, step {t}")
    np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-15, err_msg=f"injected, step {t}")
  first, second = (np.argsort(np.abs(w.ravel()))[:K] for w in (w0, plain[REFINE_AT - 1]))
  assert set(second) != set(first)  # the re-selection changed the set
