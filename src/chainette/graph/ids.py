"""Node ids: what a template can read as ``{{ id.field }}`` and a run folder can hold.

Imports nothing of the graph: every node kind checks its id with :func:`check_id`.
"""

from __future__ import annotations

import re

from .._errors import ChainDefinitionError
from ..io.layout import RESERVED_NAMES, is_reserved

__all__ = ["ID_RE", "check_id"]

ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def check_id(node_id: str, what: str) -> str:
    """``node_id`` when it can name a node; else a :class:`ChainDefinitionError` saying why and
    what an id may hold (``what`` names the node as messages do: ``"Step"``, ``"Branch"``)."""
    if not ID_RE.fullmatch(node_id):
        bad = sorted({c for c in node_id if c not in _ID_CHARS}, key=node_id.index)
        if bad:
            problem = f"{', '.join(repr(c) for c in bad)} {'is' if len(bad) == 1 else 'are'} not allowed"
        else:
            problem = "it is empty" if not node_id else "it starts with a digit"
        raise ChainDefinitionError(
            f"{what} id {node_id!r} is not a valid identifier ({problem}). Templates reference it as "
            "{{ id.field }}, so an id may hold only ASCII letters (a-z, A-Z), digits (0-9) and "
            "underscores (_), not starting with a digit (e.g. 'qa_step', 'etape_1')."
        )
    if node_id.lower() == "input":
        raise ChainDefinitionError(
            f"{what} id {node_id!r} is reserved: {{{{ input.field }}}} reads the chain's input record."
        )
    if is_reserved(node_id):
        raise ChainDefinitionError(
            f"{what} id {node_id!r} is reserved: the run folder uses that name for its own files "
            f"(reserved: {', '.join(sorted(RESERVED_NAMES))}, in any case). Choose another id, "
            f"e.g. {node_id + '_step'!r}."
        )
    return node_id
