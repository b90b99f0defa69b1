"""gradkit.partition / masked: a loss-needing branch equals the optimizer run by hand on its leaves.

The oracle for a branch is the same optimizer on the dict of its leaves only,
with `obj_fn` the full-tree loss of those leaves merged with the other
current parameters; the rest of the tree gets the other branch (AdamW) by
hand. The branch's probes (Hutchinson's, MeZO's) are drawn per leaf in
flattening order, which the masked tree and the leaf dict share, so the two
runs agree to float32 rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradkit
from gradkit.transforms.loss_aware_partition import PARAMETER_FUNCTION_ARGS

PARAMS = {
    "d1": {"kernel": jax.random.normal(jax.random.key(0), (4, 8)),
           "bias": jax.random.normal(jax.random.key(3), (8,))},
    "d2": {"kernel": jax.random.normal(jax.random.key(1), (8, 3)),
           "bias": jnp.array([1.0, -1.0, 0.0])},
}
X = jax.random.normal(jax.random.key(2), (16, 4))
Y = jnp.arange(16) % 3
MATRICES = jax.tree.map(lambda p: p.ndim == 2, PARAMS)
LABELS = jax.tree.map(lambda m: "matrices" if m else "rest", MATRICES)
STEPS = 4


def loss(p):
  h = jnp.tanh(X @ p["d1"]["kernel"] + p["d1"]["bias"])
  logits = h @ p["d2"]["kernel"] + p["d2"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


GRADS = jax.jit(jax.grad(loss))


def logits_of(p):
  return jnp.tanh(X @ p["d1"]["kernel"] + p["d1"]["bias"]) @ p["d2"]["kernel"] + p["d2"]["bias"]


def split(p):
  """(matrix leaves, the others), each a dict of only its leaves."""
  return ({k: {"kernel": v["kernel"]} for k, v in p.items()},
          {k: {"bias": v["bias"]} for k, v in p.items()})


def join(matrices, rest):
  return {k: {"kernel": matrices[k]["kernel"], "bias": rest[k]["bias"]} for k in matrices}


def sophia():
  # gamma 1 and b2 0.5 keep most of m / (gamma h) inside the clip, so the
  # steps depend on the Hessian estimate (with the defaults all are clipped).
  return gradkit.create("sophia", learning_rate=0.05, b2=0.5, gamma=1.0, update_interval=2,
                        seed=3)


def run_wrapped(tx, steps=STEPS, **extra):
  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  params, state = PARAMS, tx.init(PARAMS)
  for _ in range(steps):
    params, state = step(params, state)
  return params


def assert_equal(actual, expected):
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def assert_close(actual, expected):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-7),
               actual, expected)


def test_optax_partition_and_masked_still_fail_on_loss_needing_branches():
  # Why the drop-ins exist: optax's branches call obj_fn on a MaskedNode tree.
  grads = GRADS(PARAMS)
  tx = optax.partition({"matrices": sophia(), "rest": optax.adamw(1e-2)}, LABELS)
  with pytest.raises(TypeError, match="MaskedNode"):
    jax.eval_shape(lambda: tx.update(grads, tx.init(PARAMS), PARAMS, obj_fn=loss))
  tx = optax.masked(gradkit.create("mezo", learning_rate=1e-2), MATRICES)
  with pytest.raises(TypeError, match="MaskedNode"):
    jax.eval_shape(lambda: tx.update(PARAMS, tx.init(PARAMS), PARAMS, obj_fn=loss))


def test_partition_sophia_on_matrices_adamw_elsewhere_equals_the_halves_by_hand():
  tx = gradkit.partition({"matrices": sophia(), "rest": optax.adamw(1e-2)}, LABELS)
  wrapped = run_wrapped(tx, obj_fn=loss)

  hessian_tx, adamw = sophia(), optax.adamw(1e-2)

  @jax.jit
  def by_hand(matrices, rest, hessian_state, adamw_state):
    g_matrices, g_rest = split(jax.grad(loss)(join(matrices, rest)))
    u_matrices, hessian_state = hessian_tx.update(
        g_matrices, hessian_state, matrices, obj_fn=lambda m: loss(join(m, rest)))
    u_rest, adamw_state = adamw.update(g_rest, adamw_state, rest)
    return (optax.apply_updates(matrices, u_matrices), optax.apply_updates(rest, u_rest),
            hessian_state, adamw_state)

  matrices, rest = split(PARAMS)
  states = hessian_tx.init(matrices), adamw.init(rest)
  for _ in range(STEPS):
    matrices, rest, *states = by_hand(matrices, rest, *states)
  assert_close(wrapped, join(matrices, rest))
  assert float(jax.jit(loss)(wrapped)) < float(jax.jit(loss)(PARAMS)) - 0.1


def test_masked_mezo_equals_mezo_by_hand_on_the_subset():
  mezo = gradkit.create("mezo", learning_rate=1e-2, seed=1)
  wrapped = run_wrapped(gradkit.masked(mezo, MATRICES), obj_fn=loss)

  @jax.jit
  def by_hand(matrices, rest, state):
    g_matrices, g_rest = split(jax.grad(loss)(join(matrices, rest)))
    updates, state = mezo.update(g_matrices, state, matrices,
                                 obj_fn=lambda m: loss(join(m, rest)))
    # optax.masked passes the unmasked leaves' updates (here the gradient) through.
    return optax.apply_updates(matrices, updates), optax.apply_updates(rest, g_rest), state

  matrices, rest = split(PARAMS)
  state = mezo.init(matrices)
  for _ in range(STEPS):
    matrices, rest, state = by_hand(matrices, rest, state)
  assert_close(wrapped, join(matrices, rest))
  assert not np.allclose(wrapped["d1"]["kernel"], PARAMS["d1"]["kernel"])


def test_nested_masks_equal_one_mask_of_their_intersection():
  # The inner merge leaves MaskedNode where the outer mask fills the params in.
  mezo = gradkit.create("mezo", learning_rate=1e-2, seed=1)
  first_layer = {"d1": True, "d2": False}
  nested = gradkit.masked(gradkit.masked(mezo, lambda p: jax.tree.map(lambda x: x.ndim == 2, p)),
                          first_layer)
  single = gradkit.masked(mezo, {"d1": {"kernel": True, "bias": False}, "d2": False})
  assert_equal(run_wrapped(nested, steps=2, obj_fn=loss),
               run_wrapped(single, steps=2, obj_fn=loss))


def test_sampled_obj_fn_branch_sees_full_params():
  sophia_g = gradkit.create("sophia_g", learning_rate=0.05, update_interval=1)
  sampled = gradkit.second_order.sampled_cross_entropy(logits_of)
  grads = GRADS(PARAMS)
  tx = gradkit.masked(sophia_g, MATRICES)
  updates, state = jax.jit(lambda g, s, p: tx.update(g, s, p, sampled_obj_fn=sampled))(
      grads, tx.init(PARAMS), PARAMS)
  matrices, rest = split(PARAMS)
  expected, expected_state = jax.jit(lambda g, s, m: sophia_g.update(
      g, s, m, sampled_obj_fn=lambda q, key: sampled(join(q, rest), key)))(
          split(grads)[0], sophia_g.init(matrices), matrices)
  assert_close(split(updates)[0], expected)
  # The Hessian estimate (refreshed after the step's direction) is in the state.
  assert_close(jax.tree.leaves(state), jax.tree.leaves(expected_state))


def test_without_parameter_functions_the_wrappers_are_optax_bit_for_bit():
  for ours, theirs in [
      (gradkit.partition({"matrices": optax.adamw(1e-2), "rest": optax.sgd(0.1, 0.9)}, LABELS),
       optax.partition({"matrices": optax.adamw(1e-2), "rest": optax.sgd(0.1, 0.9)}, LABELS)),
      (gradkit.multi_transform({"matrices": optax.lion(1e-3), "rest": optax.adam(1e-2)}, LABELS),
       optax.multi_transform({"matrices": optax.lion(1e-3), "rest": optax.adam(1e-2)}, LABELS)),
      (gradkit.masked(optax.adam(1e-2), MATRICES), optax.masked(optax.adam(1e-2), MATRICES)),
  ]:
    assert jax.tree.structure(ours.init(PARAMS)) == jax.tree.structure(theirs.init(PARAMS))
    assert_equal(run_wrapped(ours, steps=2), run_wrapped(theirs, steps=2))


def test_function_args_without_params_name_params():
  assert PARAMETER_FUNCTION_ARGS == ("obj_fn", "sampled_obj_fn", "model_fn",
                                     "per_example_loss_fn")
  tx = gradkit.partition({"matrices": sophia(), "rest": optax.adamw(1e-2)}, LABELS)
  with pytest.raises(ValueError, match="params="):
    tx.update(PARAMS, tx.init(PARAMS), None, obj_fn=loss)
