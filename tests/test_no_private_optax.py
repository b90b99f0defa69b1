"""gradkit uses optax's public API only: no module of the package imports or
reaches into a private optax module (`optax._src`, `optax.contrib._sophia`, ...),
which optax may move or change in any release."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {".venv", "venv", "build", "dist", "site", "__pycache__", ".git"}


def _is_private(dotted: str) -> bool:
  """optax.<...>._x: a private component (dunders such as __version__ are public)."""
  parts = dotted.split(".")
  return parts[0] == "optax" and any(
      p.startswith("_") and not p.endswith("__") for p in parts[1:])


def _dotted(node: ast.AST) -> str | None:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    base = _dotted(node.value)
    return None if base is None else f"{base}.{node.attr}"
  return None


def private_optax_uses(source: str) -> list[str]:
  """Every private optax module path that `source` imports or reaches by attribute."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found += [a.name for a in node.names if _is_private(a.name)]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found += [f"{node.module}.{a.name}" for a in node.names
                if _is_private(f"{node.module}.{a.name}")]
    elif isinstance(node, ast.Attribute):
      dotted = _dotted(node)  # reported once, at its first private component
      if dotted and _is_private(dotted) and not _is_private(dotted.rsplit(".", 1)[0]):
        found.append(dotted)
    elif (isinstance(node, ast.Call) and _dotted(node.func) in {"importlib.import_module",
                                                                "__import__"}
          and node.args and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str) and _is_private(node.args[0].value)):
      found.append(node.args[0].value)
  return found


def _package_sources() -> list[pathlib.Path]:
  return sorted(
      p for p in ROOT.rglob("*.py")
      if not SKIPPED_DIRS & set(p.relative_to(ROOT).parts[:-1]))


@pytest.mark.parametrize("source", [
    "from optax._src import numerics",
    "from optax.contrib._sophia import scale_by_sophia",
    "import optax._src.base as base",
    "from optax import _src",
    "import optax\ncount = optax._src.numerics.safe_increment(0)",
    "import importlib\nm = importlib.import_module('optax.contrib._muon')",
])
def test_the_scan_finds_private_uses(source):
  assert private_optax_uses(source)


def test_the_scan_passes_the_public_api():
  source = ("import optax\nimport optax.contrib\nfrom optax import tree\n"
            "from optax.contrib import muon\nv = optax.__version__\n"
            "tx = optax.contrib.scale_by_muon()\nc = optax.safe_increment(0)\n")
  assert private_optax_uses(source) == []


def test_no_module_uses_a_private_optax_module():
  sources = _package_sources()
  assert ROOT / "registry.py" in sources and ROOT / "second_order" / "sophia.py" in sources
  offenders = {
      str(path.relative_to(ROOT)): uses for path in sources
      if (uses := private_optax_uses(path.read_text(encoding="utf-8")))
  }
  assert not offenders, f"private optax modules used (use optax's public API): {offenders}"
