"""FedHyper: hypergradient learning rates for federated learning (server and client side).

Wang, Wang & Li (ICLR 2024) apply hypergradient descent (Baydin et al., see
`scale_by_hypergradient_lr`) to parameter *changes* of federated rounds, not
to raw gradients. With Δ_r the round's mean client model minus the global
model (a parameter change that already carries the local learning rates):

- global (`scale_by_fedhyper_global`, the server's optimizer): a hyper
  variable a (global learning rate 1 + a) with
    a_r = clip(a_{r−1} + β ⟨m_{r−1}, Δ_r⟩, lo, hi),  m_r = Δ_r + μ m_{r−1},
    θ_r = θ_{r−1} + Δ_r + a_r m_r   (m_{−1} = 0, a unchanged in round 0);
  μ = 0 is FedHyper-G (θ_r = θ_{r−1} + (1 + a_r) Δ_r, a ∈ [−0.8, 4]),
  μ = 0.9 FedHyper-GM (a ∈ [−0.2, 4], the official default);
- server-side local (`estimate_fedhyper_local_lr`, FedHyper-SL): plain FedAvg
  aggregation, a_r = a_{r−1} + β ⟨Δ_{r−1}, Δ_r⟩ unclipped, and the clients'
  next local learning rate clip(η₀ (1 + a_r), 0.001, 0.1);
- client-side (`scale_by_fedhyper_client_lr`, FedHyper-CL): within a round,
  with δ_k the change of local step k and Δ the last global update,
    γ_k = min(1.1, 1 + ⟨δ_k, δ_prev⟩ + w ⟨δ_k, Δ⟩),  b_k = clip(γ_k b_{k−1}, 0.1, 10),
  the next step's learning rate η₀ b_k; δ_prev starts at Δ and the first
  step only moves (b = 1 again every round). FedHyper-FULL is GM + CL.
The hypergradient step β is 1 in the official code (unnormalised inner
products of parameter changes); it is exposed as `hyper_lr`. All three are
ordinary jit-compatible optax transformations; the federated loop (sampling
clients, local training, averaging) stays the caller's.

The rules are the official code's (src/federated_main.py, src/update.py);
the paper's equations were not readable here. Deviations are listed in
BUILD_NOTES.md (FedHyper-SL's learning rate does persist to the next round:
the official loop resets it before every round).

References:
  Z. Wang, J. Wang, A. Li, FedHyper: A Universal and Robust Learning Rate
  Scheduler for Federated Learning with Hypergradient Descent, ICLR 2024
  (official code ATP-1010/FedHyper). A. G. Baydin et al., Online Learning
  Rate Adaptation with Hypergradient Descent, ICLR 2018.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks


def _scalar_dtype(tree: Any) -> jnp.dtype:
  return jnp.result_type(jnp.float32, *(jnp.result_type(p) for p in jax.tree.leaves(tree)))


def _check_bounds(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
  lo, hi = bounds
  if not lo <= hi:
    raise ValueError(f"{name} must satisfy lo <= hi, got {bounds}")
  return lo, hi


class ScaleByFedHyperGlobalState(NamedTuple):
  """count: rounds seen; hyper_variable: a (global learning rate 1 + a);
  momentum: m_{r−1} (Δ_{r−1} when the momentum is 0; zeros before round 0)."""

  count: jax.Array
  hyper_variable: jax.Array
  momentum: Any


def scale_by_fedhyper_global(
    hyper_lr: float = 1.0,
    momentum: float = 0.9,
    bounds: tuple[float, float] = (-0.2, 4.0),
) -> optax.GradientTransformation:
  """Server optimizer: the round's mean client change Δ_r to the global change Δ_r + a_r m_r.

  Feed it the parameter change Δ_r = mean(client models) − global model (the
  sign FedAvg adds; for a pseudo-gradient g = −Δ_r pass −g) and add its output
  to the global model with `optax.apply_updates`. Official variants:
  FedHyper-GM = defaults; FedHyper-G = `momentum=0.0, bounds=(-0.8, 4.0)`.

  Args:
    hyper_lr: β, the hypergradient step on a (per unit of ⟨m, Δ⟩, whose
      units are parameter change squared). Default 1.0 (official).
    momentum: μ of the buffer m_r = Δ_r + μ m_{r−1}, which the hypergradient
      and the adaptive part a m_r use. Default 0.9 (FedHyper-GM).
    bounds: (lo, hi) clip of a, so the global learning rate 1 + a lies in
      [1 + lo, 1 + hi]. Default (-0.2, 4.0) (FedHyper-GM; G uses (-0.8, 4.0)).

  Returns:
    An `optax.GradientTransformation` mapping Δ_r to the global change.

  References:
    Wang, Wang & Li, "FedHyper: A Universal and Robust Learning Rate Scheduler for Federated
    Learning with Hypergradient Descent", ICLR 2024. https://arxiv.org/abs/2310.03156 ;
    official code: https://github.com/ATP-1010/FedHyper

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_fedhyper_global(momentum=0.0, bounds=(-0.8, 4.0))
    >>> state = tx.init(jnp.zeros(2))
    >>> for delta in ([1.0, 0.5], [0.8, 0.4]):
    ...   change, state = tx.update(jnp.array(delta), state)
    >>> [round(float(x), 4) for x in change], round(float(state.hyper_variable), 4)
    ([1.6, 0.8], 1.0)
  """
  _checks.check_non_negative("hyper_lr", hyper_lr)
  _checks.check_non_negative("momentum", momentum)
  lo, hi = _check_bounds("bounds", bounds)

  def init_fn(params):
    return ScaleByFedHyperGlobalState(
        jnp.zeros([], jnp.int32), jnp.zeros([], _scalar_dtype(params)),
        optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    hypergradient = optax.tree.vdot(state.momentum, updates)
    a = jnp.where(state.count > 0,
                  jnp.clip(state.hyper_variable + hyper_lr * hypergradient, lo, hi),
                  state.hyper_variable).astype(state.hyper_variable.dtype)
    buffer = jax.tree.map(lambda d, m: d + momentum * m, updates, state.momentum)
    change = jax.tree.map(lambda d, m: (d + a * m).astype(d.dtype), updates, buffer)
    return change, ScaleByFedHyperGlobalState(optax.safe_increment(state.count), a, buffer)

  return optax.GradientTransformation(init_fn, update_fn)


class EstimateFedHyperLocalLrState(NamedTuple):
  """count: rounds seen; hyper_variable: a (unclipped); previous_update: Δ_{r−1};
  local_learning_rate: the clients' learning rate for the next round."""

  count: jax.Array
  hyper_variable: jax.Array
  previous_update: Any
  local_learning_rate: jax.Array


