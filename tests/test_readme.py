"""The README's promises: CI runs its test command verbatim, and its example trains."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks():
  return re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
  blocks = _bash_blocks()
  assert len(blocks) == 2
  main_cmd, test_cmd = blocks
  assert "gradkit.experiments" in main_cmd and "pytest" in test_cmd
  ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
  assert test_cmd in ci_lines


def test_readme_example_trains_the_flax_model():
  code = re.search(r"```python\n(.*?)\n```", README, flags=re.S).group(1)
  namespace: dict = {}
  exec(compile(code, "README example", "exec"), namespace)
  losses = namespace["losses"]
  assert losses[-1] < 0.1 * losses[0]
