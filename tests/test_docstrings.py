"""Docstrings of the public API: Google-style `Args:` and paper `References:`.

mkdocstrings renders these docstrings in a strict docs build, so every public
function (and public class with its own constructor) must name each of its
parameters in an `Args:` section, one `name: description` entry per
parameter, and state the default of each parameter that has one. Every
registered optimizer and every primitive that implements a published method
must cite the paper in a `References:` section with its arXiv link.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import pytest

import gradkit

MODULES = (
    "gradkit.transforms",
    "gradkit.optimizers",
    "gradkit.second_order",
    "gradkit.implicit",
    "gradkit.schedules",
    "gradkit.batch_size",
    "gradkit.privacy",
    "gradkit.regularizers",
    "gradkit.layers",
    "gradkit.column_row_sampling",
    "gradkit.memory",
    "gradkit.registry",
    "gradkit.flax_helpers",
)

# Public primitives (beyond the registered optimizers) that implement a
# published method: their docstrings must carry an arXiv reference.
PAPER_PRIMITIVES = frozenset({
    # transforms
    "scale_by_sign_momentum", "scale_by_friction", "project_radial",
    "scale_by_gsnr_at_init", "clip_coordinates_top_fraction",
    "scale_by_adam_clipped_first_moment", "scale_by_adan_official",
    "scale_by_rectified_belief", "scale_by_adabelief",
    "scale_by_adam_eps_before_correction", "scale_by_adam_lookahead",
    "trace_with_dampening", "ema_from_first_update",
    "dynamic_map", "quantize_blockwise", "dequantize_blockwise", "quantized",
    "orthogonalize_newton_schulz", "newton_schulz_orthogonalize",
    "whiten_newton_schulz", "newton_schulz_whiten",
    "normalize_axis", "normalize_sinkhorn", "sinkhorn_normalize",
    "project_low_rank", "make_projector", "precondition_natural_fisher",
    "scale_by_apollo", "scale_by_apollo_ratios", "limit_norm_growth",
    "scale_by_cosmos", "distributed_spsa_step", "one_byte_encode",
    "one_byte_decode", "estimate_spsa_gradient", "spsa_gradient",
    "small_magnitude_mask", "dice_sgd", "dice_sgd_aggregate", "dp_sgd",
    "mix_gradients", "mse_optimal_mixing_weight", "mixing_weight_from_samples",
    "scale_by_agvm", "module_dissimilarity", "precondition_like_adam",
    "scale_by_normalized_igt", "scale_by_harpg", "scale_by_optimistic_omd",
    "optimistic_multiplicative_weights", "restrict_to_small_weights",
    "project_trained_rank", "truncation_mask", "nuclear_norm_subgradient",
    "add_nuclear_norm_subgradient", "scale_by_hypergradient_lr",
    # optimizers
    "mezo_step",
    # second_order
    "scale_by_adahessian", "estimate_hutchinson_diagonal",
    "hutchinson_diagonal", "spatial_average", "precondition_mfac",
    "mfac_inverse_product", "scale_by_approx_newton",
    "estimate_gauss_newton_bartlett_diagonal", "sampled_cross_entropy",
    "lanczos_quadrature", "spectral_density", "top_eigenvalue",
    # implicit
    "inner_solver", "implicit_root", "implicit_fixed_point",
    "implicit_hypergradient", "bo_rep", "penalty_method", "lv_hba",
    # schedules, batch size, privacy, regularizers, layers
    "linear_decay_schedule", "refined_schedule", "refined_schedule_values",
    "smooth_gradient_norms", "scale_learning_rate", "step_law", "norm_test",
    "inner_product_test", "orthogonality_test", "augmented_inner_product_test",
    "adaptive_batch_statistic", "next_batch_size",
    "AdaptiveBatchSizeController", "rdp_sampled_gaussian", "epsilon_from_rdp",
    "epsilon", "saf_loss", "trajectory_kl_loss", "init_trajectory_buffer",
    "StableEmbedding", "WTACRSLinear", "wta_crs_dense", "select_pairs", "pair_probabilities",
    "winner_count", "sampling_budget",
})

_ENTRY = re.compile(r"^(\*{0,2}[A-Za-z_]\w*)(?:\s*\([^)]*\))?\s*:(.*)$")
_ARXIV = re.compile(r"https://arxiv\.org/abs/\d{4}\.\d{4,5}")


def _public_names(module):
  """`__all__` when the module has one (lazy PEP 562 packages), else dir()."""
  names = getattr(module, "__all__", None)
  if names is None:
    names = [n for n in dir(module) if not n.startswith("_")]
  return list(names)


def _documented_objects():
  """(qualified name, short name, object) of every public function/class."""
  seen = {}
  for module_name in MODULES:
    module = importlib.import_module(module_name)
    for name in _public_names(module):
      obj = getattr(module, name)
      if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        continue
      # Only objects defined under this module (not re-exported helpers).
      if not getattr(obj, "__module__", "").startswith(module_name):
        continue
      if inspect.isclass(obj) and issubclass(obj, tuple):
        continue  # NamedTuple states: fields, not arguments
      seen.setdefault(f"{obj.__module__}.{obj.__qualname__}", (name, obj))
  return sorted((key, name, obj) for key, (name, obj) in seen.items())


# Registered, but not from a paper: plain SGD with (Nesterov) momentum
# predates arXiv (Polyak 1964; Sutskever et al., ICML 2013).
NOT_FROM_A_PAPER = frozenset({"sgd"})

OBJECTS = _documented_objects()
PAPER_METHODS = (frozenset(gradkit.names()) | PAPER_PRIMITIVES) - NOT_FROM_A_PAPER


def _parameters(obj):
  target = obj.__init__ if inspect.isclass(obj) else obj
  if inspect.isclass(obj) and target is object.__init__:
    return []
  params = list(inspect.signature(target).parameters.values())
  if inspect.isclass(obj):
    params = params[1:]  # self
  return [p for p in params
          if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _docstring(obj):
  doc = inspect.getdoc(obj) or ""
  if inspect.isclass(obj) and "Args:" not in doc:
    doc += "\n" + (inspect.getdoc(obj.__init__) or "")
  return doc


def _section(doc, title):
  """Lines of the Google-style section `title:` (None if absent)."""
  lines = doc.splitlines()
  for i, line in enumerate(lines):
    if line.strip() == f"{title}:":
      indent = len(line) - len(line.lstrip())
      body = []
      for nxt in lines[i + 1:]:
        if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
          break
        body.append(nxt)
      return body
  return None


def _arg_entries(body):
  """{name: description} from an Args section, one entry per parameter."""
  content = [l for l in body if l.strip()]
  if not content:
    return {}
  entry_indent = min(len(l) - len(l.lstrip()) for l in content)
  entries, current = {}, None
  for line in content:
    indent = len(line) - len(line.lstrip())
    match = _ENTRY.match(line.strip()) if indent == entry_indent else None
    if match:
      current = match.group(1).lstrip("*")
      entries[current] = match.group(2)
    elif current is not None:
      entries[current] += " " + line.strip()
  return entries


def test_public_api_is_found():
  names = {name for _, name, _ in OBJECTS}
  for expected in ("lion", "scale_by_sign_momentum", "sophia", "bo_rep",
                   "refined_schedule", "epsilon", "state_nbytes", "create"):
    assert expected in names


@pytest.mark.parametrize("key,name,obj", OBJECTS, ids=[k for k, _, _ in OBJECTS])
def test_summary_and_args(key, name, obj):
  doc = _docstring(obj)
  assert doc.strip(), f"{key} has no docstring"
  summary = doc.strip().splitlines()[0].strip()
  assert summary and not summary.endswith(":"), f"{key}: no one-line summary"
  lines = doc.strip().splitlines()
  assert len(lines) == 1 or not lines[1].strip(), f"{key}: summary spans several lines"
  params = _parameters(obj)
  if not params:
    return
  body = _section(doc, "Args")
  if body is None and inspect.isclass(obj) and dataclasses.is_dataclass(obj):
    body = _section(doc, "Attributes")  # a dataclass documents its fields as attributes
  assert body is not None, f"{key}: no 'Args:' section"
  entries = _arg_entries(body)
  missing = [p.name for p in params if p.name not in entries]
  assert not missing, f"{key}: Args does not name {missing}"
  target = obj.__init__ if inspect.isclass(obj) else obj
  signature_names = set(inspect.signature(target).parameters)  # with *args
  unknown = sorted(set(entries) - signature_names)
  assert not unknown, f"{key}: Args names {unknown}, not in the signature"
  no_default = [p.name for p in params
                if p.default is not p.empty
                and "default" not in entries[p.name].lower()]
  assert not no_default, f"{key}: Args does not state the default of {no_default}"


@pytest.mark.parametrize(
    "key,name,obj",
    [o for o in OBJECTS if o[1] in PAPER_METHODS],
    ids=[k for k, n, _ in OBJECTS if n in PAPER_METHODS])
def test_paper_methods_cite_arxiv(key, name, obj):
  body = _section(_docstring(obj), "References")
  assert body is not None, f"{key}: no 'References:' section"
  assert _ARXIV.search("\n".join(body)), f"{key}: References has no arXiv link"


def test_every_paper_method_is_public():
  names = {name for _, name, _ in OBJECTS}
  assert not sorted(PAPER_METHODS - names)
