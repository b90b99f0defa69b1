"""`matrix_labels` on real Flax models: the output head and the embeddings are found.

Linen auto-names (the last top-level `Dense_N` is the head, `Embed_N` are
embeddings), NNX attribute names (`nnx.state(model, nnx.Param)` and its
pure dict), GPT-style names (`wte`, `wpe`, `lm_head`), LLaMA / BERT-style
`output`s, and the `HeadNotFoundWarning` when no head is found among two or
more matrices.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import gradkit
from gradkit.optimizers.matrix_labels import HeadNotFoundWarning, matrix_labels


def _by_path(labels):
  return {jax.tree_util.keystr(path).replace(".value", ""): label
          for path, label in jax.tree_util.tree_leaves_with_path(labels)}


def _linen_shapes(module, x):
  """The Linen variables' shapes (`jax.eval_shape` of init: traced, not compiled)."""
  return jax.eval_shape(module.init, jax.random.key(0), x)


def _labels_without_warning(params):
  with warnings.catch_warnings():
    warnings.simplefilter("error", HeadNotFoundWarning)
    return _by_path(matrix_labels(params))


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16)(x))
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(4)(x)


class LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x + nn.Dense(8)(nn.relu(nn.Dense(16)(x)))


class LinenLM(nn.Module):
  """nn.Embed, a block of hidden Dense layers, then the only top-level Dense: the head."""

  @nn.compact
  def __call__(self, tokens):
    x = LinenBlock()(nn.Embed(32, 8)(tokens))
    return nn.Dense(32)(nn.LayerNorm()(x))


def test_linen_auto_named_mlp_has_its_last_dense_as_head():
  variables = _linen_shapes(LinenMLP(), jnp.ones((1, 6)))
  want = {"['Dense_0']['kernel']": "matrix", "['Dense_1']['kernel']": "matrix",
          "['Dense_2']['kernel']": "head", "['Dense_0']['bias']": "vector",
          "['Dense_1']['bias']": "vector", "['Dense_2']['bias']": "vector"}
  assert _labels_without_warning(variables["params"]) == want
  # The whole variables dict: a leading "params" collection is not the top level.
  assert _labels_without_warning(variables) == {
      f"['params']{path}": label for path, label in want.items()}


def test_linen_numbering_is_numeric_not_lexicographic():
  z = np.zeros((3, 3))
  labels = _labels_without_warning({f"Dense_{i}": {"kernel": z} for i in (2, 9, 10)})
  assert labels == {"['Dense_10']['kernel']": "head", "['Dense_2']['kernel']": "matrix",
                    "['Dense_9']['kernel']": "matrix"}


def test_linen_embed_and_dense_head_with_hidden_dense_in_a_block():
  params = _linen_shapes(LinenLM(), jnp.zeros((1, 5), jnp.int32))["params"]
  assert _labels_without_warning(params) == {
      "['Dense_0']['bias']": "vector",
      "['Dense_0']['kernel']": "head",
      "['Embed_0']['embedding']": "embedding",
      "['LayerNorm_0']['bias']": "vector",
      "['LayerNorm_0']['scale']": "vector",
      "['LinenBlock_0']['Dense_0']['bias']": "vector",
      "['LinenBlock_0']['Dense_0']['kernel']": "matrix",
      "['LinenBlock_0']['Dense_1']['bias']": "vector",
      "['LinenBlock_0']['Dense_1']['kernel']": "matrix",
  }


