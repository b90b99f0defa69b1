"""Optimizer-state bytes of the matrix methods on a LLaMA-60M-like tree, by formula.

For each method the bytes owned by the "matrix"-labelled leaves (state of
the whole tree minus state of the tree without those leaves, from
`jax.eval_shape`, so nothing is allocated) must equal the method's formula
summed over the 56 kernels, up to a few scalar counters per leaf:

- SWAN, SinkGD, SCALE: nothing per matrix (SCALE's head momentum is checked
  separately: exactly the head's size);
- Muon: one momentum, m n; COSMOS: m n + (m + n) r + r^2;
- GaLore, APOLLO, FRUGAL (rank r, projector on the smaller side):
  moments 2 r max(m, n) plus the projector r min(m, n);
- APOLLO-Mini: the same with r = 1, i.e. O(m + n);
- Natural GaLore: two-sided projector (m + n) r, moments 2 r^2, history s r^2.
"""

from __future__ import annotations

import jax
import pytest

from gradkit.experiments.bench_matrix import matrix_state_bytes, state_bytes, without_label
from gradkit.experiments.models import llama_like_params
from gradkit.optimizers.apollo import RANK as APOLLO_RANK
from gradkit.optimizers.cosmos import RANK as COSMOS_RANK
from gradkit.optimizers.frugal import DENSITY
from gradkit.optimizers.galore import NATURAL_HISTORY
from gradkit.optimizers.galore import RANK as GALORE_RANK
from gradkit.optimizers.matrix_labels import matrix_labels
from gradkit.transforms.cosmos import cosmos_rank

PARAMS = llama_like_params()
LABELS = matrix_labels(PARAMS)
SHAPES = [p.shape for p, lab in zip(jax.tree.leaves(PARAMS), jax.tree.leaves(LABELS))
          if lab == "matrix"]
SLACK_PER_LEAF = 16  # bytes: per-leaf scalars (a limiter's norm, a ring buffer's fill)


def _low_rank(r_of):
  def floats(m, n):
    r = r_of(m, n)
    return 2 * r * max(m, n) + r * min(m, n)
  return floats


def _natural(m, n):
  r = min(GALORE_RANK, m, n)
  return (m + n) * r + (2 + NATURAL_HISTORY) * r * r


def _cosmos(m, n):
  r = cosmos_rank((m, n), COSMOS_RANK)
  return m * n + (m + n) * r + r * r


FORMULAS = {
    "swan": lambda m, n: 0,
    "sinkgd": lambda m, n: 0,
    "scale": lambda m, n: 0,
    "muon": lambda m, n: m * n,
    "cosmos": _cosmos,
    "galore": _low_rank(lambda m, n: min(GALORE_RANK, m, n)),
    "apollo": _low_rank(lambda m, n: min(APOLLO_RANK, m, n)),
    "apollo_mini": _low_rank(lambda m, n: 1),
    "frugal": _low_rank(lambda m, n: max(1, round(DENSITY * min(m, n)))),
    "natural_galore": _natural,
}


def test_tree_is_llama_60m():
  assert len(SHAPES) == 56
  assert 58e6 < sum(p.size for p in jax.tree.leaves(PARAMS)) < 59e6


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_matrix_state_bytes_match_formula(name):
  expected = 4 * sum(FORMULAS[name](*shape) for shape in SHAPES)
  got = matrix_state_bytes(name, PARAMS)
  assert expected <= got <= expected + SLACK_PER_LEAF * len(SHAPES), (name, got, expected)


def test_memory_goals_against_adamw():
  adamw = matrix_state_bytes("adamw", PARAMS)
  assert adamw == 8 * sum(m * n for m, n in SHAPES)
  mini = matrix_state_bytes("apollo_mini", PARAMS)
  assert mini <= 4 * 3 * sum(max(m, n) for m, n in SHAPES) + SLACK_PER_LEAF * len(SHAPES)
  assert mini < adamw / 100
  for name in ("galore", "frugal"):  # rank 128 and 0.25 of the smaller side
    assert matrix_state_bytes(name, PARAMS) < adamw / 2


def test_scale_keeps_momentum_for_the_head_only():
  head = PARAMS["lm_head"]["kernel"]
  owned = state_bytes("scale", PARAMS) - state_bytes("scale", without_label(PARAMS, "head"))
  assert owned == 4 * head.size
  assert state_bytes("scale", PARAMS) == state_bytes("scale", without_label(PARAMS, "embedding"))


@pytest.mark.parametrize("name", ["swan", "sinkgd"])
def test_stateless_methods_keep_only_adamw_state_of_the_other_leaves(name):
  rest = without_label(PARAMS, "matrix")
  # AdamW's two moments of every non-matrix leaf, and a count per branch.
  moments = 8 * sum(p.size for p in jax.tree.leaves(rest))
  assert moments <= state_bytes(name, PARAMS) <= moments + 16