def estimate_fedhyper_local_lr(
    base_lr: float = 0.01,
    hyper_lr: float = 1.0,
    lr_bounds: tuple[float, float] = (0.001, 0.1),
) -> optax.GradientTransformation:
  """FedHyper-SL: the server sets the clients' next local learning rate from ⟨Δ_{r−1}, Δ_r⟩.

  Passes Δ_r through unchanged (plain FedAvg aggregation) and keeps in its
  state `local_learning_rate` = clip(η₀ (1 + a_r), lo, hi), a_r = a_{r−1} +
  β ⟨Δ_{r−1}, Δ_r⟩ (a unclipped, unchanged in round 0), for the next round's
  clients to read.

  Args:
    base_lr: η₀, the clients' initial local learning rate. Default 0.01
      (official `--lr`).
    hyper_lr: β, the hypergradient step on a. Default 1.0 (official).
    lr_bounds: (lo, hi) clip of the local learning rate. Default
      (0.001, 0.1) (official).

  Returns:
    An `optax.GradientTransformation` (identity on the updates).

  References:
    Wang, Wang & Li, "FedHyper: A Universal and Robust Learning Rate Scheduler for Federated
    Learning with Hypergradient Descent", ICLR 2024. https://arxiv.org/abs/2310.03156 ;
    official code: https://github.com/ATP-1010/FedHyper
  """
  _checks.check_positive("base_lr", base_lr)
  _checks.check_non_negative("hyper_lr", hyper_lr)
  lo, hi = _check_bounds("lr_bounds", lr_bounds)

  def init_fn(params):
    dtype = _scalar_dtype(params)
    return EstimateFedHyperLocalLrState(
        jnp.zeros([], jnp.int32), jnp.zeros([], dtype), optax.tree.zeros_like(params),
        jnp.asarray(base_lr, dtype))

  def update_fn(updates, state, params=None):
    del params
    a = jnp.where(state.count > 0,
                  state.hyper_variable + hyper_lr * optax.tree.vdot(state.previous_update, updates),
                  state.hyper_variable).astype(state.hyper_variable.dtype)
    lr = jnp.clip(base_lr * (1 + a), lo, hi).astype(a.dtype)
    return updates, EstimateFedHyperLocalLrState(optax.safe_increment(state.count), a, updates, lr)

  return optax.GradientTransformation(init_fn, update_fn)


