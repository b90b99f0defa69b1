"""Default labelling of a parameter tree for the matrix-aware optimizers.

Every matrix method (SWAN, SinkGD, SCALE, GaLore, Natural GaLore, APOLLO,
FRUGAL, COSMOS, Muon) partitions the parameters with `optax.partition` into
the labels below and maps each label to a rule (its matrix rule, or the
paper's fallback). The default rule, applied leaf by leaf to its key path:

- "vector": ndim < 2 (biases, norm scales, scalars);
- "head": ndim >= 2 and a path key ending in "head" (`lm_head`, `head`) or
  named `logits`, `unembed`, `readout` or `output_layer`;
- "embedding": ndim >= 2 and a path key containing "embed" (`nn.Embed`'s
  `embedding`, `embed_tokens`, `wte`/`wpe` are not matched: pass labels);
- "matrix": every other leaf with ndim >= 2 (Dense and convolution kernels;
  kernels with more than two axes are viewed as 2-D by
  `gradkit.transforms.matrix_view`).

The papers' own selections ("Linear modules whose name contains attn or mlp")
coincide with this on transformer blocks. Override it with `param_labels=`:
a tree of these strings matching the params, or a callable params -> tree.
"""

from __future__ import annotations

from typing import Any

import jax

LABELS = ("matrix", "embedding", "head", "vector")
_HEAD_NAMES = ("logits", "unembed", "readout", "output_layer")


def _key_name(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr)).lower()
  return str(entry).lower()


def _label(path: tuple[Any, ...], leaf: Any) -> str:
  if getattr(leaf, "ndim", 0) < 2:
    return "vector"
  names = [_key_name(entry) for entry in path]
  if any(n.endswith("head") or n in _HEAD_NAMES for n in names):
    return "head"
  if any("embed" in n for n in names):
    return "embedding"
  return "matrix"


def matrix_labels(params: Any) -> Any:
  """The default label tree ("matrix", "embedding", "head", "vector") of `params`.

  Args:
    params: the parameter tree (key paths are read for "embed" and "head").

  Returns:
    A tree of label strings shaped like `params`.
  """
  return jax.tree_util.tree_map_with_path(_label, params)
