"""Command line: `python -m gradkit.experiments --config=<config file> [--workdir=DIR]`.

Config fields are overridden as `--config.steps=50 --config.optimizers=lion,adamw`.
Without --workdir, results go to ./results/<config file name>. `--list` prints
the config files, workloads and registered optimizers, and exits.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

import gradkit
from gradkit.experiments import train

CONFIG_DIR = Path(__file__).parent / "configs"

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(CONFIG_DIR / "digits_mlp.py"),
    "Path to an ml_collections config file (defines get_config()).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder; default ./results/<config file name>.")
_LIST = flags.DEFINE_bool(
    "list", False, "List config files, workloads and registered optimizers, then exit.")


def _run_size(path: Path) -> str:
  """How much a config trains: candidates, seeds, steps and the learning-rate sweep."""
  try:
    spec = importlib.util.spec_from_file_location(f"_gradkit_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception:  # a config that does not load still gets listed
    return ""
  names = config.get("solvers", None) or config.get("optimizers", None) or ()
  if isinstance(names, str):
    names = [n for n in names.split(",") if n]
  kind = "solvers" if "solvers" in config else "optimizers"
  seeds, steps = len(config.get("seeds", ())), config.get("steps", 0)
  text = f"{len(names)} {kind} x {seeds} seeds x {steps} steps"
  tuning = config.get("tuning", None)
  factors = tuple(tuning.get("factors", ())) if tuning is not None else ()
  if len(factors) > 1:
    sweep_steps = tuning.get("steps", 0) or steps
    text += f", after a {len(factors)}-rate sweep of {sweep_steps} steps each"
  return text


def listing() -> str:
  """The config files (first docstring line and run size), workloads and optimizers."""
  lines = [f"Config files ({CONFIG_DIR}):"]
  for path in sorted(CONFIG_DIR.glob("*.py")):
    if path.name == "__init__.py":
      continue
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    lines.append(f"  {path.stem:<24} {doc.splitlines()[0] if doc else ''}")
    size = _run_size(path)
    if size:
      lines.append(f"  {'':<24} ({size})")
  lines.append(f"Workloads: {', '.join(train.COMPARISONS)}")
  lines.append(f"Registered optimizers ({len(gradkit.names())}): {', '.join(gradkit.names())}")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _LIST.value:
    print(listing())
    return
  workdir = Path(_WORKDIR.value or Path("results") / Path(
      config_flags.get_config_filename(flags.FLAGS["config"])).stem)
  train.train_and_evaluate(_CONFIG.value, workdir)
  summary = (workdir / "results.md").read_text().split("\n\nEnvironment:")[0]
  print(f"\n{summary.removeprefix('# Results').strip()}\n\nWritten to {workdir.resolve()}")

if __name__ == "__main__":
  app.run(main)
