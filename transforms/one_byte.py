"""One-byte codec for projected gradients ("Just One Byte (per gradient)").

A projected gradient p is sent as a signed log-magnitude code that fits in
one int8: code = sign(p) * (c + 64), with c = clip(round(scale * ln|p|), -63, 63),
so |code| is in 1..127 and code 0 is reserved for p = 0. Decoding gives
p_hat = sign(code) * exp((|code| - 64) / scale).

Range and error: for |p| in [exp(-63 / scale), exp(63 / scale)] the relative
error |p_hat - p| / |p| is at most exp(1 / (2 scale)) - 1; outside that range
the magnitude saturates at the nearest end (sign kept). The default scale 8
covers [3.80e-4, 2.63e3] (about the reference's [3.57e-4, 2.80e3]) with a
bound of exp(1/16) - 1 = 6.45%. The reference's scale 16 halves the error
bound (3.17%) but, with the sign folded into the byte, only covers
[1.95e-2, 51.3].

Deviation from the reference (ezelikman/justonebyte app.py): there c =
clip(round(16 ln|p|), -127, 127) plus a separate sign, which is 9 bits; here the
sign is folded into the byte. Special values: p = 0 (either sign) encodes to 0
and decodes to exactly 0; +-inf saturate; NaN encodes to 0, so a NaN
projected gradient contributes no step after a one-byte exchange. The int8
value -128 is never produced; decode reads it as -exp(63 / scale).

References:
  E. Zelikman, Q. Huang, P. Liang, N. Haber, N. Goodman, Just One Byte (per
  gradient): A Note on Low-Bandwidth Decentralized Language Model Finetuning
  Using Shared Randomness, arXiv 2306.10015, 2023.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradkit import _checks

DEFAULT_SCALE = 8.0
_OFFSET = 64  # |code| = c + 64 maps c in [-63, 63] to 1..127; 0 is the zero code.
_C_MAX = 63


def one_byte_encode(p: jax.typing.ArrayLike, scale: float = DEFAULT_SCALE) -> jax.Array:
  """int8 codes of `p` (any shape): sign(p) * (clip(round(scale ln|p|), -63, 63) + 64).

  Args:
    p: the values to encode (any shape).
    scale: the codec's log scale s. Default DEFAULT_SCALE (8.0).

  Returns:
    An int8 array shaped like `p`.

  References:
    Zelikman et al., "Just One Byte (per gradient): A Note on Low-Bandwidth Decentralized Language
    Model Finetuning Using Shared Randomness", 2023. https://arxiv.org/abs/2306.10015 ; official
    code: https://github.com/ezelikman/justonebyte
  """
  _checks.check_positive("scale", scale)
  p = jnp.asarray(p, jnp.float32)
  magnitude = jnp.abs(p)
  nonzero = (magnitude > 0) & ~jnp.isnan(p)
  # log(0) = -inf only reaches the clip; zero and NaN lanes are replaced below.
  c = jnp.clip(jnp.round(scale * jnp.log(magnitude)), -_C_MAX, _C_MAX)
  code = jnp.sign(p) * (c + _OFFSET)
  return jnp.where(nonzero, code, 0.0).astype(jnp.int8)


def one_byte_decode(code: jax.typing.ArrayLike, scale: float = DEFAULT_SCALE) -> jax.Array:
  """float32 values of int8 `code`s: sign(code) * exp((|code| - 64) / scale); 0 -> 0.

  Args:
    code: int8 codes from `one_byte_encode`.
    scale: the log scale s used to encode. Default DEFAULT_SCALE (8.0).

  Returns:
    A float32 array shaped like `code`.

  References:
    Zelikman et al., "Just One Byte (per gradient): A Note on Low-Bandwidth Decentralized Language
    Model Finetuning Using Shared Randomness", 2023. https://arxiv.org/abs/2306.10015 ; official
    code: https://github.com/ezelikman/justonebyte
  """
  _checks.check_positive("scale", scale)
  code = jnp.asarray(code).astype(jnp.int32)
  level = jnp.minimum(jnp.abs(code), _OFFSET + _C_MAX) - _OFFSET
  value = jnp.exp(level.astype(jnp.float32) / jnp.float32(scale))
  return jnp.where(code == 0, 0.0, jnp.sign(code).astype(jnp.float32) * value)
