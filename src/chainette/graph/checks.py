"""Static checks of a chain, run before any request is sent (and by ``chainette inspect``).

Errors: a template reads a name or field that will not exist, a node's declared input cannot be
built from what reaches it, a step names an unregistered engine. Warnings: what cannot be
checked (an ``apply`` without types) or is probably a mistake (a field shadowing a step id).

Each node checks itself (:meth:`Node.check`) with the :class:`Checker`'s helpers
(``graph.contract``); :func:`check_chain` walks a chain's nodes and returns the report.
"""

from __future__ import annotations

from collections.abc import Callable

from ..engines.registry import is_registered
from .contract import ChainBase, Checker, Scope
from .issues import CheckReport, Issue
from .router import Router

__all__ = ["CheckReport", "Checker", "Issue", "Scope", "check_chain"]


def check_chain(
    chain: ChainBase, *, check_engines: bool = True, engine_known: Callable[[str], bool] | None = None
) -> CheckReport:
    """Check ``chain`` statically; see the module docstring for what is checked."""
    checker = Checker(chain, check_engines, engine_known or is_registered)
    first = chain.items[0]
    if isinstance(first, Router) and first.by is None and len(chain.input_variants) > 1:
        first.check_variants(checker, "the chain's input", chain.input_variants, is_input=True)
    checker.walk(chain.items, {"input": chain.input_model}, chain.input_model, prev=None)
    return checker.report
