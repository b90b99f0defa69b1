"""The two build settings pyproject.toml cannot express; everything else is there.

- Packages: the repository root is the package `gradkit`, so each folder
  with an `__init__.py` (except tests/, examples/, docs/ and build output) is
  the subpackage `gradkit.<folder>`. setuptools' declarative `packages.find`
  cannot prefix the names it finds, hence this list.
- Scratch: by default `pip install .` / `pip wheel .` write `build/` and
  `gradkit.egg-info/` into the source tree (the root is the package). Both go
  to a temporary folder instead, removed when the build process exits.

The setup script sits in the package's folder but is no module of it:
`_BuildPy` leaves it out of the wheel.
"""

from __future__ import annotations

import atexit
import functools
import pathlib
import shutil
import tempfile

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

_NOT_PACKAGES = ("tests", "examples", "docs", "build", "dist", "venv", "results", "workdir")


@functools.cache
def _scratch() -> pathlib.Path:
  path = pathlib.Path(tempfile.mkdtemp(prefix="gradkit-build-"))
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


def _subpackages() -> list[str]:
  root = pathlib.Path(__file__).resolve().parent
  exclude = [pattern for name in _NOT_PACKAGES for pattern in (name, f"{name}.*")]
  return sorted(f"gradkit.{name}" for name in find_packages(str(root), exclude=exclude))


class _BuildPy(build_py):
  """build_py without this script (a .py file in the root package's folder)."""

  def find_package_modules(self, package, package_dir):
    modules = super().find_package_modules(package, package_dir)
    return [entry for entry in modules if (entry[0], entry[1]) != ("gradkit", "setup")]


# The build backend runs this file as __main__; as `gradkit.setup` (the file
# lies in the package's folder, so an editable install can import it) it does
# nothing.
if __name__ == "__main__":
  setup(
      packages=["gradkit", *_subpackages()],
      cmdclass={"build_py": _BuildPy},
      options={
          "build": {"build_base": str(_scratch() / "build")},
          "egg_info": {"egg_base": str(_scratch())},
      },
  )
