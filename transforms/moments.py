"""Moment-style directions that optax lacks, or computes in another convention.

Each factory here is a first-order direction built from running moments of
the updates, in the exact convention of a paper's official code where optax's
nearest transform differs (eps placement, bias correction, weighting). Where
optax's moments are right, its state is reused and only the direction is
recomputed from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradkit import _checks

# RAdam's tractability threshold on the length of the approximated SMA.
_RHO_THRESHOLD = 5.0


class ScaleByAdanOfficialState(NamedTuple):
  """State of `scale_by_adan_official`: moments of g (m), of g_t - g_{t-1} (v),
  of the Nesterov term g + b2 (g_t - g_{t-1}) (n), and the previous g."""

  count: jax.Array  # int32 scalar: number of updates seen.
  m: optax.Updates
  v: optax.Updates
  n: optax.Updates
  previous_grad: optax.Updates


class EmaFromFirstUpdateState(NamedTuple):
  """State of `ema_from_first_update`."""

  count: jax.Array  # int32 scalar: number of updates seen.
  ema: optax.Updates


def _with_direction(
    moments: optax.GradientTransformation,
    direction: Callable[[optax.Updates, optax.OptState], optax.Updates],
) -> optax.GradientTransformation:
  """Keeps `moments`' init and state update; outputs direction(updates, new_state).

  Under jit the discarded output of `moments` is dead code, never computed.
  """

  def update_fn(updates, state, params=None):
    _, state = moments.update(updates, state, params)
    return direction(updates, state), state

  return optax.GradientTransformation(moments.init, update_fn)


def _divide_by_root(
    numerator: optax.Updates, second_moment: optax.Updates, eps: jax.typing.ArrayLike
) -> optax.Updates:
  """numerator / (sqrt(second_moment) + eps), leafwise: the Adam ratio."""
  return jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), numerator, second_moment)


def _neg_log(b: jax.typing.ArrayLike, dtype) -> jax.Array:
  """-log(b) in `dtype`, taken in double precision when `b` is a Python or
  numpy number (in float32, 1 - 0.999 is already 9.99987e-4)."""
  if isinstance(b, int | float | np.floating):
    return jnp.asarray(math.inf if b == 0 else -math.log(b), dtype)
  return -jnp.log(jnp.asarray(b, dtype))


def _one_minus_power(b: jax.typing.ArrayLike, count: jax.Array, dtype) -> jax.Array:
  """1 - b^count as -expm1(-count c), c = -log b: no cancellation, so float32
  runs agree with the double-precision bias corrections of the official
  PyTorch code to float32 rounding."""
  return -jnp.expm1(-count.astype(dtype) * _neg_log(b, dtype))


def _bernoulli_remainder(y: jax.Array) -> jax.Array:
  """(y / expm1(y) - 1 + y / 2) / y^2, by its Taylor series for |y| < 1/2
  (Bernoulli numbers B2..B10; truncation below 1e-14 relative), directly beyond."""
  small = jnp.abs(y) < 0.5
  y2 = y * y
  series = 1 / 12 + y2 * (-1 / 720 + y2 * (1 / 30240 + y2 * (-1 / 1209600 + y2 / 47900160)))
  far = jnp.where(small, 1.0, y)
  direct = (far / jnp.expm1(far) - 1 + far / 2) / (far * far)
  return jnp.where(small, series, direct)


def _radam_rho(b2: jax.typing.ArrayLike, count: jax.Array, dtype) -> jax.Array:
  """RAdam's rho_t = rho_inf - 2 t b2^t / (1 - b2^t), without cancellation.

  Both terms are ~2 / (1 - b2) while their difference is ~t, so the direct
  float32 form loses ~1e-2 of rho_t - 4 near the threshold. With c = -log b2
  and B(y) = y / expm1(y) = 1 - y/2 + y^2 g(y): rho_inf = 2 B(-c) / c - 1 and
  2 t b2^t / (1 - b2^t) = 2 B(tc) / c, so rho_t = t + 2c (g(-c) - t^2 g(tc))
  while tc < 1; beyond, 2 t / expm1(tc) is small and the direct form
  rho_inf - 2 t / expm1(tc) has no cancellation.
  """
  c, t = _neg_log(b2, dtype), count.astype(dtype)
  near = t + 2 * c * (_bernoulli_remainder(-c) - t * t * _bernoulli_remainder(t * c))
  rho_inf = 2 / c + 2 * c * _bernoulli_remainder(-c)  # = 2 B(-c) / c - 1
  far = rho_inf - 2 * t / jnp.expm1(t * c)
  return jnp.where(t * c < 1, near, far)


def _compute_dtype(tree: optax.Updates):
  """The promotion of float32 and every leaf's dtype."""
  return jnp.result_type(jnp.float32, *[x.dtype for x in jax.tree.leaves(tree)])


