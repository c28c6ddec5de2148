"""What ``metadata.json`` and ``graph.json`` say about a run: the graph with its engines, the
counts, per-node stats and tokens, library versions. A part of ``executor.py``, moved as is."""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata as _importlib_metadata
from typing import Any

from ..engines.broker import EngineBroker
from ..engines.registry import get_engine_config, replaced_by_server, replaced_message
from ..engines.secrets import scrub_strings
from ..graph.chain import ChainGraph
from ..graph.issues import CheckReport
from ..io.writer import RunWriter
from .context import RunContext

__all__: list[str] = []


def _graph(chain: ChainGraph) -> dict[str, Any]:
    """``graph.json``: the chain's graph and its engines, with credentials masked."""
    graph = chain.describe()
    graph["engines"] = {
        name: {"backend": c.backend, "model": c.model, "options": c.public_options()}
        for name in chain.engine_names()
        for c in [get_engine_config(name)]
    }
    scrubbed: dict[str, Any] = scrub_strings(graph)
    return scrubbed


StartNotes = tuple[list[str], dict[str, dict[str, Any]]]
"""What a run says at its start, and the engines a warmup server replaces (:func:`_start_warnings`)."""


def _start_warnings(chain: ChainGraph, report: CheckReport) -> StartNotes:
    """What a run says at its start (logged, and kept in ``metadata.json``'s ``warnings``): each
    engine registered in code that a ``chainette warmup`` server replaces, then the check's
    warnings. Also the replaced engines, for ``metadata.json``'s ``engines.<name>.replaced_by_server``."""
    replaced = {n: r for n in chain.engine_names() if (r := replaced_by_server(n)) is not None}
    messages = [replaced_message(n, r) for n, r in replaced.items()]
    messages += [
        f"{issue.node_id}: {issue.message}" if issue.node_id else issue.message for issue in report.warnings
    ]
    return messages, replaced


def _keep_start_warnings(meta: dict[str, Any], notes: StartNotes) -> None:
    """Keep :func:`_start_warnings`' notes in ``metadata.json``: ``warnings`` and each replaced
    engine's ``engines.<name>.replaced_by_server``."""
    warnings, replaced = notes
    if warnings:
        meta["warnings"] = list(warnings)
    if replaced:
        meta["engines"] = {name: {"replaced_by_server": info} for name, info in replaced.items()}


def _summary(
    ctx: RunContext, counts: dict[str, int], writer: RunWriter, broker: EngineBroker
) -> dict[str, Any]:
    nodes = {k: v.as_dict() for k, v in ctx.stats.items()}
    tokens = {
        k: {"prompt": v.prompt_tokens, "completion": v.completion_tokens}
        for k, v in ctx.stats.items()
        if v.requests
    }
    return {
        "counts": {
            "records_in": counts["records_in"],
            "records_out": writer.flattened,
            "failures": writer.failures,
            "filtered": sum(v.filtered for v in ctx.stats.values()),
        },
        "nodes": nodes,
        "tokens": {
            "prompt": sum(t["prompt"] for t in tokens.values()),
            "completion": sum(t["completion"] for t in tokens.values()),
            "by_step": tokens,
        },
        "engines": broker.described,
    }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("chainette", "pydantic", "anyio", "jinja2", "llama-cpp-python"):
        try:
            out[dist] = _importlib_metadata.version(dist)
        except _importlib_metadata.PackageNotFoundError:
            continue
    return out


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).isoformat()