class ScaleByFedHyperClientLrState(NamedTuple):
  """count: local steps this round; multiplier: b (local learning rate η₀ b);
  previous_change: δ of the last adapting step (Δ before the first);
  direction_state: the base direction's state."""

  count: jax.Array
  multiplier: jax.Array
  previous_change: Any
  direction_state: optax.OptState


def scale_by_fedhyper_client_lr(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    direction: optax.GradientTransformation | None = None,
    global_weight: float = 0.01,
    max_growth: float = 1.1,
    multiplier_bounds: tuple[float, float] = (0.1, 10.0),
    local_epoch_steps: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """FedHyper-CL: a client's local step −η₀ b u_k, with b adapted from consecutive local changes.

  Re-initialise it at the start of every round (b restarts at 1, as in the
  official code) and pass the server's last global update Δ (zeros in the
  first round) as `global_update=` to every `update`. After local step k
  (change δ_k = −η₀ b_{k−1} u_k):
  γ = min(max_growth, 1 + ⟨δ_k, δ_prev⟩ + global_weight ⟨δ_k, Δ⟩),
  b_k = clip(γ b_{k−1}, lo, hi), δ_prev = δ_k; δ_prev starts at Δ, and the
  first step of the round (with `local_epoch_steps`, of every local epoch,
  as the official loop) only moves.

  Args:
    learning_rate: η₀, the round's base local learning rate (a scalar or an
      optax schedule of the local step). Default 0.01 (official `--lr`).
    direction: base transformation giving u_k from the gradients; None means
      u_k = g_k. The official clients use torch SGD momentum 0.5, i.e.
      `optax.trace(decay=0.5)`. Extra keyword arguments of `update` other
      than `global_update` are passed on to it. Default None.
    global_weight: w on ⟨δ_k, Δ⟩; official 0.1 / (clients per round).
      Default 0.01 (official 100 users, fraction 0.1).
    max_growth: upper clip of γ (no lower clip). Default 1.1 (official).
    multiplier_bounds: (lo, hi) clip of b. Default (0.1, 10.0) (official).
    local_epoch_steps: local steps per local epoch; the official loop skips
      the adaptation on the first step of every local epoch. None: only the
      first step of the round. Default None.

  Returns:
    An `optax.GradientTransformationExtraArgs` to end a client's local chain.

  References:
    Wang, Wang & Li, "FedHyper: A Universal and Robust Learning Rate Scheduler for Federated
    Learning with Hypergradient Descent", ICLR 2024. https://arxiv.org/abs/2310.03156 ;
    official code: https://github.com/ATP-1010/FedHyper
  """
  if not callable(learning_rate):
    _checks.check_rate("learning_rate", learning_rate)
  _checks.check_non_negative("global_weight", global_weight)
  _checks.check_positive("max_growth", max_growth)
  lo, hi = _check_bounds("multiplier_bounds", multiplier_bounds)
  if local_epoch_steps is not None and (int(local_epoch_steps) != local_epoch_steps
                                        or local_epoch_steps < 1):
    raise ValueError("local_epoch_steps must be an integer >= 1 or None, got "
                     f"{local_epoch_steps!r}")
  base = optax.with_extra_args_support(direction or optax.identity())

  def init_fn(params):
    return ScaleByFedHyperClientLrState(
        jnp.zeros([], jnp.int32), jnp.ones([], _scalar_dtype(params)),
        optax.tree.zeros_like(params), base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if "global_update" not in extra_args:
      raise TypeError("scale_by_fedhyper_client_lr.update needs global_update= (the server's "
                      "last global model update; zeros in the first round)")
    global_update = extra_args.pop("global_update")
    u, direction_state = base.update(updates, state.direction_state, params, **extra_args)
    eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
    lr = eta * state.multiplier
    change = jax.tree.map(lambda d: (-lr * d).astype(d.dtype), u)
    first = state.count == 0
    previous = jax.tree.map(lambda g, p: jnp.where(first, g, p).astype(p.dtype),
                            global_update, state.previous_change)
    growth = jnp.minimum(max_growth, 1 + optax.tree.vdot(change, previous)
                         + global_weight * optax.tree.vdot(change, global_update))
    if local_epoch_steps is None:
      adapt = jnp.logical_not(first)
    else:
      adapt = state.count % local_epoch_steps != 0
    multiplier = jnp.where(adapt, jnp.clip(growth * state.multiplier, lo, hi), state.multiplier)
    previous = jax.tree.map(lambda c, p: jnp.where(adapt, c, p).astype(p.dtype), change, previous)
    return change, ScaleByFedHyperClientLrState(
        optax.safe_increment(state.count), multiplier.astype(state.multiplier.dtype), previous,
        direction_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
