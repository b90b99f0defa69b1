"""Name -> factory registry behind `gradkit.create` and `gradkit.names`.

The built-in optimizers register themselves when their modules are imported;
the packages are lazy, so `names`, `get_factory` and `create` import every
module of `_BUILTIN_PACKAGES` on first use.

Names are case-insensitive: they are stored lower-case, so `create("Lion")`
and `create("lion")` are the same optimizer, and two names that differ only
in case cannot both be registered.

optax's own optimizers live in a namespace of their own: `"optax.<name>"`
is `optax.<name>` and `"optax.contrib.<name>"` is `optax.contrib.<name>`
(every public optax function whose first argument is `learning_rate`, but the
`scale_by_*` primitives and deprecated aliases). A bare name is always
gradkit's: `"adamw"` is `gradkit.optimizers.adamw`, `"optax.adamw"` is
`optax.adamw`, and a bare name gradkit lacks (`"adam"`, `"adafactor"`) is an
error that suggests optax's spelling (`"optax.adam"`), so no name silently
switches implementation. The `"optax."` prefix is reserved: `register`
refuses it.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import pkgutil
import types
import warnings
from collections.abc import Callable
from typing import Any

import optax

Factory = Callable[..., optax.GradientTransformation]

_FACTORIES: dict[str, Factory] = {}
_BUILTIN_PACKAGES = ("gradkit.optimizers", "gradkit.second_order")
_OPTAX_MODULES = ("optax", "optax.contrib")
_OPTAX_PREFIX = "optax."
_builtins_loaded = False


def _load_builtins() -> None:
  """Imports every public module of `_BUILTIN_PACKAGES`, registering their optimizers."""
  global _builtins_loaded
  if _builtins_loaded:
    return
  for package_name in _BUILTIN_PACKAGES:
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
      if not info.name.startswith("_"):
        importlib.import_module(f"{package_name}.{info.name}")
  _builtins_loaded = True


@functools.cache
def _optax_factories() -> dict[str, Factory]:
  """"optax.adam", "optax.contrib.prodigy", ... -> optax's public optimizer factories."""
  factories = {}
  for module_name in _OPTAX_MODULES:
    module = importlib.import_module(module_name)
    for attr in getattr(module, "__all__", None) or dir(module):
      if attr.startswith(("_", "scale_by")):
        continue
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(module, attr, None)
      if caught or not inspect.isfunction(value):  # deprecated aliases warn on access
        continue
      parameters = list(inspect.signature(value).parameters)
      if parameters[:1] == ["learning_rate"]:
        factories[f"{module_name}.{attr}".lower()] = value
  return factories


def _code_key(code: types.CodeType) -> tuple:
  """What a function's code does, without its file name and line numbers."""
  consts = tuple(_code_key(c) if isinstance(c, types.CodeType) else (type(c), c)
                 for c in code.co_consts)
  return (code.co_code, consts, code.co_names, code.co_varnames, code.co_freevars,
          code.co_argcount, code.co_kwonlyargcount, code.co_flags)


def _same_definition(old: Factory, new: Factory) -> bool:
  """True if `new` re-runs the definition of `old` (same module, name, code, defaults)."""
  if old is new:
    return True
  old, new = inspect.unwrap(old), inspect.unwrap(new)
  if not (inspect.isfunction(old) and inspect.isfunction(new)):
    return old is new
  try:
    return bool(
        (old.__module__, old.__qualname__) == (new.__module__, new.__qualname__)
        and _code_key(old.__code__) == _code_key(new.__code__)
        and old.__defaults__ == new.__defaults__
        and old.__kwdefaults__ == new.__kwdefaults__)
  except Exception:  # a default whose == is not a bool (an array): not provably the same
    return False


def _key(name: str) -> str:
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"optimizer names are non-empty strings, got {name!r}")
  return name.strip().lower()


def register(name: str, *, replace: bool = False) -> Callable[[Factory], Factory]:
  """Decorator that registers an optimizer factory under `name` (stored lower-case).

  Registering the same definition again is a no-op that keeps the newer
  function: re-running a notebook cell, or reloading a module, re-registers a
  factory with the same module, qualified name, code and defaults, which
  replaces the old function object. A different factory claiming a taken
  name (compared case-insensitively, built-in names included) is a
  ValueError, unless `replace=True` says the replacement is meant;
  `unregister` removes a name. Names starting with "optax." are reserved for
  optax's optimizers.

  Args:
    name: the name `gradkit.create` will accept, in any case.
    replace: replace a different factory already registered under `name`
      instead of raising. Default False.

  Returns:
    The decorator; it registers the factory and returns it unchanged, except
    that gradkit's own factories (defined in a `gradkit.` module) are wrapped
    so that their optimizer leaves integer, bool and float0 leaves alone
    (`gradkit.transforms.float_leaves.float_leaves_only`) and checks its
    update's inputs while tracing: gradients against params, the state
    against what `init` makes for these parameters, losses are scalars
    (`gradkit.transforms.tree_checks.check_update_inputs`); same signature
    and docstring.

  Raises:
    ValueError: `name` is empty or starts with "optax.".

  Example:
    >>> import optax
    >>> import gradkit
    >>> @gradkit.registry.register("my_sgd")
    ... def my_sgd(learning_rate: float = 0.1) -> optax.GradientTransformation:
    ...   return optax.sgd(learning_rate)
    >>> gradkit.create("My_SGD") is not None
    True
    >>> _ = gradkit.registry.unregister("my_sgd")
  """
  key = _key(name)
  if key.startswith(_OPTAX_PREFIX):
    raise ValueError(
        f"optimizer names starting with {_OPTAX_PREFIX!r} are reserved for optax's own "
        f"optimizers (gradkit.create({name!r}) already builds optax's); pick another name")

  def decorator(factory: Factory) -> Factory:
    if not getattr(factory, "__module__", "").startswith("gradkit."):
      _load_builtins()
    old = _FACTORIES.get(key)
    if old is not None and not replace and not _same_definition(old, factory):
      where = getattr(old, "__module__", "?") + "." + getattr(old, "__qualname__", repr(old))
      raise ValueError(
          f"optimizer name {name!r} is already registered (by {where}; names are "
          f"case-insensitive); use register({key!r}, replace=True) to replace it, "
          f"gradkit.registry.unregister({key!r}) to free it, or another name")
    if getattr(factory, "__module__", "").startswith("gradkit."):
      factory = _leaving_non_float_leaves_alone(factory)
    _FACTORIES[key] = factory
    return factory

  return decorator


