"""Bilevel hyper-cleaning with `gradkit.implicit`: learn to down-weight corrupted labels.

A softmax-regression classifier is trained on scikit-learn's digits, half of
whose training labels were moved to a wrong class. Each training example i
gets a weight sigma(lam_i) (Franceschi et al., 2017):

  inner:  w*(lam) = argmin_w mean_i sigma(lam_i) CE_i(w) + 1/2 l2 ||w||^2  (noisy train set)
  outer:  min_lam  CE(w*(lam)) on a clean validation set.

The inner problem is solved by `gradkit.implicit.inner_solver` (momentum SGD,
warm-started from the previous outer step), and `jax.grad` of the outer loss
through it uses the implicit function theorem (conjugate gradient on the
inner Hessian) instead of backpropagating through the inner steps; Adam
takes the outer steps on lam. The data, label flipping and loss come from
`gradkit.experiments.bilevel_tasks` (the `hyper_cleaning` benchmark of
`experiments/configs/bilevel_hyper_cleaning.py`). Prints the mean learned
weight of clean and of corrupted examples, and the test accuracy with and
without the learned weights.

  python examples/bilevel_hyper_cleaning.py --steps 100
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradkit import implicit
from gradkit.experiments.bilevel_tasks import _digits, flip_labels, softmax_cross_entropy


def main(steps: int = 100, num_train: int = 300, flip_fraction: float = 0.5, seed: int = 0,
         l2: float = 1e-3, inner_steps: int = 50, outer_lr: float = 0.3) -> dict:
  (xt, yt), (xv, yv), (xs, ys) = _digits(seed, num_train, 300, 500)
  noisy, flipped = flip_labels(np.asarray(yt), flip_fraction, seed)
  noisy = jnp.asarray(noisy)

  def inner_fn(w, lam):
    losses = softmax_cross_entropy(w, xt, noisy)
    return jnp.mean(jax.nn.sigmoid(lam) * losses) + 0.5 * l2 * jnp.sum(w ** 2)

  def outer_fn(lam, w):
    return jnp.mean(softmax_cross_entropy(w, xv, yv))

  # Implicit differentiation (the default), linear systems solved by CG.
  solve = implicit.inner_solver(inner_fn, optax.sgd(1.0, momentum=0.9), maxiter=inner_steps,
                                stop_at_tol=False, solve=implicit.linear_solver("cg", tol=1e-6))
  outer = optax.adam(outer_lr)

  def objective(lam, w_warm):
    w, _ = solve(w_warm, lam)
    return outer_fn(lam, w), w

  @jax.jit
  def outer_step(lam, w, opt_state):
    (loss, w), hypergradient = jax.value_and_grad(objective, has_aux=True)(lam, w)
    updates, opt_state = outer.update(hypergradient, opt_state, lam)
    return optax.apply_updates(lam, updates), w, opt_state, loss

  lam = jnp.zeros((num_train,))
  w = jnp.zeros((xt.shape[1], 10))
  opt_state = outer.init(lam)
  for step in range(steps):
    lam, w, opt_state, loss = outer_step(lam, w, opt_state)
    if step % 25 == 0:
      print(f"outer step {step:4d}  validation loss {float(loss):.4f}")

  # Accuracy of a classifier trained to convergence with and without the weights.
  accurate = implicit.inner_solver(inner_fn, optax.sgd(1.0, momentum=0.9), maxiter=3000, tol=1e-5)
  w0 = jnp.zeros_like(w)
  def accuracy(lam):
    w_fit, _ = accurate(w0, lam)
    return float(jnp.mean(jnp.argmax(xs @ w_fit, axis=1) == ys))

  weights = np.asarray(jax.nn.sigmoid(lam))
  result = {
      "clean_weight": float(weights[~flipped].mean()),
      "corrupted_weight": float(weights[flipped].mean()),
      "uniform_accuracy": accuracy(jnp.zeros_like(lam)),
      "cleaned_accuracy": accuracy(lam),
      "validation_loss": float(loss),
  }
  print(f"mean weight: clean examples {result['clean_weight']:.3f}, "
        f"corrupted examples {result['corrupted_weight']:.3f} (both start at 0.5)")
  print(f"test accuracy: uniform weights {result['uniform_accuracy']:.4f}, "
        f"learned weights {result['cleaned_accuracy']:.4f}")
  return result


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  main(parser.parse_args().steps)
