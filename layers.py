"""Flax NNX layers that the optimizers in gradkit recommend pairing with.

References:
  Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
  Quantization", ICLR 2022 (StableEmbedding; official code: bitsandbytes,
  `bitsandbytes/nn/modules.py`).
  Liu et al., "Winner-Take-All Column Row Sampling for Memory Efficient
  Adaptation of Language Model", NeurIPS 2023 (WTACRSLinear; arXiv
  2305.15265; official code: zirui-ray-liu/WTACRS).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from gradkit._checks import check_positive
from gradkit.column_row_sampling import sampling_budget, wta_crs_dense

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


class WTACRSLinear(nnx.Module):
  """`nnx.Linear` whose kernel gradient is the WTA-CRS estimate from a share of the rows.

  In training mode the forward output and the input gradient are exact, and
  the kernel's gradient is the unbiased winner-take-all column-row sampling
  estimate from k = min(max(floor(N * sampling_ratio), minimal_k), N) of the
  N input rows (all leading axes, the whole batch's tokens jointly); only
  those k rows of the input are saved for the backward pass
  (`gradkit.column_row_sampling`). In eval mode (`model.eval()`, or
  `deterministic=True`) it is `nnx.Linear`. The bias gradient is exact. Its
  `kernel` and `bias` are initialised as `nnx.Linear`'s, at the same paths,
  so the layer can replace one in a trained model.

  Args:
    in_features: input width.
    out_features: output width.
    sampling_ratio: kept share of the rows (paper: 0.3 and 0.1). Default 0.3.
    minimal_k: fewest rows kept. Default 10 (official).
    winners: "adaptive" (official rule) or a static winner count; 0 is plain
      column-row sampling. Default "adaptive".
    use_bias: whether to add a bias. Default True.
    deterministic: exact gradients (eval mode). Default False.
    rng_collection: the `nnx.Rngs` stream of the row draws. Default "sampling".
    rngs: the `nnx.Rngs` for the initialisation (nnx.Linear's defaults) and,
      through `rng_collection` (or the default stream), the draws.

  References:
    Liu et al., "Winner-Take-All Column Row Sampling for Memory Efficient Adaptation of Language
    Model", NeurIPS 2023. https://arxiv.org/abs/2305.15265 ; official code:
    https://github.com/zirui-ray-liu/WTACRS

  Example:
    >>> layer = WTACRSLinear(8, 4, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 16, 8))).shape
    (2, 16, 4)
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      sampling_ratio: float = 0.3,
      minimal_k: int = 10,
      winners: str | int = "adaptive",
      use_bias: bool = True,
      deterministic: bool = False,
      rng_collection: str = "sampling",
      rngs: nnx.Rngs,
  ):
    sampling_budget(1, sampling_ratio, minimal_k)  # checks both
    self.sampling_ratio, self.minimal_k, self.winners = sampling_ratio, minimal_k, winners
    self.deterministic = deterministic
    # nnx.Linear's parameters, initialised as it does, at the same paths.
    linear = nnx.Linear(in_features, out_features, use_bias=use_bias, rngs=rngs)
    self.kernel, self.bias = linear.kernel, linear.bias
    self.rngs = rngs[rng_collection].fork()

  def __call__(self, x: jax.Array, *, grad_norms: jax.Array | None = None,
               deterministic: bool | None = None) -> jax.Array:
    """Returns x @ kernel (+ bias), shape `x.shape[:-1] + (out_features,)`.

    Args:
      x: (..., in_features) inputs.
      grad_norms: (...,) estimates of the output gradient's row norms (the
        official code caches them per example from the previous epoch), or
        None to sample by the input's row norms alone. Default None.
      deterministic: overrides the layer's mode for this call. Default None.
    """
    deterministic = self.deterministic if deterministic is None else deterministic
    kernel = self.kernel[...]
    if deterministic:
      y = x @ kernel
    else:
      k = sampling_budget(math.prod(x.shape[:-1]), self.sampling_ratio, self.minimal_k)
      y = wta_crs_dense(x, kernel, self.rngs(), k, grad_norms=grad_norms, winners=self.winners)
    if self.bias is not None:
      y = y + self.bias[...]
    return y