class NNXClassifier(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(32, 8, rngs=rngs)
    self.hidden = nnx.Linear(8, 16, rngs=rngs)
    self.mlp = nnx.Linear(16, 8, rngs=rngs)
    self.classifier = nnx.Linear(8, 3, rngs=rngs)


def test_nnx_attribute_names_state_and_pure_dict():
  state = nnx.state(NNXClassifier(nnx.Rngs(0)), nnx.Param)
  want = {"['classifier']['bias']": "vector", "['classifier']['kernel']": "head",
          "['embed']['embedding']": "embedding", "['hidden']['bias']": "vector",
          "['hidden']['kernel']": "matrix", "['mlp']['bias']": "vector",
          "['mlp']['kernel']": "matrix"}
  assert _labels_without_warning(state) == want
  assert _labels_without_warning(nnx.to_pure_dict(state)) == want
  tx = gradkit.create("muon")  # the default labels inside a matrix method, on the nnx.State
  jax.eval_shape(tx.init, state)


def test_gpt_style_names():
  z = np.zeros
  params = {"wte": z((32, 8)), "wpe": z((16, 8)),
            "h": {0: {"attn": {"c_attn": {"kernel": z((8, 24))}, "c_proj": {"kernel": z((8, 8))}},
                      "ln_1": {"scale": z(8)}}},
            "lm_head": z((8, 32))}
  assert _labels_without_warning(params) == {
      "['h'][0]['attn']['c_attn']['kernel']": "matrix",
      "['h'][0]['attn']['c_proj']['kernel']": "matrix",
      "['h'][0]['ln_1']['scale']": "vector",
      "['lm_head']": "head", "['wpe']": "embedding", "['wte']": "embedding"}


def test_output_is_a_head_at_the_top_level_only():
  z = np.zeros((8, 8))
  llama = {"tok_embeddings": z, "layers": {0: {"attention": {"wq": z}}}, "output": z}
  assert _labels_without_warning(llama) == {
      "['layers'][0]['attention']['wq']": "matrix", "['output']": "head",
      "['tok_embeddings']": "embedding"}
  bert = {"bert": {"encoder": {"layer": {0: {"output": {"dense": {"kernel": z}},
                                             "intermediate": {"dense": {"kernel": z}}}}},
                   "embeddings": {"word_embeddings": {"embedding": z}}},
          "classifier": {"kernel": z}}
  assert _labels_without_warning(bert) == {
      "['bert']['embeddings']['word_embeddings']['embedding']": "embedding",
      "['bert']['encoder']['layer'][0]['intermediate']['dense']['kernel']": "matrix",
      "['bert']['encoder']['layer'][0]['output']['dense']['kernel']": "matrix",
      "['classifier']['kernel']": "head"}


def test_a_named_head_wins_over_linen_numbering():
  z = np.zeros((4, 4))
  assert _labels_without_warning({"Dense_0": {"kernel": z}, "Dense_1": {"kernel": z},
                                  "head": {"kernel": z}}) == {
      "['Dense_0']['kernel']": "matrix", "['Dense_1']['kernel']": "matrix",
      "['head']['kernel']": "head"}


class NNXLayers(nnx.Module):
  """An `nnx.List` of layers: its last layer has no name that says "head"."""

  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(3)])


def test_no_head_among_two_matrices_warns_once_per_call():
  params = nnx.to_pure_dict(nnx.state(NNXLayers(nnx.Rngs(0)), nnx.Param))
  with pytest.warns(HeadNotFoundWarning, match=r"no output head among the 3 matrices.*"
                                              r"param_labels=") as record:
    labels = matrix_labels(params)
  assert len(record) == 1
  assert {label for label in jax.tree.leaves(labels)} == {"matrix", "vector"}
  with warnings.catch_warnings():
    warnings.simplefilter("error", HeadNotFoundWarning)
    matrix_labels(params, warn=False)
    matrix_labels({"w": np.zeros((4, 4)), "b": np.zeros(4)})  # one matrix: nothing to say
    # The warning's remedies: a label tree, or the rule without the warning.
    labels = matrix_labels(params, warn=False)
    labels["layers"][2]["kernel"] = "head"
    for param_labels in (labels, functools.partial(matrix_labels, warn=False)):
      jax.eval_shape(gradkit.create("muon", param_labels=param_labels).init, params)
  with pytest.warns(HeadNotFoundWarning):
    jax.eval_shape(gradkit.create("galore").init, params)
