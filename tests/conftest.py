"""Shared fixtures: a small ill-conditioned regression every optimizer must fit."""

from __future__ import annotations

import os

# Eight simulated CPU devices for the shard_map tests; XLA reads this once, when
# jax initialises its backend, so it must be set before any test imports jax.
# The suite's problems are tiny, so compilation, not execution, is most of its
# time: LLVM's optimisation level 0 for the CPU backend halves compile time
# (measured: 85 s -> 55 s on the sharding and training tests). It changes how
# fast the generated code runs, not what it computes (XLA's HLO passes and its
# fusion decisions are unchanged; floating-point semantics are IEEE at every
# LLVM level, XLA:CPU enables no fast-math by default). Subprocesses the tests
# start inherit both flags.
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=8",
                  "--xla_backend_optimization_level=0"]))

import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# Many tests compile the same program from fresh closures (the same optimizer
# on the same problem, in another test or another pytest-xdist worker). JAX's
# persistent compilation cache keys executables on the program and the
# compiler flags, not on the Python function, so those compile once per test
# run. The folder is private to this run (the controller makes it before it
# starts the xdist workers, which inherit its path) and starts empty: nothing
# carries over between runs or machines.
if "GRADKIT_TEST_XLA_CACHE" not in os.environ:
  os.environ["GRADKIT_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="gradkit-tests-xla-cache-")
jax.config.update("jax_compilation_cache_dir", os.environ["GRADKIT_TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class Regression:
  """f(W, b) = mean ||x W + b - y||^2 with input scales spanning 1..10 (cond ~100)."""

  def __init__(self, seed: int = 0, n: int = 64, d_in: int = 6, d_out: int = 3):
    rng = np.random.default_rng(seed)
    scales = np.geomspace(1.0, 10.0, d_in)
    self.x = jnp.asarray(rng.normal(size=(n, d_in)) * scales, jnp.float32)
    w_true = rng.normal(size=(d_in, d_out))
    self.y = jnp.asarray(np.asarray(self.x) @ w_true + 0.5, jnp.float32)
    init = rng.normal(size=(d_in, d_out)) * 0.1
    self.params = {"w": jnp.asarray(init, jnp.float32), "b": jnp.zeros((d_out,), jnp.float32)}

  def loss(self, params):
    pred = self.x @ params["w"] + params["b"]
    return jnp.mean(jnp.sum((pred - self.y) ** 2, axis=-1))

  def grad(self, params):
    return jax.grad(self.loss)(params)

  def sampled_loss(self, params, key):
    """`sampled_obj_fn` of Sophia-G: the loss against targets drawn from the model.

    The loss is the Gaussian NLL of variance 1/2 (up to constants), so targets
    are pred + N(0, 1/2) (no gradient); scaled by sqrt(n) (gradkit's GNB
    convention), the square of this function's gradient has expectation the
    diagonal of the Gauss-Newton matrix (2/n) sum_b J_b^T J_b of `loss`.
    """
    pred = self.x @ params["w"] + params["b"]
    noise = jax.random.normal(key, pred.shape, jnp.float32).astype(pred.dtype)
    target = jax.lax.stop_gradient(pred + noise * 0.5 ** 0.5)
    n = pred.shape[0]
    return jnp.sum((pred - target) ** 2) / n ** 0.5


@pytest.fixture
def regression() -> Regression:
  return Regression()


def pytest_sessionfinish(session):
  """Removes the run's compilation cache (the controller, or a plain run, finishes last)."""
  del session
  if "PYTEST_XDIST_WORKER" not in os.environ:
    shutil.rmtree(jax.config.jax_compilation_cache_dir, ignore_errors=True)
