"""Flax NNX layers that the optimizers in gradkit recommend pairing with.

References:
  Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
  Quantization", ICLR 2022 (StableEmbedding; official code: bitsandbytes,
  `bitsandbytes/nn/modules.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from gradkit._checks import check_positive

# torch.nn.LayerNorm's default; Flax's LayerNorm would otherwise use 1e-6.
_LAYER_NORM_EPS = 1e-5


class StableEmbedding(nnx.Module):
  """Embedding lookup followed by LayerNorm, for stable 8-bit optimization.

  The (num_embeddings, features) table is initialised Xavier/Glorot-uniform
  (bound sqrt(6 / (num_embeddings + features))); the `padding_idx` row, if
  given, is zeroed at init and, as in torch's `F.embedding`, receives no
  gradient. The forward pass looks rows up, casts them to float32, applies
  LayerNorm over the feature axis (eps 1e-5, learnable float32 scale and bias)
  and casts the result back to `param_dtype`.

  The table lives at `embed/embedding`, so `gradkit`'s 8-bit wrapper keeps
  32-bit optimizer state for it, as bitsandbytes does for this layer.

  Args:
    num_embeddings: the vocabulary size.
    features: the embedding width d.
    padding_idx: a row that is zeroed at init and gets no gradient, or None.
      Default None.
    param_dtype: dtype of the table (the LayerNorm stays float32). Default
      jnp.float32.
    rngs: the `nnx.Rngs` for the Xavier-uniform initialization.

  References:
    Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022.
    https://arxiv.org/abs/2110.02861 ; official code:
    https://github.com/bitsandbytes-foundation/bitsandbytes

  Example:
    >>> layer = StableEmbedding(100, 16, rngs=nnx.Rngs(0))
    >>> layer(jnp.array([[1, 2, 3]])).shape
    (1, 3, 16)
  """

  def __init__(
      self,
      num_embeddings: int,
      features: int,
      *,
      padding_idx: int | None = None,
      param_dtype: DTypeLike = jnp.float32,
      rngs: nnx.Rngs,
  ):
    check_positive("num_embeddings", num_embeddings)
    check_positive("features", features)
    if padding_idx is not None:
      if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(
            f"padding_idx must lie in [-{num_embeddings}, {num_embeddings}), got {padding_idx}")
      padding_idx %= num_embeddings  # torch normalises negative indices the same way
    self.padding_idx = padding_idx
    self.embed = nnx.Embed(
        num_embeddings,
        features,
        dtype=param_dtype,
        param_dtype=param_dtype,
        embedding_init=nnx.initializers.xavier_uniform(),
        rngs=rngs,
    )
    if padding_idx is not None:
      table = self.embed.embedding[...]
      self.embed.embedding[...] = table.at[padding_idx].set(0)
    # Norm parameters stay float32 whatever the table dtype (torch builds its
    # LayerNorm with the default dtype too).
    self.norm = nnx.LayerNorm(
        features, epsilon=_LAYER_NORM_EPS, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Returns LayerNorm(table[ids]) with shape `ids.shape + (features,)`."""
    emb = self.embed(ids)
    if self.padding_idx is not None:
      emb = jnp.where((ids == self.padding_idx)[..., None], jax.lax.stop_gradient(emb), emb)
    out = self.norm(emb.astype(jnp.float32))
    return out.astype(self.embed.param_dtype)
