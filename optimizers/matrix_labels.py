"""Default labelling of a parameter tree for the matrix-aware optimizers.

Every matrix method (SWAN, SinkGD, SCALE, GaLore, Natural GaLore, APOLLO,
FRUGAL, COSMOS, Muon) partitions the parameters with `optax.partition` into
the labels below and maps each label to a rule (its matrix rule, or the
paper's fallback). The papers keep the output layer and the embeddings off
the matrix rule (Muon: "embedding and final classifier layers" on AdamW;
GaLore/APOLLO/FRUGAL: "attn" and "mlp" Linear modules only; COSMOS: AdamW on
embeddings and the LM head), so the default rule looks for them by the names
Flax and the common model codes give them. Applied to the leaf's key path
(`jax.tree_util` keys; the "top-level key" is the first one, after a leading
Linen "params" collection):

- "vector": ndim < 2 (biases, norm scales, scalars);
- "head": ndim >= 2 and
  - a path key ending in "head" (`lm_head`, `head`, `cls_head`) or named
    `classifier`, `logits`, `unembed`, `readout` or `output_layer`; or
  - a top-level key named `output` or `out` (LLaMA's final projection;
    deeper keys of those names, as BERT's per-block `output` modules, stay
    matrices); or
  - when no leaf matched by name: Linen's auto-names, the top-level
    `Dense_N` with the largest N (Linen numbers a module's Dense layers in
    the order they are called, so the last one is the output layer, also
    when it is the only top-level Dense after `nn.Embed` or convolutions;
    `Dense_N` inside submodules are hidden layers);
- "embedding": ndim >= 2 and a path key containing "embed" (`nn.Embed` /
  `nnx.Embed`'s `embedding`, Linen's `Embed_N`, `embed_tokens`,
  `tok_embeddings`, `word_embeddings`) or named `wte` / `wpe` (GPT-2's
  token and position embeddings);
- "matrix": every other leaf with ndim >= 2 (Dense and convolution kernels;
  kernels with more than two axes are viewed as 2-D by
  `gradkit.transforms.matrix_view`).

Names are compared case-insensitively, except Linen's `Dense_N`. A model
whose output layer has none of these names (an `nnx.List` or
`nnx.Sequential` of layers, an attribute named `fc3`) gets a
`HeadNotFoundWarning` when its tree has at least two matrices and no head:
label it with `param_labels=`, a tree of these strings matching the params
(start from `matrix_labels(params, warn=False)` and set the head's leaves to
"head") or a callable params -> tree. A model that has no output layer
(a tree of hidden blocks) can silence it with
`functools.partial(matrix_labels, warn=False)` as `param_labels`.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import jax

from gradkit.transforms.tree_checks import path_entry_key

LABELS = ("matrix", "embedding", "head", "vector")
_HEAD_NAMES = ("classifier", "logits", "unembed", "readout", "output_layer")
_TOP_LEVEL_HEAD_NAMES = ("output", "out")
_EMBEDDING_NAMES = ("wte", "wpe")
_LINEN_DENSE = re.compile(r"Dense_(\d+)")
_SHOWN = 4  # matrices named in the warning


class HeadNotFoundWarning(UserWarning):
  """`matrix_labels` found no output head in a tree with two or more matrices."""


def _key_name(entry: Any) -> str:
  return str(path_entry_key(entry)).lower()


def _top_level_key(path: tuple[Any, ...]) -> str | None:
  keys = [str(path_entry_key(entry)) for entry in path]
  if len(keys) > 1 and keys[0] == "params":
    keys = keys[1:]
  return keys[0] if keys else None


def _named_label(path: tuple[Any, ...], leaf: Any) -> str:
  if getattr(leaf, "ndim", 0) < 2:
    return "vector"
  names = [_key_name(entry) for entry in path]
  top = (_top_level_key(path) or "").lower()
  if any(n.endswith("head") or n in _HEAD_NAMES for n in names) or top in _TOP_LEVEL_HEAD_NAMES:
    return "head"
  if any("embed" in n or n in _EMBEDDING_NAMES for n in names):
    return "embedding"
  return "matrix"


def _linen_head(paths: list[tuple[Any, ...]], labels: list[str]) -> str | None:
  """The top-level `Dense_N` key with the largest N among those holding a matrix."""
  numbers = {}
  for path, label in zip(paths, labels):
    top = _top_level_key(path)
    match = _LINEN_DENSE.fullmatch(top or "")
    if match and label == "matrix":
      numbers[top] = int(match.group(1))
  return max(numbers, key=numbers.get, default=None)


def matrix_labels(params: Any, *, warn: bool = True) -> Any:
  """The default label tree ("matrix", "embedding", "head", "vector") of `params`.

  The rule (module docstring) finds the output head and the embeddings by
  name: Flax NNX attribute names (`lm_head`, `head`, `classifier`, `embed`,
  ...), Linen auto-names (the last top-level `Dense_N` is the head, `Embed_N`
  are embeddings) and GPT-style names (`wte`, `wpe`, `lm_head`, `output`).

  Args:
    params: the parameter tree (shapes and key paths are read): a dict, a
      Linen `{"params": ...}` collection, an `nnx.State` or its pure dict.
    warn: warn (`HeadNotFoundWarning`, once per call) when the tree has at
      least two matrices and no leaf is labelled "head", so a matrix method
      would act on the output layer, which its paper keeps on the fallback.
      Default True.

  Returns:
    A tree of label strings shaped like `params`.

  Example:
    >>> import numpy as np
    >>> from gradkit.optimizers.matrix_labels import matrix_labels
    >>> params = {"Embed_0": {"embedding": np.zeros((10, 4))},
    ...           "Dense_0": {"kernel": np.zeros((4, 4)), "bias": np.zeros(4)},
    ...           "Dense_1": {"kernel": np.zeros((4, 10)), "bias": np.zeros(10)}}
    >>> labels = matrix_labels(params)
    >>> labels["Dense_0"]["kernel"], labels["Dense_1"]["kernel"], labels["Embed_0"]["embedding"]
    ('matrix', 'head', 'embedding')
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [path for path, _ in flat]
  labels = [_named_label(path, leaf) for path, leaf in flat]
  if "head" not in labels:
    head = _linen_head(paths, labels)
    if head is not None:
      labels = ["head" if label == "matrix" and _top_level_key(path) == head else label
                for path, label in zip(paths, labels)]
  matrices = [jax.tree_util.keystr(path) for path, label in zip(paths, labels)
              if label == "matrix"]
  if warn and "head" not in labels and len(matrices) >= 2:
    shown = ", ".join(matrices[:_SHOWN]) + (", ..." if len(matrices) > _SHOWN else "")
    warnings.warn(
        f"matrix_labels found no output head among the {len(matrices)} matrices of this "
        f"tree ({shown}), so the matrix rule acts on all of them, while the matrix "
        "methods' papers keep the output layer on the fallback. Name it lm_head / head / "
        "classifier / output (Linen: the last top-level Dense_N is the head), or pass "
        "param_labels=: a tree of 'matrix' / 'embedding' / 'head' / 'vector' (start from "
        "matrix_labels(params, warn=False) and set the head's leaves to 'head') or a "
        "callable params -> tree; a model without an output layer can pass "
        "param_labels=functools.partial(matrix_labels, warn=False).",
        HeadNotFoundWarning, stacklevel=2)
  return treedef.unflatten(labels)