def _divide_by_uncorrected_root(
    m_hat: optax.Updates,
    nu: optax.Updates,
    b2: jax.typing.ArrayLike,
    count: jax.Array,
    eps: jax.typing.ArrayLike,
    rectification: jax.typing.ArrayLike = 1.0,
) -> optax.Updates:
  """rectification sqrt(1 - b2^t) m_hat / (sqrt(nu) + eps), nu not bias-corrected.

  The bias correction of nu moves into the step size, so eps is added to
  the *uncorrected* sqrt(nu): the same as m_hat / (sqrt(nu_hat) + eps_t)
  with eps_t = eps / sqrt(1 - b2^t).
  """
  def scale(m):
    # The constants take m's dtype (float32 at least), and 1 - b2^t avoids
    # float32's cancellation (1 - 0.999 is 9.99987e-4 there: 6e-6 of a step).
    dtype = jnp.promote_types(m.dtype, jnp.float32)
    factor = jnp.asarray(rectification, dtype) * jnp.sqrt(_one_minus_power(b2, count, dtype))
    return factor.astype(m.dtype) * m

  return _divide_by_root(jax.tree.map(scale, m_hat), nu, eps)


def scale_by_adan_official(
    b1: jax.typing.ArrayLike = 0.98,
    b2: jax.typing.ArrayLike = 0.92,
    b3: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformation:
  """Adan's direction in the official code's convention: d weighted by b2.

  With d = g_t - g_{t-1} (0 at the first step) and betas as decay rates
  (the paper's beta_i is 1 - b_i):

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) d;  n <- b3 n + (1-b3) (g + b2 d)^2
    u = (m_hat + b2 v_hat) / (sqrt(n_hat) + eps)

  with every moment bias-corrected by its own beta. `optax.scale_by_adan`
  (optax 0.2.8) weights d by 1 - b2 instead of b2, in the Nesterov term and
  in u (optax PR #1715); the two agree only at b2 = 0.5.

  Args:
    b1: decay rate of the gradient moment, in [0, 1). Default 0.98.
    b2: decay rate of the gradient-difference moment, in [0, 1); also the
      weight of d in the Nesterov term and in u. Default 0.92.
    b3: decay rate of the squared Nesterov term, in [0, 1). Default 0.99.
    eps: added to sqrt(n_hat). Default 1e-8.

  Returns:
    An `optax.GradientTransformation` with a `ScaleByAdanOfficialState`.

  References:
    Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models, TPAMI 2024. https://arxiv.org/abs/2208.06677
    (official code: sail-sg/Adan).

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_adan_official()
    >>> u, _ = tx.update(jnp.array([2.0, -3.0]), tx.init(jnp.zeros(2)))
    >>> [round(x, 4) for x in u.tolist()]
    [1.0, -1.0]
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_unit_interval("b3", b3)
  _checks.check_eps("eps", eps)

  def init_fn(params):
    # One zeros tree per field: a shared tree could not be donated under jit.
    return ScaleByAdanOfficialState(
        count=jnp.zeros([], jnp.int32),
        m=optax.tree.zeros_like(params),
        v=optax.tree.zeros_like(params),
        n=optax.tree.zeros_like(params),
        previous_grad=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    del params
    diff = optax.tree.where(
        state.count == 0, optax.tree.zeros_like(updates),
        optax.tree.sub(updates, state.previous_grad))
    m = optax.tree.update_moment(updates, state.m, b1, 1)
    v = optax.tree.update_moment(diff, state.v, b2, 1)
    n = optax.tree.update_moment_per_elem_norm(
        optax.tree.add_scale(updates, b2, diff), state.n, b3, 2)
    count = optax.safe_increment(state.count)
    numerator = optax.tree.add_scale(
        optax.tree.bias_correction(m, b1, count), b2, optax.tree.bias_correction(v, b2, count))
    direction = _divide_by_root(numerator, optax.tree.bias_correction(n, b3, count), eps)
    return direction, ScaleByAdanOfficialState(count, m, v, n, updates)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_rectified_belief(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-16,
    eps_root: jax.typing.ArrayLike | None = None,
) -> optax.GradientTransformation:
  """AdaBelief's rectified direction, as `rectify=True` in the official code.

  The moments, m and s = EMA of (g - m)^2 plus eps_root (kept in the state),
  and the state are `optax.scale_by_belief`'s; only the
  direction is recomputed from them. With rho_inf = 2 / (1 - b2) - 1 and
  rho_t = rho_inf - 2 t b2^t / (1 - b2^t):

    u = r_t sqrt(1 - b2^t) m_hat / (sqrt(s) + eps)   if rho_t >= 5
    u = m_hat  (SGD with momentum)                    otherwise

  where r_t is RAdam's rectification. As in the official code, eps is added
  to the *uncorrected* sqrt(s) in the first branch. Without rectification
  the direction is `optax.scale_by_belief` itself.

  Args:
    b1: decay rate of the gradient moment, in [0, 1). Default 0.9.
    b2: decay rate of the belief moment, in [0, 1). Default 0.999.
    eps: added to sqrt(s) (and inside s unless `eps_root` is given). Default 1e-16.
    eps_root: added inside s at every step; None means `eps`, the official
      code's single eps. Default None.

  Returns:
    An `optax.GradientTransformation` with an `optax.ScaleByBeliefState`.

  References:
    Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients, NeurIPS 2020. https://arxiv.org/abs/2010.07468
    (official code: juntang-zhuang/Adabelief-Optimizer). Liu et al., On the
    Variance of the Adaptive Learning Rate and Beyond, ICLR 2020 (RAdam).

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_rectified_belief()
    >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
    >>> [round(x, 4) for x in u.tolist()]  # momentum SGD at first
    [0.5, -2.0]
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  eps_root = eps if eps_root is None else eps_root
  _checks.check_non_negative("eps_root", eps_root)

  def direction(updates, state):
    del updates
    t = state.count
    dtype = _compute_dtype(state.mu)
    b2_exact = jnp.asarray(b2, dtype) if isinstance(b2, jax.Array) else b2
    rho_inf = jnp.asarray(2.0 / (1.0 - b2_exact) - 1.0, dtype)  # double for a Python b2
    rho = _radam_rho(b2, t, dtype)
    # Clamped so the branch that jnp.where discards stays finite.
    rectification = jnp.sqrt(jnp.maximum(
        (rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho), 0.0))
    mu_hat = optax.tree.bias_correction(state.mu, b1, t)
    adaptive = _divide_by_uncorrected_root(mu_hat, state.nu, b2, t, eps, rectification)
    return optax.tree.where(rho >= _RHO_THRESHOLD, adaptive, mu_hat)

  return _with_direction(optax.scale_by_belief(b1, b2, eps=eps, eps_root=eps_root), direction)


def scale_by_adam_eps_before_correction(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformation:
  """Adam with eps added to sqrt(v) before its bias correction.

  u = sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps): the step-size form
  of the Adam paper's Algorithm 1 note, used by diffGrad's official
  diffGrad_v2.py (and Hugging Face's legacy AdamW). It equals
  `optax.scale_by_adam` with a time-dependent eps / sqrt(1 - b2^t), so it
  differs from it only while 1 - b2^t is far from 1. Moments and state are
  `optax.scale_by_adam`'s own; only the final division differs.

  Args:
    b1: decay rate of the first moment, in [0, 1). Default 0.9.
    b2: decay rate of the second moment, in [0, 1). Default 0.999.
    eps: added to the uncorrected sqrt(v). Default 1e-8.

  Returns:
    An `optax.GradientTransformation` with an `optax.ScaleByAdamState`.

  References:
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    https://arxiv.org/abs/1412.6980

    Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks", IEEE TNNLS
    2020. https://arxiv.org/abs/1909.11015 ; official code: https://github.com/shivram1987/diffGrad

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_adam_eps_before_correction(eps=0.1)
    >>> u, _ = tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))
    >>> round(float(u[0]), 4)  # 1 / (1 + 0.1 / sqrt(1 - 0.999))
    0.2403
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("eps", eps)

  def direction(updates, state):
    del updates
    m_hat = optax.tree.bias_correction(state.mu, b1, state.count)
    return _divide_by_uncorrected_root(m_hat, state.nu, b2, state.count, eps)

  return _with_direction(optax.scale_by_adam(b1, b2, eps), direction)


def scale_by_adam_lookahead(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformation:
  """Adam on the Nesterov look-ahead moment, bias-corrected as a whole.

  u = (b1 m_t + (1 - b1) g_t) / (1 - b1^t) / (sqrt(v_hat) + eps): AdamP's
  `nesterov=True` direction. `optax.scale_by_adam(nesterov=True)` (NAdam)
  corrects the b1 m_t term by 1 - b1^(t+1) instead. Not to be confused
  with `optax.lookahead` (slow/fast weights). Moments and state are
  `optax.scale_by_adam`'s own.

  Args:
    b1: decay rate of the first moment, in [0, 1). Default 0.9.
    b2: decay rate of the second moment, in [0, 1). Default 0.999.
    eps: added to sqrt(v_hat). Default 1e-8.

  Returns:
    An `optax.GradientTransformation` with an `optax.ScaleByAdamState`.

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021. https://arxiv.org/abs/2006.08217 ; official code:
    https://github.com/clovaai/AdamP

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_adam_lookahead(eps=0.0)
    >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    >>> round(float(u[0]), 4)  # (0.9 * 0.2 + 0.1 * 2) / 0.1 / 2
    1.9
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_eps("eps", eps)

  def direction(updates, state):
    lookahead = optax.tree.update_moment(updates, state.mu, b1, 1)
    m_hat = optax.tree.bias_correction(lookahead, b1, state.count)
    v_hat = optax.tree.bias_correction(state.nu, b2, state.count)
    return _divide_by_root(m_hat, v_hat, eps)

  return _with_direction(optax.scale_by_adam(b1, b2, eps), direction)


def trace_with_dampening(
    decay: jax.typing.ArrayLike,
    dampening: jax.typing.ArrayLike = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
  """Momentum buffer with dampening: buf <- decay buf + (1 - dampening) g.

  buf starts at 0, so unlike `torch.optim.SGD` the first buffer is dampened
  too (SGDP's official sgdp.py). The output is buf, or g + decay buf with
  `nesterov`, where the g term is not dampened. `optax.trace` is the
  dampening = 0 case; putting `optax.scale` in front of it would also dampen
  the g of the Nesterov term.

  Args:
    decay: the momentum coefficient, in [0, 1).
    dampening: how much of g is held back from the buffer, in [0, 1]. Default 0.0.
    nesterov: output g + decay buf instead of buf (static). Default False.

  Returns:
    An `optax.GradientTransformation` with an `optax.TraceState`; the buffer
    keeps the params' dtype.

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021. https://arxiv.org/abs/2006.08217 ; official code:
    https://github.com/clovaai/AdamP

  Example:
    >>> import jax.numpy as jnp
    >>> tx = trace_with_dampening(0.9, dampening=0.5)
    >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    >>> u.tolist()
    [1.0]
  """
  _checks.check_unit_interval("decay", decay)
  _checks.check_unit_interval("dampening", dampening, closed=True)

  def init_fn(params):
    return optax.TraceState(trace=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    buf = jax.tree.map(
        lambda g, b: decay * b + (1 - dampening) * g, updates, state.trace
    )
    if nesterov:
      updates = jax.tree.map(lambda g, b: g + decay * b, updates, buf)
    else:
      updates = buf
    return updates, optax.TraceState(trace=optax.tree.cast_like(buf, state.trace))

  return optax.GradientTransformation(init_fn, update_fn)


def ema_from_first_update(
    decay: jax.typing.ArrayLike,
) -> optax.GradientTransformation:
  """EMA momentum whose first value is the first update itself.

  m_1 = g_1 and m_t = decay * m_{t-1} + (1 - decay) * g_t afterwards, with no
  bias correction: the momentum buffer of the official SGD-SaI code.
  `optax.ema` starts from (1 - decay) g_1 (or rescales every step when
  debiased) and `optax.trace` adds g_t without the (1 - decay) factor, so
  neither matches. decay = 0 passes the updates through.

  Args:
    decay: the momentum coefficient in [0, 1).

  Returns:
    An `optax.GradientTransformation` with an `EmaFromFirstUpdateState`; the
    buffer keeps the params' dtype.

  References:
    Xu, Xiang, Cai & Wen, "No More Adam: Learning Rate Scaling at Initialization is All You Need",
    2024. https://arxiv.org/abs/2412.11768 ; official code:
    https://github.com/AnonymousAlethiometer/SGD_SaI
  """
  _checks.check_unit_interval("decay", decay)

  def init_fn(params):
    return EmaFromFirstUpdateState(
        count=jnp.zeros([], jnp.int32), ema=optax.tree.zeros_like(params)
    )

  def update_fn(updates, state, params=None):
    del params
    step_decay = jnp.where(state.count == 0, 0.0, decay)
    ema = optax.tree.update_moment(updates, state.ema, step_decay, 1)
    ema = optax.tree.cast_like(ema, state.ema)
    count = optax.safe_increment(state.count)
    return ema, EmaFromFirstUpdateState(count=count, ema=ema)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adabelief(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-16,
    rectify: bool = True,
    eps_root: jax.typing.ArrayLike | None = None,
) -> optax.GradientTransformation:
  """AdaBelief's direction: rectified by default, else the paper's Algorithm 2.

  `scale_by_rectified_belief`, or with `rectify=False`
  `optax.scale_by_belief(eps=eps, eps_root=eps_root)`. The one place gradkit
  chooses between them (`adabelief`, `adabelief8bit`).

  Args:
    b1: Decay rate of the first moment. Default 0.9.
    b2: Decay rate of the belief s. Default 0.999.
    eps: Added to the denominator (and inside s unless `eps_root` is given).
      Default 1e-16.
    rectify: Apply RAdam's rectification. Default True.
    eps_root: Added inside s; None means `eps` (the official single eps).
      Default None.

  Returns:
    An `optax.GradientTransformation`.

  References:
    Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
    NeurIPS 2020. https://arxiv.org/abs/2010.07468 ; official code:
    https://github.com/juntang-zhuang/Adabelief-Optimizer
  """
  if rectify:
    return scale_by_rectified_belief(b1, b2, eps, eps_root)
  eps_root = eps if eps_root is None else eps_root
  _checks.check_non_negative("eps_root", eps_root)
  return optax.scale_by_belief(b1, b2, eps=eps, eps_root=eps_root)


def debiased_ema(
    decay: jax.typing.ArrayLike,
    nesterov: bool = True,
) -> optax.GradientTransformation:
  """Bias-corrected EMA momentum, optionally with a Nesterov look-ahead.

  mu <- decay mu + (1 - decay) g. Without `nesterov` the output is
  mu / (1 - decay^t): `optax.ema(decay, debias=True)` itself. With it, the
  output is

    decay mu / (1 - decay^(t+1)) + (1 - decay) g / (1 - decay^t),

  the first moment of `optax.scale_by_adam(nesterov=True)` (NAdam) and the
  momentum of `optax.contrib.scale_by_muon`; neither exposes it without its
  second step (Adam's division, Muon's orthogonalization). The state is
  `optax.ema`'s own; only the output is recomputed from it.

  Args:
    decay: the momentum coefficient, in [0, 1).
    nesterov: add the look-ahead (static). Default True.

  Returns:
    An `optax.GradientTransformation` with an `optax.EmaState`; the
    accumulator keeps the params' dtype.

  References:
    Dozat, Incorporating Nesterov Momentum into Adam, ICLR 2016 workshop.
    K. Jordan et al., Muon: An optimizer for hidden layers in neural networks
    (2024).

  Example:
    >>> import jax.numpy as jnp
    >>> tx = debiased_ema(0.5)
    >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    >>> round(float(u[0]), 4)  # 0.5 * 1.0 / 0.75 + 0.5 * 2.0 / 0.5
    2.6667
  """
  _checks.check_unit_interval("decay", decay)
  moments = optax.ema(decay, debias=True)
  if not nesterov:
    return moments

  def direction(updates, state):
    return jax.tree.map(
        lambda m, g: decay * m + (1 - decay) * g,
        optax.tree.bias_correction(state.ema, decay, optax.safe_increment(state.count)),
        optax.tree.bias_correction(updates, decay, state.count))

  return _with_direction(moments, direction)
