"""Packaging: lazy imports, and the wheel ships every module and nothing else.

`import gradkit` imports no submodule (PEP 562 `__getattr__` in each package
`__init__`), so the optional-feeling heavy dependencies load only when the
part that needs them is used. The wheel is built from a copy of the tracked
tree, and the build must leave no files (build/, *.egg-info) in that copy.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("jaxopt", "flax", "sklearn", "matplotlib", "orbax", "scipy")
NOT_IN_PACKAGE = ("tests/", "examples/", "docs/")


def _loaded_after(code: str) -> dict[str, bool]:
  """Which of HEAVY are in sys.modules after running `code` in a fresh interpreter."""
  probe = f"import json, sys\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
  result = subprocess.run(
      [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_gradkit_loads_no_heavy_dependency():
  loaded = _loaded_after("import gradkit")
  assert not any(loaded.values()), loaded


def test_registry_and_transforms_do_not_load_implicit_or_flax():
  loaded = _loaded_after(
      "import gradkit\n"
      "assert len(gradkit.names()) >= 37\n"
      "gradkit.create('lion', learning_rate=1e-3)\n"
      "gradkit.transforms.quantized\n"
      "gradkit.second_order.sophia\n")
  assert not any(loaded[m] for m in ("jaxopt", "flax", "sklearn", "matplotlib", "orbax")), loaded


def test_implicit_loads_jaxopt_and_layers_load_flax():
  loaded = _loaded_after("import gradkit\ngradkit.implicit.inner_solver")
  assert loaded["jaxopt"] and not loaded["flax"]
  loaded = _loaded_after("import gradkit\ngradkit.layers")
  assert loaded["flax"] and not loaded["jaxopt"]


def test_lazy_names_resolve_like_eager_imports():
  import gradkit
  import gradkit.optimizers.lion  # binds the submodule on the package first
  import gradkit.transforms.dice_sgd
  from gradkit.curvature_products import hessian_vector_product
  from gradkit.second_order import products

  assert callable(gradkit.optimizers.lion)
  assert gradkit.optimizers.lion is sys.modules["gradkit.optimizers.lion"].lion
  assert gradkit.transforms.dice_sgd is sys.modules["gradkit.transforms.dice_sgd"].dice_sgd
  assert gradkit.second_order.hessian_vector_product is hessian_vector_product
  assert products.hessian_vector_product is hessian_vector_product
  assert gradkit.transforms.low_rank is sys.modules["gradkit.transforms.low_rank"]
  assert {"create", "names", "state_nbytes", "transforms"} <= set(gradkit.__all__)
  assert "low_rank" in dir(gradkit.transforms) and "lion" in gradkit.optimizers.__all__
  for package in (gradkit, gradkit.transforms, gradkit.optimizers, gradkit.second_order,
                  gradkit.implicit):
    for name in package.__all__:
      assert getattr(package, name) is not None, f"{package.__name__}.{name}"
  with pytest.raises(AttributeError):
    gradkit.transforms.no_such_name  # noqa: B018
  assert isinstance(gradkit.__version__, str)


def _tracked_files() -> list[str]:
  # The suite runs from a clone (README); git names the files a release ships.
  result = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                          check=True, timeout=60)
  return [f for f in result.stdout.decode().split("\0") if f and (ROOT / f).is_file()]


def _all_files(root: pathlib.Path) -> set[str]:
  return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_wheel_holds_every_module_and_license_and_build_leaves_no_files(tmp_path):
  tracked = _tracked_files()
  source = tmp_path / "src"
  for name in tracked:
    (source / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / name, source / name)
  before = _all_files(source)
  out = tmp_path / "wheel"
  env = dict(os.environ, PIP_NO_INPUT="1")
  subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
       "--wheel-dir", str(out), str(source)],
      check=True, timeout=300, env=env)

  assert _all_files(source) == before, "the build wrote into the source tree"
  (wheel,) = out.glob("gradkit-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  modules = {f for f in tracked if f.endswith(".py") and not f.startswith(NOT_IN_PACKAGE)
             and f != "setup.py"}
  missing = sorted(f for f in modules if f"gradkit/{f}" not in names)
  assert not missing, f"modules missing from the wheel: {missing}"
  stray = sorted(n for n in names
                 if n.endswith(".py") and n.removeprefix("gradkit/") not in modules)
  assert not stray, f"files in the wheel that are no package module: {stray}"

  (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
  metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
  assert "License-Expression: Apache-2.0" in metadata
  assert "License-File: LICENSE" in metadata
  assert f"{dist_info}/licenses/LICENSE" in names
  assert "Requires-Dist: torch" not in metadata.split("Provides-Extra: peers")[0]
