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

References:
  I. Mironov, K. Talwar, L. Zhang, Rényi Differential Privacy of the Sampled
  Gaussian Mechanism, arXiv:1908.10530, 2019. I. Mironov, Rényi Differential
  Privacy, CSF 2017. B. Balle et al., Hypothesis Testing Interpretations and
  Renyi Differential Privacy, AISTATS 2020. M. Abadi et al., Deep Learning
  with Differential Privacy, CCS 2016. X. Zhang, Z. Bu, Z. S. Wu, M. Hong,
  Differentially Private SGD Without Clipping Bias: An Error-Feedback
  Approach, ICLR 2024 (DiceSGD, which accounts with this RDP analysis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special

DEFAULT_ORDERS = tuple([1 + x / 10 for x in range(1, 100)] + list(range(12, 64)))
CONVERSIONS = ("improved", "classic")
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
) -> float:
  """epsilon of `steps` DP-SGD steps with noise multiplier sigma and sampling rate q at `delta`.

  For DP-SGD, sigma is the noise std over the clipping norm (optax.contrib.dpsgd's
  `noise_multiplier`) and q = batch size / dataset size.

  Args:
    noise_multiplier: sigma, the noise std over the clipping norm.
    sample_rate: q, batch size / dataset size.
    steps: the number of DP-SGD steps.
    delta: the target delta, in (0, 1).
    orders: RDP orders alpha > 1. Default DEFAULT_ORDERS (1.1, ..., 63).
    conversion: "improved" or "classic", as in `epsilon_from_rdp`.
      Default "improved".

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
  rdp = rdp_sampled_gaussian(noise_multiplier, sample_rate, steps, orders)
  return epsilon_from_rdp(orders, rdp, delta, conversion)[0]
