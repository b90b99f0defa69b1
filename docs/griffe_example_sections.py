"""Griffe extension for the API pages: read `Example:` as an examples section.

gradkit's docstrings head their doctests `Example:` (Napoleon accepts both the
singular and the plural); griffe's Google parser only knows `Examples:` and
would render the singular as an admonition of plain Markdown, so the `>>>`
lines became block quotes. Only the docs build loads this file
(`mkdocs.yml`, mkdocstrings' python handler `extensions`).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
  """Rename `Example:` section headers to `Examples:` before parsing."""

  def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
    if obj.docstring is not None:
      obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
