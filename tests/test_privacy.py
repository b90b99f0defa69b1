"""RDP accountant of the sampled Gaussian mechanism against published reference values.

References for the numbers:
- TF-Privacy, tensorflow_privacy/privacy/analysis/rdp_accountant_test.py
  (github.com/tensorflow/privacy): compute_rdp(q=0.1, sigma=2, steps=10, order 5)
  = 0.07737; compute_rdp(0.01, 2.5, 50, [1.5, 2.5, 5, 50, 100, inf]) =
  [0.00065, 0.001085, 0.00218075, 0.023846, 167.416307, inf]; with the classic
  conversion, q=0.01, sigma=4, 10000 steps, orders 2..32, delta=1e-5: eps =
  1.258575 at order 20; and the composition test (eps 8.509656 at order 2.5).
- Opacus, opacus/tests/accountants_test.py::test_rdp_accountant
  (github.com/pytorch/opacus): sigma=1.5, q=0.04, 2250 steps, delta=1e-5,
  default orders, improved conversion: eps = 7.32911117143.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from gradkit.privacy import (
    DEFAULT_ORDERS, dice_sgd_epsilon, dice_sgd_noise_multiplier, dice_sgd_sensitivity, epsilon,
    epsilon_from_rdp, noise_multiplier_for_epsilon, rdp_sampled_gaussian)


def test_tf_privacy_rdp_values():
  assert rdp_sampled_gaussian(2, 0.1, 10, [5])[0] == pytest.approx(0.07737, abs=1e-5)
  got = rdp_sampled_gaussian(2.5, 0.01, 50, [1.5, 2.5, 5, 50, 100, np.inf])
  np.testing.assert_allclose(got[:5], [0.00065, 0.001085, 0.00218075, 0.023846, 167.416307],
                             atol=1e-5)
  assert got[5] == np.inf


def test_tf_privacy_classic_conversion():
  orders = list(range(2, 33))
  eps, order = epsilon_from_rdp(orders, rdp_sampled_gaussian(4, 0.01, 10000, orders), 1e-5,
                                conversion="classic")
  assert eps == pytest.approx(1.258575, abs=1e-6)
  assert order == 20


def test_tf_privacy_composition():
  orders = (1.25, 1.5, 1.75, 2., 2.5, 3., 4., 5., 6., 7., 8., 10., 12., 14., 16., 20., 24.,
            28., 32., 64., 256.)
  rdp = rdp_sampled_gaussian(0.4, 1e-4, 40000, orders) + rdp_sampled_gaussian(2, 0.1, 100, orders)
  eps, order = epsilon_from_rdp(orders, rdp, 1e-5, conversion="classic")
  assert eps == pytest.approx(8.509656, abs=1e-6)
  assert order == 2.5


def test_opacus_rdp_accountant_value():
  assert epsilon(1.5, 0.04, int(90 / 0.04), 1e-5) == pytest.approx(7.32911117143, abs=1e-9)


@pytest.mark.parametrize("sigma, steps", [(0.7, 1), (1.3, 17)])
def test_full_batch_is_the_gaussian_mechanism(sigma, steps):
  orders = np.array([1.5, 2.0, 3.25, 8.0, 40.0])
  np.testing.assert_allclose(rdp_sampled_gaussian(sigma, 1.0, steps, orders),
                             steps * orders / (2 * sigma**2), rtol=1e-12)
  # Both conversions in closed form, minimised over the same grid.
  rdp = steps * np.asarray(DEFAULT_ORDERS) / (2 * sigma**2)
  a = np.asarray(DEFAULT_ORDERS)
  classic = np.min(rdp - math.log(1e-6) / (a - 1))
  improved = np.min(rdp + np.log((a - 1) / a) - (math.log(1e-6) + np.log(a)) / (a - 1))
  assert epsilon(sigma, 1.0, steps, 1e-6, conversion="classic") == pytest.approx(classic)
  assert epsilon(sigma, 1.0, steps, 1e-6) == pytest.approx(improved)


@pytest.mark.parametrize("q, sigma, alpha", [(0.05, 1.1, 2.7), (0.2, 2.0, 6.0), (0.01, 0.8, 9.5)])
def test_log_a_matches_numerical_integration(q, sigma, alpha):
  # A_alpha = E_{z ~ N(0, sigma^2)}[((1 - q) + q exp((2z - 1) / (2 sigma^2)))^alpha].
  def integrand(z):
    ratio = np.exp((2 * z - 1) / (2 * sigma**2))  # mu1(z) / mu0(z)
    return stats.norm.pdf(z, scale=sigma) * ((1 - q) + q * ratio) ** alpha

  a_alpha, _ = integrate.quad(integrand, -40 * sigma, 40 * sigma, limit=500, epsabs=0, epsrel=1e-12)
  expected = math.log(a_alpha) / (alpha - 1)
  assert rdp_sampled_gaussian(sigma, q, 1, [alpha])[0] == pytest.approx(expected, rel=1e-6)


def test_rdp_is_nondecreasing_in_order_and_linear_in_steps():
  one = rdp_sampled_gaussian(1.0, 0.02, 1)
  assert np.all(np.diff(one) >= -1e-12)  # fractional and integer orders interleave smoothly
  np.testing.assert_allclose(rdp_sampled_gaussian(1.0, 0.02, 250), 250 * one, rtol=1e-12)


def test_edge_cases():
  assert np.all(rdp_sampled_gaussian(1.0, 0.0, 100) == 0.0)
  assert np.all(np.isinf(rdp_sampled_gaussian(0.0, 0.5, 1)))
  assert epsilon(0.0, 0.5, 1, 1e-5) == np.inf
  a = np.asarray(DEFAULT_ORDERS)  # no data used: only the conversion's own cost remains
  no_data = np.min(np.log((a - 1) / a) - (math.log(1e-5) + np.log(a)) / (a - 1))
  assert epsilon(1.0, 0.0, 10, 1e-5) == pytest.approx(no_data)
  assert epsilon(1.1, 256 / 60000, 1000, 1e-5) < epsilon(1.1, 256 / 60000, 10000, 1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(noise_multiplier=-1.0), dict(sample_rate=1.5), dict(steps=-1), dict(steps=2.5),
    dict(delta=0.0), dict(delta=1.0), dict(orders=[1.0, 2.0]), dict(orders=[]),
    dict(conversion="tight"),
])
def test_invalid_arguments(kwargs):
  args = dict(noise_multiplier=1.0, sample_rate=0.01, steps=10, delta=1e-5) | kwargs
  with pytest.raises(ValueError):
    epsilon(**args)


# DiceSGD calibration and accounting. Closed form (official code 564612540/DiceSGD,
# optimizers_utils.py, noise std sigma * C1 * sqrt(1 + 2 C2/C1) on the clipped sum, with sigma
# the DP-SGD accountant's multiplier): the DiceSGD multiplier is sigma * sqrt(1 + 2 kappa),
# kappa = C2 / C1, and at a given added std the accountant sees z_eff = std / sqrt(C1^2 + 2 C1 C2).


def _improved_full_batch_eps(z, steps, delta):
  a = np.asarray(DEFAULT_ORDERS)  # q = 1: RDP = steps * alpha / (2 z^2), improved conversion
  return np.min(steps * a / (2 * z**2) + np.log((a - 1) / a)
                - (math.log(delta) + np.log(a)) / (a - 1))


@pytest.mark.parametrize("sigma, c1, c2", [(1.2, 0.5, 0.5), (0.8, 1.0, 3.0), (2.0, 0.1, 0.0)])
def test_dice_sgd_noise_multiplier_closed_form(sigma, c1, c2):
  kappa = c2 / c1
  assert dice_sgd_noise_multiplier(c1, c2, noise_multiplier=sigma) == pytest.approx(
      sigma * np.sqrt(1 + 2 * kappa), rel=1e-12)
  assert dice_sgd_sensitivity(c1, c2) == pytest.approx(np.sqrt(c1**2 + 2 * c1 * c2), rel=1e-12)
  # Sheet oracle 1: sigma 1.2, C1 = C2 = 0.5 gives std 1.2 * 0.5 * sqrt(3) on the sum.
  assert dice_sgd_noise_multiplier(0.5, 0.5, noise_multiplier=1.2) * 0.5 == pytest.approx(
      1.0392304845, abs=1e-9)


def test_dice_sgd_noise_multiplier_is_monotone_and_reduces_to_dp_sgd():
  kappas = np.linspace(0.0, 30.0, 61)
  values = [dice_sgd_noise_multiplier(0.5, 0.5 * k, noise_multiplier=1.3) for k in kappas]
  assert np.all(np.diff(values) > 0)
  assert values[0] == 1.3  # C2 = 0: no feedback, DP-SGD's multiplier exactly
  assert dice_sgd_noise_multiplier(1.0, 1e-12, noise_multiplier=1.3) == pytest.approx(1.3)


def test_noise_multiplier_for_epsilon_inverts_the_opacus_value():
  sigma = noise_multiplier_for_epsilon(7.32911117143, 0.04, 2250, 1e-5)
  assert sigma == pytest.approx(1.5, rel=1e-5)
  dice = dice_sgd_noise_multiplier(0.5, 1.0, target_epsilon=7.32911117143, sample_rate=0.04,
                                   steps=2250, delta=1e-5)
  assert dice == pytest.approx(1.5 * np.sqrt(5.0), rel=1e-5)
  with pytest.raises(ValueError, match="exactly one"):
    dice_sgd_noise_multiplier(0.5, 1.0, noise_multiplier=1.0, target_epsilon=2.0)


@pytest.mark.parametrize("c1, c2", [(1.0, 1.0), (0.5, 2.0)])
def test_dice_sgd_epsilon_full_batch_closed_form(c1, c2):
  sigma, steps, delta = 3.0, 20, 1e-6
  # Noise added as the transform does by default: the accountant sees z = sigma.
  assert dice_sgd_epsilon(sigma, 1.0, steps, delta, c1, c2) == pytest.approx(
      _improved_full_batch_eps(sigma, steps, delta), rel=1e-9)
  # Only DP-SGD's sigma C1 added: z_eff = sigma C1 / sqrt(C1^2 + 2 C1 C2) (sheet oracle 2).
  z_eff = sigma * c1 / np.sqrt(c1**2 + 2 * c1 * c2)
  got = dice_sgd_epsilon(sigma, 1.0, steps, delta, c1, c2, noise_calibration="dp_sgd")
  assert got == pytest.approx(_improved_full_batch_eps(z_eff, steps, delta), rel=1e-9)
  assert got > epsilon(sigma, 1.0, steps, delta)  # the DP-SGD number under-reports


def test_dice_sgd_epsilon_without_feedback_is_dp_sgd():
  for calibration in ("dice_sgd", "dp_sgd"):
    assert dice_sgd_epsilon(1.5, 0.04, 2250, 1e-5, 0.5, 0.0, noise_calibration=calibration) == (
        pytest.approx(7.32911117143, abs=1e-9))


def test_epsilon_routes_a_feedback_run_to_the_dice_sgd_accountant():
  c1, c2, steps, delta = 1.0, 1.0, 20, 1e-6
  # `epsilon`'s multiplier is the added std over C1; with C2 > 0 it must not be DP-SGD's number.
  got = epsilon(3.0, 1.0, steps, delta, clip_threshold=c1, feedback_clip_threshold=c2)
  assert got == pytest.approx(_improved_full_batch_eps(3.0 / np.sqrt(3.0), steps, delta), rel=1e-9)
  with pytest.raises(ValueError, match="clip_threshold"):
    epsilon(3.0, 1.0, steps, delta, feedback_clip_threshold=c2)
