"""PEP 562 lazy exports for gradkit's package `__init__` files.

`import gradkit` (or `gradkit.transforms`, ...) imports no submodule: each
public name is imported from the submodule that defines it on first access,
then cached in the package's namespace. Submodules stay reachable as
attributes (`gradkit.transforms.low_rank`) and are listed by `dir()` of the
subpackages, and `from pkg import name` works as with eager imports.

Many public names equal their submodule's name (`gradkit.optimizers.lion`
is the function defined in `gradkit/optimizers/lion.py`). When that
submodule is imported by any route, Python binds the module object on the
package under that name; `LazyModule.__setattr__` binds the exported
attribute instead, so the public name never turns into the module.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from collections.abc import Callable, Iterable, Mapping


class LazyModule(types.ModuleType):
  """Module type of a lazy package: importing a submodule binds its export."""

  def __setattr__(self, name: str, value: object) -> None:
    exports = self.__dict__.get("_lazy_exports", {})
    if (
        isinstance(value, types.ModuleType)
        and exports.get(name) is not None
        and value.__name__ == f"{self.__name__}.{name}"
    ):
      value = getattr(importlib.import_module(f"{self.__name__}.{exports[name]}"), name)
    super().__setattr__(name, value)


def attach(
    package: str,
    exports: Mapping[str, Iterable[str]],
    submodules: Iterable[str] = (),
    *,
    discover: bool = True,
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
  """Makes `package` lazy; returns its `__getattr__`, `__dir__` and `__all__`.

  Args:
    package: the package's `__name__`.
    exports: submodule (relative to `package`) -> the public names it defines.
    submodules: public submodules, exported as modules.
    discover: also list every other non-private submodule in `dir()`, as
      eager imports would have bound them. False for the root package, whose
      folder also holds setup.py and the experiments.

  Usage, in the package's `__init__.py`:
    __getattr__, __dir__, __all__ = _lazy.attach(__name__, {"lion": ["lion"]})
  """
  module = sys.modules[package]
  namespace = module.__dict__
  table: dict[str, str | None] = {}
  for source, names in exports.items():
    for name in names:
      if name in table:
        raise ValueError(f"{package}.{name} is exported twice")
      table[name] = source
  table.update({name: None for name in submodules})
  namespace["_lazy_exports"] = table
  module.__class__ = LazyModule
  public = sorted(table)

  def __getattr__(name: str) -> object:
    if name in table:
      source = table[name]
      if source is None:
        value = importlib.import_module(f"{package}.{name}")
      else:
        value = getattr(importlib.import_module(f"{package}.{source}"), name)
      namespace[name] = value
      return value
    if not name.startswith("__"):
      # Any other submodule (`gradkit.registry`, `gradkit.implicit._backend`).
      qualified = f"{package}.{name}"
      try:
        return importlib.import_module(qualified)
      except ModuleNotFoundError as error:
        if error.name != qualified:
          raise
    raise AttributeError(f"module {package!r} has no attribute {name!r}")

  def __dir__() -> list[str]:
    names = set(namespace) | set(public)
    if discover:
      import pkgutil  # only dir() needs it

      names |= {i.name for i in pkgutil.iter_modules(module.__path__) if not i.name.startswith("_")}
    return sorted(names)

  return __getattr__, __dir__, public
