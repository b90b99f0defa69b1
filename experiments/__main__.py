"""Command line: `python -m gradkit.experiments --config=<config file> [--workdir=DIR]`.

Config fields are overridden as `--config.steps=50 --config.optimizers=lion,adamw`.
Without --workdir, results go to ./results/<config file name>.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from gradkit.experiments import report, train

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(Path(__file__).parent / "configs" / "digits_mlp.py"),
    "Path to an ml_collections config file (defines get_config()).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder; default ./results/<config file name>.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value or str(
      Path("results") / Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem)
  rows = train.train_and_evaluate(_CONFIG.value, workdir)
  print(report.markdown_table(rows))
  logging.info("results written to %s", Path(workdir).resolve())


if __name__ == "__main__":
  app.run(main)
