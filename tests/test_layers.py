"""Tests for gradkit.layers.StableEmbedding (Dettmers et al., ICLR 2022)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gradkit.layers import StableEmbedding


def _np_stable_embedding(table, ids, scale, bias, eps=1e-5):
  """Lookup + torch-style LayerNorm (biased variance, eps inside sqrt) in float64."""
  x = np.asarray(table, np.float64)[np.asarray(ids)]
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * np.asarray(scale, np.float64) + np.asarray(bias)


def test_xavier_uniform_bound_and_variance():
  vocab, d = 2000, 64
  layer = StableEmbedding(vocab, d, rngs=nnx.Rngs(0))
  w = np.asarray(layer.embed.embedding[...], np.float64)
  bound = np.sqrt(6.0 / (vocab + d))
  assert w.shape == (vocab, d)
  assert np.abs(w).max() <= bound
  assert np.abs(w).max() > 0.99 * bound
  np.testing.assert_allclose(w.var(), bound**2 / 3.0, rtol=0.02)
  assert abs(w.mean()) < 0.01 * bound


@pytest.mark.parametrize("padding_idx, row", [(3, 3), (-1, 9)])
def test_padding_row_zero_at_init(padding_idx, row):
  layer = StableEmbedding(10, 8, padding_idx=padding_idx, rngs=nnx.Rngs(1))
  w = np.asarray(layer.embed.embedding[...])
  np.testing.assert_array_equal(w[row], 0.0)
  assert np.all(np.abs(np.delete(w, row, axis=0)).sum(-1) > 0)


def test_forward_normalises_and_matches_numpy():
  layer = StableEmbedding(50, 16, rngs=nnx.Rngs(2))
  ids = jnp.array([[0, 5, 49], [7, 7, 12]], jnp.int32)
  out = jax.jit(lambda m, i: m(i))(layer, ids)
  assert out.shape == (2, 3, 16) and out.dtype == jnp.float32
  out64 = np.asarray(out, np.float64)
  np.testing.assert_allclose(out64.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(out64.var(-1), 1.0, atol=2e-3)  # eps 1e-5 vs var ~ bound^2/3
  expected = _np_stable_embedding(
      layer.embed.embedding[...], ids, np.ones(16), np.zeros(16))
  np.testing.assert_allclose(out64, expected, atol=1e-5, rtol=1e-5)


def test_forward_uses_eps_1e5_and_learned_affine():
  # A tiny-variance table makes eps visible: 1e-6 (Flax default) would be off by far more
  # than the tolerance.
  layer = StableEmbedding(6, 4, rngs=nnx.Rngs(3))
  rng = np.random.default_rng(0)
  table = rng.normal(size=(6, 4)).astype(np.float32) * 3e-3
  scale = rng.normal(size=4).astype(np.float32)
  bias = rng.normal(size=4).astype(np.float32)
  layer.embed.embedding[...] = jnp.asarray(table)
  layer.norm.scale[...] = jnp.asarray(scale)
  layer.norm.bias[...] = jnp.asarray(bias)
  ids = jnp.array([0, 1, 2, 3, 4, 5])
  out = np.asarray(layer(ids), np.float64)
  np.testing.assert_allclose(out, _np_stable_embedding(table, ids, scale, bias), atol=1e-5)
  flax_eps = _np_stable_embedding(table, ids, scale, bias, eps=1e-6)
  assert np.abs(out - flax_eps).max() > 1e-2


def test_bf16_params_give_bf16_output():
  layer = StableEmbedding(32, 8, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(4))
  assert layer.embed.embedding[...].dtype == jnp.bfloat16
  assert layer.norm.scale[...].dtype == jnp.float32
  ids = jnp.array([1, 2, 3])
  out = layer(ids)
  assert out.dtype == jnp.bfloat16
  expected = _np_stable_embedding(
      np.asarray(layer.embed.embedding[...], np.float32), ids, np.ones(8), np.zeros(8))
  np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=3e-2)


def test_param_paths():
  layer = StableEmbedding(10, 4, rngs=nnx.Rngs(5))
  paths = {
      "/".join(str(k.key) for k in path)
      for path, _ in jax.tree_util.tree_flatten_with_path(
          nnx.to_pure_dict(nnx.state(layer, nnx.Param)))[0]
  }
  assert paths == {"embed/embedding", "norm/scale", "norm/bias"}
  assert [p for p in paths if "embedding" in p] == ["embed/embedding"]


def _grads(layer, ids):
  graphdef, params = nnx.split(layer, nnx.Param)
  weights = jnp.arange(1, ids.size * 4 + 1, dtype=jnp.float32).reshape(ids.shape + (4,))

  def loss(p):
    return jnp.sum(nnx.merge(graphdef, p)(ids) * weights)

  return jax.jit(jax.grad(loss))(params)


def test_gradients_only_on_looked_up_rows():
  layer = StableEmbedding(10, 4, rngs=nnx.Rngs(6))
  ids = jnp.array([[1, 4], [4, 8]])
  g = _grads(layer, ids)
  g_table = np.asarray(g["embed"]["embedding"][...])
  used = [1, 4, 8]
  assert np.all(np.abs(g_table[used]).sum(-1) > 1e-6)
  np.testing.assert_array_equal(np.delete(g_table, used, axis=0), 0.0)
  # d/d(bias) of sum(out * weights) is the per-feature sum of the weights.
  np.testing.assert_allclose(
      np.asarray(g["norm"]["bias"][...]), np.arange(1, 17).reshape(4, 4).sum(0), rtol=1e-6)
  assert np.all(np.abs(np.asarray(g["norm"]["scale"][...])) > 0)


def test_padding_row_gets_no_gradient():
  layer = StableEmbedding(10, 4, padding_idx=0, rngs=nnx.Rngs(7))
  ids = jnp.array([0, 2, 0])
  g_table = np.asarray(_grads(layer, ids)["embed"]["embedding"][...])
  np.testing.assert_array_equal(g_table[0], 0.0)
  assert np.abs(g_table[2]).sum() > 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_embeddings=0, features=4), dict(num_embeddings=4, features=0),
     dict(num_embeddings=4, features=4, padding_idx=4),
     dict(num_embeddings=4, features=4, padding_idx=-5)])
def test_invalid_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    StableEmbedding(**kwargs, rngs=nnx.Rngs(0))
