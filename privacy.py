"""Rényi-DP accountant of the (Poisson-)subsampled Gaussian mechanism, as DP-SGD uses.

One step adds N(0, sigma^2 C^2) noise to a sum of per-example terms of norm
<= C, each example included with probability q. Its RDP at order alpha is
log(A_alpha) / (alpha - 1) (Mironov, Talwar, Zhang 2019), with
A_alpha = E_{z ~ mu0}[((1 - q) + q mu1(z)/mu0(z))^alpha], mu0 = N(0, sigma^2),
mu1 = N(1, sigma^2):
- integer alpha: the binomial expansion
  A = sum_{k=0}^{alpha} C(alpha, k) (1-q)^{alpha-k} q^k exp((k^2 - k) / (2 sigma^2));
- fractional alpha: their Section 3.3 series, split at z0 = sigma^2 log(1/q - 1) + 1/2
  into two binomial series with erfc weights, summed until the terms are below e^-30.
RDP composes additively over steps and converts to (epsilon, delta) with
eps = min_alpha [rdp(alpha) + log((alpha-1)/alpha) - (log delta + log alpha)/(alpha-1)]
("improved", Balle et al. 2020 / Canonne, Kamath, Steinke 2020; Opacus and current
TF-Privacy) or the classic eps = min_alpha [rdp(alpha) - log(delta)/(alpha-1)]
(Mironov 2017; older TF-Privacy). Default orders are Opacus/TF-Privacy's
1.1, 1.2, ..., 10.9, 12, ..., 63. Everything runs on the host in float64.

DiceSGD (`gradkit.transforms.dice_sgd`) is not DP-SGD: its fed-back error
buffer carries un-noised per-example information, so its noise is calibrated
to the effective sensitivity S = sqrt(C1^2 + 2 C1 C2) instead of C1 (official
code: std sigma C1 sqrt(1 + 2 C2/C1) on the clipped sum, sigma from the DP-SGD
accountant). `dice_sgd_noise_multiplier` gives that multiplier from sigma or
from a target (epsilon, delta); `dice_sgd_epsilon` reports a DiceSGD run's
epsilon (the subsampled-Gaussian RDP above at z = added std / S);
`epsilon` routes to it when given a `feedback_clip_threshold`. C2 = 0 is
DP-SGD exactly. Plain DP-SGD accounting with C1 alone under-reports epsilon
whenever C2 > 0.

References:
  I. Mironov, K. Talwar, L. Zhang, Rényi Differential Privacy of the Sampled
  Gaussian Mechanism, arXiv:1908.10530, 2019. I. Mironov, Rényi Differential
  Privacy, CSF 2017. B. Balle et al., Hypothesis Testing Interpretations and
  Renyi Differential Privacy, AISTATS 2020. M. Abadi et al., Deep Learning
  with Differential Privacy, CCS 2016. X. Zhang, Z. Bu, Z. S. Wu, M. Hong,
  Differentially Private SGD Without Clipping Bias: An Error-Feedback
  Approach, ICLR 2024 (DiceSGD; official code 564612540/DiceSGD for the
  noise calibration).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize, special

DEFAULT_ORDERS = tuple([1 + x / 10 for x in range(1, 100)] + list(range(12, 64)))
CONVERSIONS = ("improved", "classic")
NOISE_CALIBRATIONS = ("dice_sgd", "dp_sgd")
_SERIES_CUTOFF = -30.0  # log of the smallest series term still added (as TF-Privacy)


def _log_erfc(x: float) -> float:
  return math.log(2.0) + special.log_ndtr(-x * math.sqrt(2.0))


def _log_a_integer(q: float, sigma: float, alpha: int) -> float:
  k = np.arange(alpha + 1, dtype=np.float64)
  log_terms = (special.gammaln(alpha + 1) - special.gammaln(k + 1) - special.gammaln(alpha - k + 1)
               + k * math.log(q) + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma**2))
  return float(special.logsumexp(log_terms))


def _log_a_fractional(q: float, sigma: float, alpha: float) -> float:
  z0 = sigma**2 * math.log(1 / q - 1) + 0.5
  log_terms, signs = [], []
  k = 0
  while True:
    coef = special.binom(alpha, k)
    j = alpha - k
    log_coef = math.log(abs(coef))
    # The two halves of E_mu0[...] below and above z0, term k of each binomial series.
    lower = (log_coef + k * math.log(q) + j * math.log1p(-q) + (k * k - k) / (2 * sigma**2)
             + math.log(0.5) + _log_erfc((k - z0) / (math.sqrt(2) * sigma)))
    upper = (log_coef + j * math.log(q) + k * math.log1p(-q) + (j * j - j) / (2 * sigma**2)
             + math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma)))
    log_terms += [lower, upper]
    signs += [math.copysign(1.0, coef)] * 2
    if max(lower, upper) < _SERIES_CUTOFF:
      break
    k += 1
  return float(special.logsumexp(log_terms, b=signs))


def _rdp_one_step(q: float, sigma: float, alpha: float) -> float:
  if q == 0:
    return 0.0
  if sigma == 0 or np.isinf(alpha):
    return np.inf
  if q == 1.0:
    return alpha / (2 * sigma**2)
  if float(alpha).is_integer():
    log_a = _log_a_integer(q, sigma, int(alpha))
  else:
    log_a = _log_a_fractional(q, sigma, float(alpha))
  return log_a / (alpha - 1)


def _check_orders(orders: Sequence[float]) -> np.ndarray:
  a = np.atleast_1d(np.asarray(orders, np.float64))
  if a.ndim != 1 or a.size == 0 or np.any(np.isnan(a)) or np.any(a <= 1):
    raise ValueError(f"orders must be a non-empty 1-D sequence of values > 1, got {orders!r}")
  return a


def rdp_sampled_gaussian(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> np.ndarray:
  """RDP after `steps` compositions of the sampled Gaussian mechanism, one value per order.

  q = 1 gives the Gaussian mechanism's alpha / (2 sigma^2) per step; q = 0
  gives 0; sigma = 0 or alpha = inf gives inf.

  Args:
    noise_multiplier: sigma, the noise std over the sensitivity (clipping norm).
    sample_rate: q, the probability that an example is in a batch.
    steps: the number of compositions.
    orders: RDP orders alpha > 1. Default DEFAULT_ORDERS (1.1, 1.2, ..., 10.9,
      12, ..., 63; Opacus' and TF-Privacy's).

  Returns:
    A float64 array with the RDP at each order.

  References:
    Mironov, Talwar & Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism", 2019.
    https://arxiv.org/abs/1908.10530
  """
  if not (np.isfinite(noise_multiplier) and noise_multiplier >= 0):
    raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
  if not 0.0 <= sample_rate <= 1.0:
    raise ValueError(f"sample_rate must lie in [0, 1], got {sample_rate!r}")
  if int(steps) != steps or steps < 0:
    raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
  alphas = _check_orders(orders)
  return np.array([_rdp_one_step(float(sample_rate), float(noise_multiplier), a) * steps
                   for a in alphas])


def epsilon_from_rdp(
    orders: Sequence[float], rdp: Sequence[float], delta: float, conversion: str = "improved"
) -> tuple[float, float]:
  """(epsilon, optimal order) of an RDP curve at `delta`; epsilon is clamped at 0.

  Args:
    orders: RDP orders alpha > 1.
    rdp: the RDP value at each order.
    delta: the target delta, in (0, 1).
    conversion: "improved" (Balle et al. 2020, as Opacus and TF-Privacy) or
      "classic" (eps = rdp - log(delta) / (alpha - 1)). Default "improved".

  Returns:
    A tuple (epsilon, the order that attains it).

  References:
    Balle et al., "Hypothesis Testing Interpretations and Renyi Differential Privacy", AISTATS 2020.
    https://arxiv.org/abs/1905.09982
  """
  if conversion not in CONVERSIONS:
    raise ValueError(f"conversion must be one of {CONVERSIONS}, got {conversion!r}")
  if not 0.0 < delta < 1.0:
    raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
  alphas = _check_orders(orders)
  rdp = np.atleast_1d(np.asarray(rdp, np.float64))
  if rdp.shape != alphas.shape:
    raise ValueError(f"orders and rdp differ in length: {alphas.size} vs {rdp.size}")
  with np.errstate(invalid="ignore"):
    if conversion == "classic":
      eps = rdp - math.log(delta) / (alphas - 1)
    else:
      eps = rdp + np.log1p(-1 / alphas) - (math.log(delta) + np.log(alphas)) / (alphas - 1)
  if np.all(np.isnan(eps)):
    return np.inf, np.nan
  best = int(np.nanargmin(eps))
  return max(float(eps[best]), 0.0), float(alphas[best])


def epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
    conversion: str = "improved",
    *,
    clip_threshold: float | None = None,
    feedback_clip_threshold: float = 0.0,
) -> float:
  """epsilon of `steps` DP-SGD steps with noise multiplier sigma and sampling rate q at `delta`.

  For DP-SGD, sigma is the noise std over the clipping norm (optax.contrib.dpsgd's
  `noise_multiplier`) and q = batch size / dataset size.

  This is DP-SGD's accounting (one clip C1). For a DiceSGD run pass its
  `feedback_clip_threshold` C2 (and `clip_threshold` C1): a C2 > 0 is routed
  to `dice_sgd_epsilon` with the added std sigma C1, so DP-SGD's number is
  never reported for it. The DiceSGD transforms' own `noise_multiplier`
  argument (inflated inside by default) goes to `dice_sgd_epsilon` directly.

  Args:
    noise_multiplier: sigma, the noise std (as added) over the clipping norm C1.
    sample_rate: q, batch size / dataset size.
    steps: the number of DP-SGD steps.
    delta: the target delta, in (0, 1).
    orders: RDP orders alpha > 1. Default DEFAULT_ORDERS (1.1, ..., 63).
    conversion: "improved" or "classic", as in `epsilon_from_rdp`.
      Default "improved".
    clip_threshold: C1, required with a feedback_clip_threshold > 0. Default
      None.
    feedback_clip_threshold: C2 of a DiceSGD run (absolute); 0 is DP-SGD.
      Default 0.0.

  Returns:
    The epsilon, a float.

  References:
    Mironov, Talwar & Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism", 2019.
    https://arxiv.org/abs/1908.10530

    Balle et al., "Hypothesis Testing Interpretations and Renyi Differential Privacy", AISTATS 2020.
    https://arxiv.org/abs/1905.09982

  Example:
    >>> round(epsilon(1.5, 0.04, 2250, 1e-5), 4)
    7.3291
  """
  if feedback_clip_threshold:
    if clip_threshold is None:
      raise ValueError("epsilon of a DiceSGD run (feedback_clip_threshold > 0) needs its "
                       "clip_threshold C1: the noise is calibrated to sqrt(C1^2 + 2 C1 C2)")
    return dice_sgd_epsilon(noise_multiplier, sample_rate, steps, delta, clip_threshold,
                            feedback_clip_threshold, noise_calibration="dp_sgd", orders=orders,
                            conversion=conversion)
  rdp = rdp_sampled_gaussian(noise_multiplier, sample_rate, steps, orders)
  return epsilon_from_rdp(orders, rdp, delta, conversion)[0]


def noise_multiplier_for_epsilon(
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
    conversion: str = "improved",
) -> float:
  """The DP-SGD noise multiplier sigma whose `epsilon` is `target_epsilon` (to 1e-9 in log sigma).

  Solved by Brent's method on log sigma (epsilon falls as sigma grows), as
  Opacus' `get_noise_multiplier` solves it by bisection.

  Args:
    target_epsilon: the epsilon to reach, > 0.
    sample_rate: q, batch size / dataset size, in (0, 1].
    steps: the number of steps, >= 1.
    delta: the target delta, in (0, 1).
    orders: RDP orders alpha > 1. Default DEFAULT_ORDERS (1.1, ..., 63).
    conversion: "improved" or "classic", as in `epsilon_from_rdp`.
      Default "improved".

  Returns:
    sigma, a float.

  References:
    Mironov, Talwar & Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism", 2019.
    https://arxiv.org/abs/1908.10530

  Example:
    >>> round(noise_multiplier_for_epsilon(7.32911117143, 0.04, 2250, 1e-5), 4)
    1.5
  """
  if not (np.isfinite(target_epsilon) and target_epsilon > 0):
    raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
  if not 0.0 < sample_rate <= 1.0:
    raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}")
  if int(steps) != steps or steps < 1:
    raise ValueError(f"steps must be an integer >= 1, got {steps!r}")

  def gap(log_sigma):
    eps = epsilon(math.exp(log_sigma), sample_rate, steps, delta, orders, conversion)
    return min(eps, 1e300) - target_epsilon

  lo, hi = math.log(0.5), math.log(2.0)
  while gap(lo) <= 0:  # too much noise already: move down
    lo, hi = lo - math.log(4.0), lo
    if lo < math.log(1e-6):
      raise ValueError(f"target_epsilon {target_epsilon!r} is reached without noise")
  while gap(hi) > 0:
    lo, hi = hi, hi + math.log(4.0)
    if hi > math.log(1e8):
      raise ValueError(f"target_epsilon {target_epsilon!r} needs a noise multiplier above 1e8")
  return math.exp(optimize.brentq(gap, lo, hi, xtol=1e-9, rtol=1e-10))


def dice_sgd_sensitivity(clip_threshold: Any, feedback_clip_threshold: Any) -> Any:
  """sqrt(C1^2 + 2 C1 C2): the sensitivity DiceSGD's noise is calibrated to (C1 for DP-SGD).

  The official code adds std sigma C1 sqrt(1 + 2 C2 / C1) to the clipped sum,
  i.e. sigma times this value. Plain arithmetic: floats, numpy and traced jax
  values all work (the DiceSGD transforms call it under jit).

  Args:
    clip_threshold: C1, the per-example clipping norm.
    feedback_clip_threshold: C2, the absolute clipping norm of the fed-back
      error (the official code's C2 flag is the ratio C2 / C1).

  Returns:
    sqrt(C1^2 + 2 C1 C2), of the inputs' type.

  References:
    Zhang, Bu, Wu & Hong, "Differentially Private SGD Without Clipping Bias: An Error-Feedback
    Approach", ICLR 2024. https://arxiv.org/abs/2311.14632 ; official code:
    https://github.com/564612540/DiceSGD (DiceSGD/optimizers_utils.py)
  """
  return (clip_threshold * clip_threshold + 2 * clip_threshold * feedback_clip_threshold) ** 0.5


def _check_dice_thresholds(clip_threshold: float, feedback_clip_threshold: float) -> None:
  if not (np.isfinite(clip_threshold) and clip_threshold > 0):
    raise ValueError(f"clip_threshold must be a finite number > 0, got {clip_threshold!r}")
  if not (np.isfinite(feedback_clip_threshold) and feedback_clip_threshold >= 0):
    raise ValueError("feedback_clip_threshold must be a finite number >= 0, got "
                     f"{feedback_clip_threshold!r}")


def dice_sgd_noise_multiplier(
    clip_threshold: float,
    feedback_clip_threshold: float,
    *,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
    delta: float | None = None,
    orders: Sequence[float] = DEFAULT_ORDERS,
    conversion: str = "improved",
) -> float:
  """DiceSGD's noise multiplier sigma sqrt(1 + 2 C2 / C1) from DP-SGD's sigma or a target epsilon.

  The result is the noise std on the clipped per-example sum over C1 (the
  quantity `dice_sgd_aggregate(..., noise_calibration="dp_sgd")` takes);
  with the default calibration the transforms take DP-SGD's sigma and apply
  this factor themselves. Give exactly one of `noise_multiplier` (DP-SGD's
  sigma) or `target_epsilon` with `sample_rate`, `steps` and `delta` (sigma
  is then solved by `noise_multiplier_for_epsilon`, as the official code gets
  it from the DP-SGD accountant). C2 = 0 returns sigma unchanged; the factor
  grows with kappa = C2 / C1. Calibration of the official code; its README
  lists the DiceSGD noise computation as a TODO and the paper's theorem could
  not be checked here (see BUILD_NOTES.md).

  Args:
    clip_threshold: C1 > 0, the per-example clipping norm.
    feedback_clip_threshold: C2 >= 0, the absolute clipping norm of the
      fed-back error.
    noise_multiplier: DP-SGD's sigma. Default None.
    target_epsilon: the epsilon to reach instead. Default None.
    sample_rate: q with `target_epsilon`. Default None.
    steps: the number of steps with `target_epsilon`. Default None.
    delta: the delta with `target_epsilon`. Default None.
    orders: RDP orders for the solve. Default DEFAULT_ORDERS (1.1, ..., 63).
    conversion: "improved" or "classic" for the solve. Default "improved".

  Returns:
    The DiceSGD noise multiplier, a float.

  References:
    Zhang, Bu, Wu & Hong, "Differentially Private SGD Without Clipping Bias: An Error-Feedback
    Approach", ICLR 2024. https://arxiv.org/abs/2311.14632 ; official code:
    https://github.com/564612540/DiceSGD

  Example:
    >>> round(dice_sgd_noise_multiplier(0.5, 0.5, noise_multiplier=1.2), 6)
    2.078461
  """
  _check_dice_thresholds(clip_threshold, feedback_clip_threshold)
  if (noise_multiplier is None) == (target_epsilon is None):
    raise ValueError("give exactly one of noise_multiplier (DP-SGD's sigma) or target_epsilon")
  if target_epsilon is not None:
    missing = [n for n, v in (("sample_rate", sample_rate), ("steps", steps), ("delta", delta))
               if v is None]
    if missing:
      raise ValueError(f"target_epsilon needs {missing}")
    noise_multiplier = noise_multiplier_for_epsilon(target_epsilon, sample_rate, steps, delta,
                                                    orders, conversion)
  if not (np.isfinite(noise_multiplier) and noise_multiplier >= 0):
    raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
  return float(noise_multiplier * dice_sgd_sensitivity(float(clip_threshold),
                                                        float(feedback_clip_threshold))
               / clip_threshold)


def dice_sgd_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    clip_threshold: float,
    feedback_clip_threshold: float,
    noise_calibration: str = "dice_sgd",
    orders: Sequence[float] = DEFAULT_ORDERS,
    conversion: str = "improved",
) -> float:
  """epsilon of a DiceSGD run: the sampled-Gaussian RDP at z = added std / sqrt(C1^2 + 2 C1 C2).

  Pass the arguments given to `dice_sgd_aggregate` / `dice_sgd`: with
  noise_calibration "dice_sgd" (their default) the added std on the clipped
  sum is sigma sqrt(C1^2 + 2 C1 C2), so z = sigma; with "dp_sgd" it is
  sigma C1 and z = sigma C1 / sqrt(C1^2 + 2 C1 C2) < sigma, a larger epsilon
  than DP-SGD's. C2 = 0 gives DP-SGD's epsilon exactly. The guarantee is the
  one the official code's calibration implies (the error buffer makes the
  steps depend on each other; see BUILD_NOTES.md), not a DP-SGD one.

  Args:
    noise_multiplier: sigma as given to the transform.
    sample_rate: q, batch size / dataset size.
    steps: the number of DiceSGD steps.
    delta: the target delta, in (0, 1).
    clip_threshold: C1 > 0.
    feedback_clip_threshold: C2 >= 0 (absolute).
    noise_calibration: the transform's `noise_calibration`, "dice_sgd" or
      "dp_sgd". Default "dice_sgd".
    orders: RDP orders alpha > 1. Default DEFAULT_ORDERS (1.1, ..., 63).
    conversion: "improved" or "classic", as in `epsilon_from_rdp`.
      Default "improved".

  Returns:
    The epsilon, a float.

  References:
    Zhang, Bu, Wu & Hong, "Differentially Private SGD Without Clipping Bias: An Error-Feedback
    Approach", ICLR 2024. https://arxiv.org/abs/2311.14632 ; official code:
    https://github.com/564612540/DiceSGD

  Example:
    >>> eps = dice_sgd_epsilon(1.5, 0.04, 2250, 1e-5, 0.5, 0.5, noise_calibration="dp_sgd")
    >>> eps > epsilon(1.5, 0.04, 2250, 1e-5)
    True
  """
  _check_dice_thresholds(clip_threshold, feedback_clip_threshold)
  if noise_calibration not in NOISE_CALIBRATIONS:
    raise ValueError(f"noise_calibration must be one of {NOISE_CALIBRATIONS}, "
                     f"got {noise_calibration!r}")
  if noise_calibration == "dice_sgd":
    z = noise_multiplier
  else:
    z = noise_multiplier * clip_threshold / dice_sgd_sensitivity(clip_threshold,
                                                                 feedback_clip_threshold)
  rdp = rdp_sampled_gaussian(z, sample_rate, steps, orders)
  return epsilon_from_rdp(orders, rdp, delta, conversion)[0]
