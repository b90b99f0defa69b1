"""AGVM: module-wise learning-rate scaling by gradient-variance modulation.

Large-batch training of dense-prediction models gives each module (backbone,
neck, heads, ...) a different gradient variance; AGVM rescales each module's
learning rate so that its variance proxy matches the reference module's
(the backbone). The proxy is the disagreement between the gradients of two
halves of the data-parallel workers. Every `update_interval` steps t with
start_step <= t <= stop_step (t counted from 0), for every module j (the
leaves sharing a label, flattened and concatenated):
  phi_j = 1 - cos(g_a^(j), g_b^(j))     g_a, g_b: means over the first/second half of workers
  r_j   = sqrt(clip((phi_ref + 1e-6) / (phi_j + 1e-6), lo, hi))   (lo, hi) = (0.5, 10)
  s_j  <- mu s_j + (1 - mu) r_j          (s_j = 1 initially, mu = 0.97)
and on every step with start_step <= t <= stop_step the incoming update of
module j is multiplied by s_j. Placed after the base optimizer's direction
(`optax.chain(optax.sgd(lr, momentum=0.9), scale_by_agvm(...))`), this scales
the module's learning rate, not its gradient, as the official code does
(the two differ under momentum and Adam).

Inputs: `update(updates, state, params, worker_grads=...)` where
`worker_grads` is a tree like params with a leading axis of K >= 2 (even)
per-worker (or per-sub-batch) gradients; it is needed on every step (used
on refresh steps). Because of this input the transform is not registered in
`gradkit.create`. For Adam, the official code compares preconditioned
gradients: pass `precondition_like_adam(worker_grads, nu, b2, eps)`.

References:
  Z. Xue, J. Liang, G. Song, Z. Zong, L. Chen, Y. Liu, P. Luo, Large-batch
  Optimization for Dense Visual Predictions, NeurIPS 2022 (official code
  Sense-X/AGVM, agvm/optim/agvm_optimizer_hook.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradkit import _checks

LabelsOrFn = Any | Callable[[Any], Any]
_PHI_EPS = 1e-6  # official guard on the dissimilarity ratio
_COS_EPS = 1e-8  # torch.cosine_similarity's guard on the norm product


class ScaleByAgvmState(NamedTuple):
  """Step counter and one learning-rate factor per label (sorted label order)."""

  count: jax.Array  # int32, 0-based step index
  scales: jax.Array  # (num_labels,), the params' dtype (float32 at least)


def _labels_of(param_labels: LabelsOrFn, tree: Any) -> Any:
  labels = param_labels(tree) if callable(param_labels) else param_labels
  if jax.tree.structure(labels) != jax.tree.structure(tree):
    raise ValueError("param_labels must match the parameter tree: "
                     f"{jax.tree.structure(labels)} vs {jax.tree.structure(tree)}")
  return labels


def _label_order(labels: Any) -> list[str]:
  return sorted({str(x) for x in jax.tree.leaves(labels)})


def module_dissimilarity(grads_a: Any, grads_b: Any, labels: Any) -> dict[str, jax.Array]:
  """phi_j = 1 - cos(g_a^(j), g_b^(j)) per label j, over all leaves with that label.

  Args:
    grads_a: gradient tree of one half of the workers.
    grads_b: gradient tree of the other half.
    labels: tree of module labels matching the gradients.

  Returns:
    A dict label -> phi_j (scalar).

  References:
    Xue et al., "Large-batch Optimization for Dense Visual Predictions", NeurIPS 2022.
    https://arxiv.org/abs/2210.11078 ; official code: https://github.com/Sense-X/AGVM
  """
  totals: dict[str, list[jax.Array]] = {}
  for a, b, label in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b),
                         jax.tree.leaves(labels)):
    dtype = jnp.promote_types(jnp.result_type(a), jnp.float32)  # float64 stays float64
    a, b = a.astype(dtype), b.astype(dtype)
    parts = [jnp.sum(a * b), jnp.sum(a * a), jnp.sum(b * b)]
    acc = totals.setdefault(str(label), [0.0, 0.0, 0.0])
    totals[str(label)] = [x + y for x, y in zip(acc, parts)]
  return {label: 1.0 - dot / jnp.maximum(jnp.sqrt(aa * bb), _COS_EPS)
          for label, (dot, aa, bb) in totals.items()}


def precondition_like_adam(
    worker_grads: Any, nu: Any, b2: jax.typing.ArrayLike = 0.999, eps: jax.typing.ArrayLike = 1e-8
) -> Any:
  """g / (sqrt(b2 nu + (1 - b2) g^2) + eps) per worker: AGVM's input under Adam.

  `nu` is Adam's second moment before this step (e.g. `optax.adam`'s
  `ScaleByAdamState.nu`), broadcast over the leading worker axis.

  Args:
    worker_grads: gradient tree with a leading worker axis.
    nu: Adam's second moment before this step (a tree like the params).
    b2: Adam's second-moment decay. Default 0.999.
    eps: Adam's eps. Default 1e-8.

  Returns:
    The preconditioned gradients, shaped like `worker_grads`.

  References:
    Xue et al., "Large-batch Optimization for Dense Visual Predictions", NeurIPS 2022.
    https://arxiv.org/abs/2210.11078 ; official code: https://github.com/Sense-X/AGVM
  """
  return jax.tree.map(lambda g, v: g / (jnp.sqrt(b2 * v + (1 - b2) * g * g) + eps),
                      worker_grads, nu)


def scale_by_agvm(
    param_labels: LabelsOrFn,
    reference_label: str,
    momentum: jax.typing.ArrayLike = 0.97,
    update_interval: int = 5,
    start_step: int = 500,
    stop_step: int | None = None,
    ratio_bounds: tuple[float, float] = (0.5, 10.0),
) -> optax.GradientTransformationExtraArgs:
  """Multiplies each module's update by its AGVM factor s_j (see module docstring).

  Args:
    param_labels: tree of labels matching the params, or a callable
      params -> such a tree (optax.partition semantics); one label per module.
    reference_label: the label whose variance the others are matched to (the
      backbone; its factor stays 1).
    momentum: mu of the moving average of the ratios (official 0.97). Default 0.97.
    update_interval: refresh period of the factors (static; official hook 5). Default 5.
    start_step: first step of AGVM, after warmup (static; official hook 500). Default 500.
    stop_step: last step (inclusive) of AGVM, None for never (static); after
      it the updates are left unscaled, as in the official hook. Default None.
    ratio_bounds: (lo, hi) clip of the variance ratio before the square root. Default (0.5, 10.0).

  Returns:
    A transformation whose `update` needs `worker_grads=` (leading axis K,
    even, >= 2).

  References:
    Xue et al., "Large-batch Optimization for Dense Visual Predictions", NeurIPS 2022.
    https://arxiv.org/abs/2210.11078 ; official code: https://github.com/Sense-X/AGVM
  """
  _checks.check_unit_interval("momentum", momentum)
  for name, value in (("update_interval", update_interval), ("start_step", start_step)):
    if int(value) != value or value < (1 if name == "update_interval" else 0):
      raise ValueError(f"{name} must be an integer >= {1 if name == 'update_interval' else 0},"
                       f" got {value!r}")
  if stop_step is not None and (int(stop_step) != stop_step or stop_step < start_step):
    raise ValueError(f"stop_step must be None or an integer >= start_step, got {stop_step!r}")
  lo, hi = ratio_bounds
  if not 0.0 < lo <= hi:
    raise ValueError(f"ratio_bounds must satisfy 0 < lo <= hi, got {ratio_bounds!r}")

  def init_fn(params):
    order = _label_order(_labels_of(param_labels, params))
    if reference_label not in order:
      raise ValueError(f"reference_label {reference_label!r} is not one of the labels {order}")
    dtype = jnp.result_type(jnp.float32, *(jnp.result_type(p) for p in jax.tree.leaves(params)))
    return ScaleByAgvmState(count=jnp.zeros([], jnp.int32),
                            scales=jnp.ones([len(order)], dtype))

  def update_fn(updates, state, params=None, *, worker_grads=None, **extra_args):
    del extra_args
    if worker_grads is None:
      raise ValueError("scale_by_agvm needs worker_grads= (per-worker gradients, "
                       "leading axis K >= 2 even) in update")
    labels = _labels_of(param_labels, updates if params is None else params)
    order = _label_order(labels)
    workers = {g.shape[0] if g.ndim else None for g in jax.tree.leaves(worker_grads)}
    if len(workers) != 1 or None in workers or min(workers) < 2 or min(workers) % 2:
      raise ValueError("worker_grads need the same even leading axis K >= 2 on every leaf, "
                       f"got {sorted(map(str, workers))}")
    half = workers.pop() // 2
    grads_a = jax.tree.map(lambda g: g[:half].mean(axis=0), worker_grads)
    grads_b = jax.tree.map(lambda g: g[half:].mean(axis=0), worker_grads)

    phi = module_dissimilarity(grads_a, grads_b, labels)
    phi = jnp.stack([phi[label] for label in order])
    ref = order.index(reference_label)
    ratio = jnp.sqrt(jnp.clip((phi[ref] + _PHI_EPS) / (phi + _PHI_EPS), lo, hi))
    # Exactly 1 for the reference (XLA may turn x / x into x * (1 / x)).
    ratio = ratio.at[ref].set(1.0)

    t = state.count
    active = t >= start_step
    if stop_step is not None:
      active = active & (t <= stop_step)
    refresh = active & (t % update_interval == 0)
    # s + (1 - mu)(r - s) = mu s + (1 - mu) r, written so that r = s = 1 stays exactly 1.
    smoothed = state.scales + (1 - momentum) * (ratio - state.scales)
    scales = jnp.where(refresh, smoothed, state.scales).astype(state.scales.dtype)
    factors = jnp.where(active, scales, jnp.ones_like(scales))

    scaled = jax.tree.map(
        lambda u, label: (u * factors[order.index(str(label))]).astype(u.dtype), updates, labels)
    return scaled, ScaleByAgvmState(count=optax.safe_increment(t), scales=scales)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
