"""8-bit optimizers: gradkit's directions with block-wise 8-bit state.

Each recipe is the float32 optimizer's direction wrapped in
`gradkit.transforms.quantized` (uint8 codes into the dynamic map, one float32
absmax per block of 256; parameters with < 4096 elements or an "embedding"
in their path keep float32 state), then gradkit's recipe tail. Dettmers et
al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022
(arXiv 2110.02861); official code bitsandbytes-foundation/bitsandbytes.

Adam, Lion and AdaBelief decay decoupled, from the recipe tail:
p <- p - lr (d + wd p), the pure-PyTorch reference's order (decay before the
step); the CUDA kernel decays after the step, p <- (1 - lr wd)(p - lr d). The
two differ by lr^2 wd d, O(lr^2 wd). `momentum8bit` couples it by default, as
bitsandbytes' SGD (see there).

`block_size` and `min_size` default to None, meaning 256 and 4096: a None is
not a hyperparameter to `optax.inject_hyperparams`, so the defaults stay
static under it. Passing ints explicitly there needs
`static_args=("block_size", "min_size")`; likewise `keep_fp32` when callable.
"""

from __future__ import annotations

import optax

from gradkit import _checks
from gradkit.optimizers._recipe import MaskOrFn, checked_rate, recipe
from gradkit.registry import register
from gradkit.transforms.moments import scale_by_adabelief
from gradkit.transforms.quantized_state import KeepFp32, quantized
from gradkit.transforms.sign_momentum import scale_by_sign_momentum

BLOCK_SIZE = 256  # bitsandbytes >= 0.44 (PR #1365); the paper used 2048
MIN_SIZE = 4096  # bitsandbytes' min_8bit_size


def _eight_bit(
    direction: optax.GradientTransformation,
    block_size: int | None,
    min_size: int | None,
    keep_fp32: KeepFp32,
) -> optax.GradientTransformationExtraArgs:
  return quantized(
      direction,
      block_size=BLOCK_SIZE if block_size is None else block_size,
      min_size=MIN_SIZE if min_size is None else min_size,
      keep_fp32=keep_fp32,
      elementwise=True,
  )


