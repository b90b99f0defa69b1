"""Learning-rate schedules: linear decay with warmup, and refined schedules.

`linear_decay_schedule` is the worst-case optimal last-iterate schedule of
Defazio et al.; it is `optax.join_schedules` of two `optax.linear_schedule`s
(optax has a warmup-cosine but no warmup-linear helper). `refined_schedule`
turns the gradient norms recorded in a previous run into the schedule for the
next one (their Section 3 refinement, official code
facebookresearch/adaptive_scheduling: `find_closed_form_schedule` and the
median-filter smoothing of its README/visual.py).

References:
  A. Defazio, A. Cutkosky, H. Mehta, K. Mishchenko, When, Why and How Much?
  Adaptive Learning Rate Scheduling by Refinement (Optimal Linear Decay
  Learning Rate Schedules and Further Refinements), arXiv:2310.07831, 2023.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import optax
from scipy import ndimage

from gradkit import _checks

_NORM_POWERS = {"l2": 2.0, "l1": 1.0}


def linear_decay_schedule(
    peak_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    init_value: float = 0.0,
    end_value: float = 0.0,
) -> optax.Schedule:
  """Linear warmup from `init_value` to `peak_value`, then linear decay to `end_value`.

  Step t < warmup_steps: init + (peak - init) t / warmup_steps (optax's warmup
  convention, as in `optax.warmup_cosine_decay_schedule`). Afterwards
  peak + (end - peak) (t - warmup) / (total_steps - 1 - warmup), so the last
  step of a `total_steps` run (t = total_steps - 1) gets `end_value`, the
  paper's eta_t proportional to 1 - t/T; later steps stay at `end_value`.

  Args:
    peak_value: the learning rate at the end of warmup.
    total_steps: T, the length of the run (>= warmup_steps + 1).
    warmup_steps: steps of linear warmup. Default 0.
    init_value: the learning rate at step 0 of the warmup. Default 0.0.
    end_value: the learning rate at step T - 1 and after. Default 0.0.

  Returns:
    An `optax.Schedule`.

  References:
    Defazio, Cutkosky, Mehta & Mishchenko, "When, Why and How Much? Adaptive Learning Rate
    Scheduling by Refinement", 2023. https://arxiv.org/abs/2310.07831 ; official code:
    https://github.com/facebookresearch/adaptive_scheduling

  Example:
    >>> sched = linear_decay_schedule(1.0, total_steps=5)
    >>> [float(sched(t)) for t in range(5)]
    [1.0, 0.75, 0.5, 0.25, 0.0]
  """
  _checks.check_non_negative("peak_value", peak_value)
  _checks.check_non_negative("init_value", init_value)
  _checks.check_non_negative("end_value", end_value)
  if int(warmup_steps) != warmup_steps or warmup_steps < 0:
    raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
  if int(total_steps) != total_steps or total_steps < warmup_steps + 1:
    raise ValueError(f"total_steps must be an integer > warmup_steps, got {total_steps!r}")
  decay = optax.linear_schedule(peak_value, end_value, max(total_steps - 1 - warmup_steps, 1))
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(init_value, peak_value, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def smooth_gradient_norms(grad_norms: Sequence[float], fraction: float = 0.1) -> np.ndarray:
  """Median filter of width W = 2 floor(floor(fraction T) / 2) + 1 (about fraction T).

  As in the official code: only the end of the sequence is padded (by
  reflection, 2W values, dropped after filtering); the start uses
  `median_filter`'s "nearest" mode. W = 1 leaves the norms unchanged.

  Args:
    grad_norms: the T gradient norms of a previous run.
    fraction: the filter width as a fraction of T. Default 0.1.

  Returns:
    The smoothed norms, a float64 array of length T.

  References:
    Defazio, Cutkosky, Mehta & Mishchenko, "When, Why and How Much? Adaptive Learning Rate
    Scheduling by Refinement", 2023. https://arxiv.org/abs/2310.07831 ; official code:
    https://github.com/facebookresearch/adaptive_scheduling
  """
  g = np.asarray(grad_norms, np.float64)
  width = 2 * (int(fraction * g.size) // 2) + 1
  if width == 1:
    return g
  pad = 2 * width
  padded = np.pad(g, (0, pad), mode="reflect")
  return ndimage.median_filter(padded, size=width, mode="nearest")[:-pad]


def refined_schedule_values(
    grad_norms: Sequence[float], norm: str = "l2", smoothing: float = 0.1
) -> np.ndarray:
  """The refined schedule's shape (max 1, last value 0) from one run's gradient norms.

  w_t = G_t^-2 for SGD-like runs ("l2": G are l2 norms) or G_t^-1 for Adam-like
  runs ("l1": G are l1 norms); s_t = w_t sum_{p>t} w_p, s_T = 0; the result is
  s / max(s) (the official code divides by sum(w) and normalises by the max when
  plotting; only the max-normalised shape is scale-free). G is median-smoothed
  first (`smooth_gradient_norms` with `fraction=smoothing`; 0 disables it).
  Constant norms give linear decay 1 - t/(T-1).

  Args:
    grad_norms: the T > 1 gradient norms (finite, > 0) of a previous run.
    norm: "l2" (SGD-like runs) or "l1" (Adam-like runs). Default "l2".
    smoothing: median-filter width as a fraction of T; 0 disables it.
      Default 0.1.

  Returns:
    A float64 array of length T with maximum 1 and last value 0.

  References:
    Defazio, Cutkosky, Mehta & Mishchenko, "When, Why and How Much? Adaptive Learning Rate
    Scheduling by Refinement", 2023. https://arxiv.org/abs/2310.07831 ; official code:
    https://github.com/facebookresearch/adaptive_scheduling
  """
  if norm not in _NORM_POWERS:
    raise ValueError(f"norm must be one of {sorted(_NORM_POWERS)}, got {norm!r}")
  _checks.check_unit_interval("smoothing", smoothing, closed=True)
  g = np.asarray(grad_norms, np.float64)
  if g.ndim != 1 or g.size < 2:
    raise ValueError(f"grad_norms must be a 1-D sequence of >= 2 values, got shape {g.shape}")
  if not np.all(np.isfinite(g) & (g > 0)):
    raise ValueError("grad_norms must be finite and > 0")
  w = smooth_gradient_norms(g, smoothing) ** -_NORM_POWERS[norm]
  tail = np.cumsum(w[::-1])[::-1]  # tail[t] = sum_{p >= t} w_p
  s = np.append(w[:-1] * tail[1:], 0.0)
  return s / s.max()


def refined_schedule(
    grad_norms: Sequence[float],
    peak_value: float,
    norm: str = "l2",
    smoothing: float = 0.1,
    total_steps: int | None = None,
) -> optax.Schedule:
  """optax schedule peak_value * refined shape of `grad_norms` (see `refined_schedule_values`).

  The recorded norms are smoothed at their own length; with `total_steps`,
  the smoothed norms are then linearly resampled to that many steps (as the
  official visual.py does) before the schedule is computed. Steps past the
  end get the last value, 0. Warmup is not added: the refinement produces it
  when the early gradient norms are large.

  Args:
    grad_norms: the gradient norms (finite, > 0) of a previous run.
    peak_value: the schedule's maximum.
    norm: "l2" (SGD-like runs) or "l1" (Adam-like runs). Default "l2".
    smoothing: median-filter width as a fraction of the run. Default 0.1.
    total_steps: resample the schedule to this many steps; None keeps the
      recorded length. Default None.

  Returns:
    An `optax.Schedule`.

  References:
    Defazio, Cutkosky, Mehta & Mishchenko, "When, Why and How Much? Adaptive Learning Rate
    Scheduling by Refinement", 2023. https://arxiv.org/abs/2310.07831 ; official code:
    https://github.com/facebookresearch/adaptive_scheduling

  Example:
    >>> sched = refined_schedule([4.0, 2.0, 1.0, 1.0, 1.0], peak_value=1.0)
    >>> round(float(sched(0)), 4), float(sched(2))
    (0.1016, 1.0)
  """
  _checks.check_non_negative("peak_value", peak_value)
  _checks.check_unit_interval("smoothing", smoothing, closed=True)
  g = np.asarray(grad_norms, np.float64)
  if total_steps is not None:
    if int(total_steps) != total_steps or total_steps < 2:
      raise ValueError(f"total_steps must be an integer >= 2, got {total_steps!r}")
    if g.ndim == 1 and g.size >= 2:
      g = smooth_gradient_norms(g, smoothing)
      g = np.interp(np.linspace(0.0, 1.0, total_steps), np.linspace(0.0, 1.0, g.size), g)
      smoothing = 0.0
  values = jnp.asarray(peak_value * refined_schedule_values(g, norm, smoothing), jnp.float32)

  def schedule(count):
    return values[jnp.clip(count, 0, values.shape[0] - 1)]

  return schedule