def _leaving_non_float_leaves_alone(factory: Factory) -> Factory:
  """gradkit's own factory, its optimizer wrapped in `float_leaves_only` and
  `check_update_inputs` (same signature); every argument annotated
  `optax.ScalarOrSchedule` is checked first (`_checks.check_rate`: a number
  >= 0 or a schedule; None only where it is the default)."""
  if getattr(factory, "_gradkit_float_leaves_only", False):
    return factory
  signature = inspect.signature(factory)
  rates = [(name, p.default is None) for name, p in signature.parameters.items()
           if "ScalarOrSchedule" in str(p.annotation)]

  @functools.wraps(factory)
  def build(*args: Any, **kwargs: Any) -> optax.GradientTransformation:
    from gradkit import _checks  # noqa: PLC0415
    from gradkit.transforms import float_leaves_only  # noqa: PLC0415
    try:
      given = signature.bind_partial(*args, **kwargs).arguments
    except TypeError:  # the factory's own call raises it
      given = {}
    for name, none_is_default in rates:
      if name in given and not (given[name] is None and none_is_default):
        _checks.check_rate(name, given[name])
    from gradkit.transforms.tree_checks import check_update_inputs  # noqa: PLC0415
    return check_update_inputs(float_leaves_only(factory(*args, **kwargs)))

  build._gradkit_float_leaves_only = True
  return build


def unregister(name: str) -> Factory:
  """Removes `name` from the registry and returns its factory.

  Built-in names can be removed too; they stay removed until the process
  restarts (or their module registers them again on reload).

  Args:
    name: a registered gradkit name, in any case (optax's names cannot be removed).

  Returns:
    The factory that was registered under `name`.

  Raises:
    ValueError: `name` is not registered.
  """
  _load_builtins()
  key = _key(name)
  if key not in _FACTORIES:
    raise ValueError(f"{name!r} is not registered; {_suggestion(key)}")
  return _FACTORIES.pop(key)


def names(include_optax: bool = False) -> list[str]:
  """Sorted names of every registered gradkit optimizer (lower-case).

  Args:
    include_optax: also list optax's optimizers, as `"optax.<name>"` and
      `"optax.contrib.<name>"`. Default False (gradkit's own only, the set
      the registry-wide tests run).

  Returns:
    The sorted names.
  """
  _load_builtins()
  if include_optax:
    return sorted({*_FACTORIES, *_optax_factories()})
  return sorted(_FACTORIES)


def _suggestion(key: str) -> str:
  """The unknown-name hint: optax's spelling of a bare optax name, else the nearest names."""
  if key.startswith(_OPTAX_PREFIX):
    nearest = difflib.get_close_matches(key, _optax_factories(), n=3, cutoff=0.0)
    return (f"nearest optax names: {', '.join(nearest)} "
            "(gradkit.names(include_optax=True) lists all)")
  hint = ""
  for module_name in _OPTAX_MODULES:
    if f"{module_name}.{key}" in _optax_factories():
      hint = (f"did you mean {module_name + '.' + key!r}? Bare names are gradkit's own; "
              "optax's optimizers are reached as 'optax.<name>' or "
              "'optax.contrib.<name>'. ")
      break
  nearest = difflib.get_close_matches(key, _FACTORIES, n=3, cutoff=0.0)
  return f"{hint}nearest registered names: {', '.join(nearest)} (gradkit.names() lists all)"


def get_factory(name: str) -> Factory:
  """The factory registered as `name`, or optax's for "optax.<name>"; case-insensitive.

  Args:
    name: a registered name (see `names`), or "optax.<name>" /
      "optax.contrib.<name>" for optax's optimizer of that name.

  Returns:
    The factory, a callable returning an optax transformation.

  Raises:
    ValueError: `name` is not registered; the message lists the nearest
      names, and for a bare optax name gradkit lacks (e.g. "adam") suggests
      optax's spelling ("optax.adam").
  """
  _load_builtins()
  key = _key(name)
  factory = (_optax_factories() if key.startswith(_OPTAX_PREFIX) else _FACTORIES).get(key)
  if factory is None:
    raise ValueError(f"unknown optimizer {name!r}; {_suggestion(key)}")
  return factory


def create(name: str, **hparams: Any) -> optax.GradientTransformation:
  """Builds the registered optimizer `name` with keyword hyperparameters.

  Args:
    name: a registered name (see `names`), in any case; "optax.<name>" or
      "optax.contrib.<name>" builds optax's optimizer of that name.
    **hparams: keyword arguments of the factory; omitted ones take the
      factory's (paper) defaults. optax's factories mostly have no default
      `learning_rate`.

  Returns:
    The optimizer, an `optax.GradientTransformation`.

  Example:
    >>> import gradkit
    >>> tx = gradkit.create("lion", learning_rate=1e-4, weight_decay=0.1)
    >>> tx = gradkit.create("optax.adafactor", learning_rate=1e-3)
  """
  return get_factory(name)(**hparams)
