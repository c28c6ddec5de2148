"""The object a JSON answer describes so far, while it is still arriving (for chunk events)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["partial_json"]

_MISSING = object()


def partial_json(text: str) -> Any:
    """What ``text``, the start of a JSON document, holds so far; None until something parses.

    Open strings, arrays and objects are closed; a dangling ``,``, ``:`` or a key without its
    value is dropped, so ``'{"answer": "Par'`` gives ``{"answer": "Par"}`` and ``'{"a": 1, "b'``
    gives ``{"a": 1}``. Numbers and literals still being written (``tr``, ``-``) are left out.

    Example:
        >>> partial_json('{"answer": "Paris", "tags": ["a", "b')
        {'answer': 'Paris', 'tags': ['a', 'b']}
    """
    body = text.strip()
    if not body or body[0] not in "[{":
        return None
    for cut in range(len(body), max(0, len(body) - 64), -1):  # a few characters back at most
        value = _close(body[:cut])
        if value is not _MISSING:
            return value
    return None


def _close(text: str) -> Any:
    """``text`` with its open string, arrays and objects closed, parsed; ``_MISSING`` if it does not parse."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append("]" if char == "[" else "}")
        elif char in "]}":
            if not stack:
                return _MISSING
            stack.pop()
    if escaped:
        return _MISSING
    closed = text + ('"' if in_string else "")
    stripped = closed.rstrip()
    if stripped.endswith((",", ":")):
        return _MISSING  # a value or key still to come: a shorter cut reads the same
    try:
        return json.loads(closed + "".join(reversed(stack)), strict=False)
    except ValueError:
        return _MISSING
