"""Result files of an experiment run: tables, loss-curve plot, environment."""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax
import jax
import numpy as np
import optax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import gradkit


class Column(NamedTuple):
  key: str  # CSV header and row key
  label: str  # Markdown header
  fmt: str  # Markdown cell format


COLUMNS = (
    Column("optimizer", "optimizer", "{}"),
    Column("learning_rate", "learning rate", "{}"),
    Column("final_train_loss", "final train loss", "{:.4f}"),
    Column("test_loss", "test loss", "{:.4f}"),
    Column("test_accuracy", "test accuracy", "{:.4f}"),
    Column("ms_per_step", "time/step (ms)", "{:.3f}"),
    Column("compile_s", "compile (s)", "{:.2f}"),
    Column("state_bytes", "state bytes", "{:,}"),
)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """A Markdown table of `rows` with the COLUMNS labels, numbers right-aligned."""
  lines = [
      "| " + " | ".join(c.label for c in COLUMNS) + " |",
      "| " + " | ".join("---" if c.key == "optimizer" else "---:" for c in COLUMNS) + " |",
  ]
  for row in rows:
    lines.append("| " + " | ".join(c.fmt.format(row[c.key]) for c in COLUMNS) + " |")
  return "\n".join(lines)


def environment() -> dict[str, Any]:
  """Versions and the device the numbers were measured on."""
  device = jax.devices()[0]
  return {
      "gradkit": gradkit.__version__,
      "jax": jax.__version__,
      "optax": optax.__version__,
      "flax": flax.__version__,
      "numpy": np.__version__,
      "python": platform.python_version(),
      "platform": device.platform,
      "device": device.device_kind,
      "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "machine": platform.platform(),
  }


def write_tables(
    rows: Sequence[Mapping[str, Any]], workdir: Path, env: Mapping[str, Any]
) -> None:
  """Writes results.csv (full precision) and results.md (table + environment)."""
  with open(workdir / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=[c.key for c in COLUMNS])
    writer.writeheader()
    writer.writerows({c.key: row[c.key] for c in COLUMNS} for row in rows)
  summary = ", ".join(f"{key} {value}" for key, value in env.items())
  (workdir / "results.md").write_text(
      f"# Results\n\n{markdown_table(rows)}\n\nEnvironment: {summary}.\n")


def write_json(obj: Any, path: Path) -> None:
  path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def plot_loss_curves(
    curves: Mapping[str, np.ndarray], path: Path, *, smoothing: int = 1
) -> None:
  """Saves training loss vs step, one line per optimizer, log-scaled loss axis.

  Each curve is a trailing moving average over `smoothing` steps (the first
  steps average what is available), since minibatch losses are noisy.
  """
  fig = Figure(figsize=(7, 4.5), layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for name, losses in curves.items():
    cumulative = np.cumsum(np.insert(np.asarray(losses, np.float64), 0, 0.0))
    steps = np.arange(1, len(losses) + 1)
    window = np.minimum(steps, max(smoothing, 1))
    ax.plot(steps, (cumulative[steps] - cumulative[steps - window]) / window, label=name)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ylabel = "train loss (minibatch)"
  if smoothing > 1:
    ylabel += f", {smoothing}-step moving average"
  ax.set_ylabel(ylabel)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.savefig(path, dpi=120)