@register("adam8bit")
def adam8bit(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    block_size: int | None = None,
    min_size: int | None = None,
    keep_fp32: KeepFp32 = None,
) -> optax.GradientTransformationExtraArgs:
  """bitsandbytes Adam8bit: optax.scale_by_adam with 8-bit mu (signed) and nu (unsigned).

  Defaults are bitsandbytes' (lr 1e-3, betas (0.9, 0.999), eps 1e-8 outside
  the square root, weight_decay 0). Weight decay is decoupled, as in the
  official kernel (see the module docstring for its order).

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-3.
    b1: Decay rate of the first moment. Default 0.9.
    b2: Decay rate of the second moment. Default 0.999.
    eps: Added to sqrt(v_hat). Default 1e-8.
    weight_decay: Decoupled weight-decay rate. Default 0.0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    block_size: Elements per quantization block; None means 256 (static under
      `inject_hyperparams`). Default None.
    min_size: Parameters with fewer elements keep 32-bit state; None means
      4096. Default None.
    keep_fp32: Callable (path, leaf) -> bool (or a tree of booleans) choosing
      parameters whose state stays 32-bit; None keeps every parameter whose
      path mentions "embedding". Default None.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022.
    https://arxiv.org/abs/2110.02861 ; official code:
    https://github.com/bitsandbytes-foundation/bitsandbytes
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("eps", eps)
  return recipe(
      _eight_bit(optax.scale_by_adam(b1, b2, eps), block_size, min_size, keep_fp32),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )


@register("adamw8bit")
def adamw8bit(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    mask: MaskOrFn = None,
    block_size: int | None = None,
    min_size: int | None = None,
    keep_fp32: KeepFp32 = None,
) -> optax.GradientTransformationExtraArgs:
  """bitsandbytes AdamW8bit: `adam8bit` with its default weight_decay 1e-2.

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-3.
    b1: Decay rate of the first moment. Default 0.9.
    b2: Decay rate of the second moment. Default 0.999.
    eps: Added to sqrt(v_hat). Default 1e-8.
    weight_decay: Decoupled weight-decay rate. Default 1e-2.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    block_size: Elements per quantization block; None means 256 (static under
      `inject_hyperparams`). Default None.
    min_size: Parameters with fewer elements keep 32-bit state; None means
      4096. Default None.
    keep_fp32: Callable (path, leaf) -> bool (or a tree of booleans) choosing
      parameters whose state stays 32-bit; None keeps every parameter whose
      path mentions "embedding". Default None.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022.
    https://arxiv.org/abs/2110.02861 ; official code:
    https://github.com/bitsandbytes-foundation/bitsandbytes

    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    https://arxiv.org/abs/1711.05101
  """
  return adam8bit(
      learning_rate, b1, b2, eps, weight_decay, mask, block_size, min_size, keep_fp32
  )


@register("lion8bit")
def lion8bit(
    learning_rate: optax.ScalarOrSchedule = 1e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    block_size: int | None = None,
    min_size: int | None = None,
    keep_fp32: KeepFp32 = None,
) -> optax.GradientTransformationExtraArgs:
  """bitsandbytes Lion8bit: gradkit's `lion` direction with its momentum in 8 bits (signed).

  Defaults are bitsandbytes' and gradkit `lion`'s (lr 1e-4, betas (0.9, 0.99),
  weight_decay 0).

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-4.
    b1: Interpolation weight of the momentum inside the sign. Default 0.9.
    b2: Decay rate of the momentum. Default 0.99.
    weight_decay: Decoupled weight-decay rate. Default 0.0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    block_size: Elements per quantization block; None means 256 (static under
      `inject_hyperparams`). Default None.
    min_size: Parameters with fewer elements keep 32-bit state; None means
      4096. Default None.
    keep_fp32: Callable (path, leaf) -> bool (or a tree of booleans) choosing
      parameters whose state stays 32-bit; None keeps every parameter whose
      path mentions "embedding". Default None.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022.
    https://arxiv.org/abs/2110.02861 ; official code:
    https://github.com/bitsandbytes-foundation/bitsandbytes

    Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023.
    https://arxiv.org/abs/2302.06675 ; official code:
    https://github.com/google/automl/tree/master/lion
  """
  return recipe(
      _eight_bit(scale_by_sign_momentum(b1, b2), block_size, min_size, keep_fp32),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )


@register("momentum8bit")
def momentum8bit(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    momentum: float = 0.9,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    block_size: int | None = None,
    min_size: int | None = None,
    keep_fp32: KeepFp32 = None,
    *,
    decoupled_weight_decay: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """bitsandbytes SGD8bit with momentum: optax.trace (m <- momentum m + g), trace in 8 bits.

  bitsandbytes requires an explicit lr for SGD; the default 1e-2 is gradkit
  `sgd`'s. No dampening, as in bitsandbytes' momentum kernel. The rule is
  `torch.optim.SGD`'s (dampening 0, no Nesterov), which bitsandbytes' 8-bit
  SGD reproduces, m_0 = 0 making the first buffer g itself:

    g <- g + wd p;   m <- momentum m + g;   p <- p - lr m

  Weight decay is coupled by default, as there: wd p enters the momentum
  (and so its 8-bit state), which amplifies its pull by up to
  1 / (1 - momentum). `decoupled_weight_decay=True` takes the recipe tail's
  p <- p - lr (m + wd p) instead, with m the momentum of g alone (SGDW).
  Example, lr 0.1, wd 0.1, momentum 0.9, zero gradient, 50 steps from p = 1:
  coupled p = -0.058, decoupled p = 0.99^50 = 0.605.

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-2.
    momentum: Momentum decay (m <- momentum m + g). Default 0.9.
    weight_decay: Weight-decay rate (float or schedule), coupled into the
      gradient unless `decoupled_weight_decay`. Default 0.0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    block_size: Elements per quantization block; None means 256 (static under
      `inject_hyperparams`). Default None.
    min_size: Parameters with fewer elements keep 32-bit state; None means
      4096. Default None.
    keep_fp32: Callable (path, leaf) -> bool (or a tree of booleans) choosing
      parameters whose state stays 32-bit; None keeps every parameter whose
      path mentions "embedding". Default None.
    decoupled_weight_decay: decay p <- p - lr wd p beside the momentum step
      (SGDW) instead of adding wd p to the gradient (static, keyword only).
      Default False.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022.
    https://arxiv.org/abs/2110.02861 ; official code:
    https://github.com/bitsandbytes-foundation/bitsandbytes

    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019
    (decoupled_weight_decay=True). https://arxiv.org/abs/1711.05101
  """
  _checks.check_unit_interval("momentum", momentum)
  direction = _eight_bit(optax.trace(decay=momentum), block_size, min_size, keep_fp32)
  if decoupled_weight_decay:
    return recipe(direction, learning_rate=learning_rate, weight_decay=weight_decay, mask=mask)
  return recipe(
      optax.add_decayed_weights(checked_rate("weight_decay", weight_decay), mask), direction,
      learning_rate=learning_rate)


@register("adabelief8bit")
def adabelief8bit(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    block_size: int | None = None,
    min_size: int | None = None,
    keep_fp32: KeepFp32 = None,
    *,
    rectify: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """gradkit `adabelief` (same defaults, rectified by default) with 8-bit mu and s.

  Not in bitsandbytes: the same wrapper applied to AdaBelief's direction
  (`scale_by_rectified_belief`, or `optax.scale_by_belief` with
  `rectify=False`); s >= eps > 0 uses the unsigned map.

  Args:
    learning_rate: Step size, a scalar or an optax schedule. Default 1e-3.
    b1: Decay rate of the first moment. Default 0.9.
    b2: Decay rate of the belief s. Default 0.999.
    eps: Added inside s and to the denominator. Default 1e-16.
    weight_decay: Decoupled weight-decay rate. Default 0.0.
    mask: Tree of booleans, or a callable params -> tree, choosing the leaves
      that are decayed. Default None (every leaf).
    block_size: Elements per quantization block; None means 256 (static under
      `inject_hyperparams`). Default None.
    min_size: Parameters with fewer elements keep 32-bit state; None means
      4096. Default None.
    keep_fp32: Callable (path, leaf) -> bool (or a tree of booleans) choosing
      parameters whose state stays 32-bit; None keeps every parameter whose
      path mentions "embedding". Default None.
    rectify: Apply RAdam's rectification, as `adabelief` (keyword only).
      Default True.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022.
    https://arxiv.org/abs/2110.02861 ; official code:
    https://github.com/bitsandbytes-foundation/bitsandbytes

    Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
    NeurIPS 2020. https://arxiv.org/abs/2010.07468 ; official code:
    https://github.com/juntang-zhuang/Adabelief-Optimizer
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  direction = scale_by_adabelief(b1, b2, eps, rectify)
  return recipe(
      _eight_bit(direction, block_size, min_size, keep_fp32),
      learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )
