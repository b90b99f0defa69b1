"""Every matrix-aware optimizer trains a small token model about as well as AdamW.

The workload: a residual MLP language model (embedding, two blocks of
RMSNorm -> up -> ReLU -> down, final norm, untied head) predicting the next
token of a random sparse Markov chain over 16 symbols. The loss is the exact
expected cross-entropy under the chain's stationary distribution, so the
best achievable loss is the chain's entropy rate and no sampling noise
enters. Each method runs 60 jitted full-batch steps at each rate of a small
grid (its best is kept, as for AdamW) and must end within MARGIN_NATS of
AdamW's loss; plain SGD misses that margin, so the check can fail.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradkit
import gradkit.registry

VOCAB, D, FFN, STEPS = 64, 32, 64, 60
RATES = (3e-3, 1e-2, 3e-2, 1e-1)


def _chain(seed: int = 0, support: int = 3):
  rng = np.random.default_rng(seed)
  transition = np.zeros((VOCAB, VOCAB))
  for i in range(VOCAB):
    targets = rng.choice(VOCAB, size=support, replace=False)
    transition[i, targets] = rng.dirichlet(np.ones(support))
  evals, evecs = np.linalg.eig(transition.T)
  pi = np.real(evecs[:, np.argmin(np.abs(evals - 1))])
  pi = pi / pi.sum()
  with np.errstate(divide="ignore", invalid="ignore"):
    entropy = -np.sum(pi[:, None] * np.where(transition > 0, transition * np.log(transition), 0))
  return jnp.asarray(pi, jnp.float32), jnp.asarray(transition, jnp.float32), float(entropy)


PI, TRANSITION, ENTROPY_RATE = _chain()


def _init(seed: int = 0):
  keys = iter(jax.random.split(jax.random.key(seed), 8))

  def dense(i, o):
    return {"kernel": jax.random.normal(next(keys), (i, o)) / np.sqrt(i)}

  block = lambda: {"norm": {"scale": jnp.ones(D)},  # noqa: E731
                   "mlp": {"up": dense(D, FFN), "down": dense(FFN, D)}}
  return {
      "embed": {"embedding": jax.random.normal(next(keys), (VOCAB, D))},
      "layers": {"layer_0": block(), "layer_1": block()},
      "final_norm": {"scale": jnp.ones(D)},
      "lm_head": dense(D, VOCAB),
  }


def _rms_norm(x, scale):
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def loss(params):
  x = params["embed"]["embedding"]
  for block in params["layers"].values():
    h = _rms_norm(x, block["norm"]["scale"])
    x = x + jax.nn.relu(h @ block["mlp"]["up"]["kernel"]) @ block["mlp"]["down"]["kernel"]
  logits = _rms_norm(x, params["final_norm"]["scale"]) @ params["lm_head"]["kernel"]
  return -jnp.sum(PI[:, None] * TRANSITION * jax.nn.log_softmax(logits))


def best_excess(name: str, **hparams) -> float:
  """Least final loss minus the entropy rate over RATES (one compile, vmapped)."""
  factory = optax.inject_hyperparams(
      gradkit.registry.get_factory(name), static_args=tuple(hparams))

  def run(learning_rate):
    tx = factory(learning_rate=learning_rate, **hparams)

    def step(carry, _):
      params, state = carry
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), None

    params = _init()
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=STEPS)
    return loss(params)

  finals = np.asarray(jax.jit(jax.vmap(run))(jnp.asarray(RATES, jnp.float32)))
  return float(np.min(finals[np.isfinite(finals)])) - ENTROPY_RATE


def test_entropy_rate_is_the_floor():
  assert 0.0 < ENTROPY_RATE < np.log(3)
  assert float(loss(_init())) > ENTROPY_RATE


@pytest.fixture(scope="module")
def adamw_excess() -> float:
  return best_excess("adamw")


# Ranks well below the 32/64-wide matrices, and a projector refresh period
# the 60 steps actually cross; everything else at the paper defaults.
LOW_RANK = {"rank": 8, "update_proj_gap": 20}
HPARAMS = {
    "swan": {}, "sinkgd": {}, "scale": {}, "muon": {},
    "cosmos": {"rank": 8},
    "galore": LOW_RANK, "natural_galore": LOW_RANK, "apollo": LOW_RANK,
    "apollo_mini": {"update_proj_gap": 20},
    "frugal": {"update_gap": 20},
    "frugal_block": {"update_gap": 20}, "frugal_coord": {"update_gap": 20},
}
# Recorded once (best excess over the entropy rate 0.832 nats, 60 steps):
# adamw 0.0036; swan 0.021, sinkgd 0.080, scale 0.086, muon 0.020,
# cosmos 0.010, galore 0.0063, natural_galore 0.0034, apollo 0.0026,
# apollo_mini 0.0076, frugal 0.055, frugal_block 0.068, frugal_coord 0.020;
# plain SGD 1.07, SGD with momentum 0.9
# 0.083 (inside the margin: the bar is "about AdamW", which tuned heavy-ball
# SGD also clears on this small model).
MARGIN_NATS = 0.1


@pytest.mark.parametrize("name", sorted(HPARAMS))
def test_trains_token_model_about_as_well_as_adamw(name, adamw_excess):
  excess = best_excess(name, **HPARAMS[name])
  assert excess < adamw_excess + MARGIN_NATS, (name, excess, adamw_excess)


def test_margin_separates_plain_sgd_from_adamw(adamw_excess):
  assert best_excess("sgd", momentum=0.0) > adamw_excess + MARGIN_NATS


class _TinyLM(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(VOCAB, 8, rngs=rngs)
    self.hidden = nnx.Linear(8, 12, rngs=rngs)
    self.lm_head = nnx.Linear(12, VOCAB, rngs=rngs)

  def __call__(self, tokens):
    return self.lm_head(jax.nn.relu(self.hidden(self.embed(tokens))))


@pytest.mark.parametrize("name", sorted(HPARAMS))
def test_runs_inside_flax_nnx_optimizer(name):
  # nnx.Optimizer stores the state as nnx variables: every state leaf must be
  # a plain array (a tuple inside one comes back as a State and retraces).
  model = _TinyLM(nnx.Rngs(0))
  tx = gradkit.create(name, learning_rate=1e-2, **HPARAMS[name])
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  tokens = jnp.arange(VOCAB)
  targets = jnp.argmax(TRANSITION, axis=-1)

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(tokens), targets).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(25)]
  assert losses[-1] < losses[0]
