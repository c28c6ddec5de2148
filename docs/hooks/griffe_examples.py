"""Griffe extension for the docs site: the source's ``Example:`` docstring sections read as ``Examples:``.

Google style names the section both ways; griffe parses only ``Examples:`` as doctest code (``Example:``
becomes an admonition whose ``>>>`` lines are Markdown block quotes and whose ``['a', 'b']`` outputs
are read as links). Rewriting the heading here keeps the ~90 docstrings as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExampleSections(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
