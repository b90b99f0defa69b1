"""A small LLaMA-style decoder-only language model in Flax NNX.

Pre-norm blocks (Xiong et al., 2020) with RMSNorm (Zhang & Sennrich, 2019),
multi-head causal self-attention (Vaswani et al., 2017) and a SwiGLU MLP
(Shazeer, 2020), learned absolute position embeddings, a final RMSNorm and an
untied output head: the layout of the LLaMA models (Touvron et al., 2023) that
the GaLore/APOLLO papers train, with learned positions instead of RoPE.

Every projection is its own bias-free `nnx.Linear` with a 2-D (in, out)
kernel, so `gradkit.optimizers.matrix_labels` labels them "matrix" and the
matrix-aware optimizers act on each as a matrix; the parameter paths are

  embed/embedding, position_embed/embedding          -> "embedding"
  blocks/<i>/attn/{q,k,v,o}/kernel                    -> "matrix"
  blocks/<i>/mlp/{gate,up,down}/kernel                -> "matrix"
  blocks/<i>/{attn_norm,mlp_norm}/scale, final_norm/scale -> "vector"
  lm_head/kernel                                      -> "head"

Example:
  model = DecoderLM(64, d_model=32, num_heads=4, num_layers=2, d_ff=64,
                    max_len=16, rngs=nnx.Rngs(0))
  logits = model(jnp.zeros((2, 16), jnp.int32))  # (2, 16, 64)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gradkit._checks import check_positive
from gradkit.layers import WTACRSLinear


def _projection(d_in: int, d_out: int, wta_crs_ratio: float | None, rngs: nnx.Rngs) -> nnx.Module:
  """A bias-free projection: nnx.Linear, or WTACRSLinear keeping that share of the rows."""
  if wta_crs_ratio is None:
    return nnx.Linear(d_in, d_out, use_bias=False, rngs=rngs)
  return WTACRSLinear(d_in, d_out, sampling_ratio=wta_crs_ratio, use_bias=False, rngs=rngs)


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with separate bias-free q, k, v, o projections."""

  def __init__(self, d_model: int, num_heads: int, *, wta_crs_ratio: float | None = None,
               rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.q = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)
    self.k = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)
    self.v = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)
    self.o = _projection(d_model, d_model, wta_crs_ratio, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, d_model = x.shape
    shape = (batch, length, self.num_heads, d_model // self.num_heads)
    q, k, v = (jnp.reshape(proj(x), shape) for proj in (self.q, self.k, self.v))
    mixed = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.o(mixed.reshape(batch, length, d_model))


class SwiGLU(nnx.Module):
  """down(silu(gate(x)) * up(x)), bias-free."""

  def __init__(self, d_model: int, d_ff: int, *, wta_crs_ratio: float | None = None,
               rngs: nnx.Rngs):
    self.gate = _projection(d_model, d_ff, wta_crs_ratio, rngs)
    self.up = _projection(d_model, d_ff, wta_crs_ratio, rngs)
    self.down = _projection(d_ff, d_model, wta_crs_ratio, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(nnx.silu(self.gate(x)) * self.up(x))


class DecoderBlock(nnx.Module):
  """x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, d_model: int, num_heads: int, d_ff: int, *,
               wta_crs_ratio: float | None = None, rngs: nnx.Rngs):
    self.attn_norm = nnx.RMSNorm(d_model, rngs=rngs)
    self.attn = CausalSelfAttention(d_model, num_heads, wta_crs_ratio=wta_crs_ratio, rngs=rngs)
    self.mlp_norm = nnx.RMSNorm(d_model, rngs=rngs)
    self.mlp = SwiGLU(d_model, d_ff, wta_crs_ratio=wta_crs_ratio, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.attn_norm(x))
    return x + self.mlp(self.mlp_norm(x))


class DecoderLM(nnx.Module):
  """Decoder-only LM: tokens int32 (batch, length) -> next-token logits (batch, length, vocab).

  Position t's logits depend on tokens 0..t only. `length` may be at most
  `max_len` (the number of learned positions). `wta_crs_ratio` (None: exact)
  makes the attention output and the three MLP projections `WTACRSLinear`s
  keeping that share of the batch's token rows for their kernel gradients,
  the layers of the WTA-CRS paper's main experiments ("level 2"; q, k, v
  stay exact; its sampled attention-score products are not built). The
  parameter paths are the same either way.
  """

  def __init__(
      self,
      vocab_size: int,
      *,
      d_model: int,
      num_heads: int,
      num_layers: int,
      d_ff: int,
      max_len: int,
      wta_crs_ratio: float | None = None,
      rngs: nnx.Rngs,
  ):
    for name, value in [("vocab_size", vocab_size), ("d_model", d_model),
                        ("num_heads", num_heads), ("num_layers", num_layers),
                        ("d_ff", d_ff), ("max_len", max_len)]:
      check_positive(name, value)
    if d_model % num_heads:
      raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    self.max_len = max_len
    self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
    self.position_embed = nnx.Embed(max_len, d_model, rngs=rngs)
    self.blocks = nnx.List(
        [DecoderBlock(d_model, num_heads, d_ff, wta_crs_ratio=wta_crs_ratio, rngs=rngs)
         for _ in range(num_layers)])
    self.final_norm = nnx.RMSNorm(d_model, rngs=rngs)
    self.lm_head = nnx.Linear(d_model, vocab_size, use_bias=False, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    length = tokens.shape[-1]
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}")
    x = self.embed(tokens) + self.position_embed(jnp.arange(length))
    for block in self.blocks:
      x = block(x)
    return self.lm_head(self.final_norm(x))
