"""The documentation site: `mkdocs build --strict` succeeds, and nothing is left out.

The build (mkdocs-material + mkdocstrings' python handler) turns every warning
into an error: a broken link or anchor, a page missing from the nav, a griffe
warning about a docstring (a parameter documented that the signature lacks, an
unparsable section). The site goes to a temporary folder, never into the tree.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Packages whose every public module must be rendered on an API page: the
# pages name modules (`::: gradkit.optimizers.lion`), not the packages'
# re-exports, so a lazy `__init__` cannot hide a member from griffe.
PACKAGES = ("transforms", "optimizers", "second_order", "implicit")
# Top-level modules are every `*.py` of the repository root (the package
# `gradkit`) but private ones and the build script.
NOT_MODULES = ("setup",)


def _nav_pages(node) -> list[str]:
  if isinstance(node, str):
    return [node]
  if isinstance(node, list):
    return [p for item in node for p in _nav_pages(item)]
  if isinstance(node, dict):
    return [p for value in node.values() for p in _nav_pages(value)]
  return []


def _config() -> dict:
  return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_strict_build_succeeds(tmp_path):
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  if result.returncode != 0:
    print(result.stdout)
    print(result.stderr)
  assert result.returncode == 0, result.stderr[-6000:]
  assert (tmp_path / "site" / "index.html").is_file()
  assert (tmp_path / "site" / "api" / "optimizers" / "index.html").is_file()
  assert not (ROOT / "site").exists(), "the build wrote into the tree"


def test_every_guide_and_api_page_is_in_the_nav():
  config = _config()
  assert config["docs_dir"] == "docs"
  nav = _nav_pages(config["nav"])
  pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
  missing = [p for p in pages if p not in nav]
  assert not missing, f"pages not in mkdocs.yml's nav: {missing}"
  dangling = [p for p in nav if not (DOCS / p).is_file()]
  assert not dangling, f"nav entries without a page: {dangling}"
  assert any(p.startswith("guides/") for p in nav) and any(p.startswith("api/") for p in nav)
  assert "robustness.md" in nav  # linked from README.md


def test_every_public_module_has_an_api_entry():
  rendered = set()
  for page in (DOCS / "api").glob("*.md"):
    rendered |= set(re.findall(r"^::: *(gradkit[\w.]*)\s*$", page.read_text(), re.MULTILINE))
  expected = {f"gradkit.{p.stem}" for p in ROOT.glob("*.py")
              if not p.stem.startswith("_") and p.stem not in NOT_MODULES}
  for package in PACKAGES:
    expected |= {f"gradkit.{package}.{p.stem}" for p in (ROOT / package).glob("*.py")
                 if not p.stem.startswith("_")}
  missing = sorted(expected - rendered)
  assert not missing, f"public modules without a `::: module` entry in docs/api/: {missing}"
  unknown = sorted(m for m in rendered - expected)
  assert not unknown, f"API entries for modules that do not exist: {unknown}"
