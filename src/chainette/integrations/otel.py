"""OpenTelemetry spans from the event stream: ``pip install 'chainette[otel]'``.

:class:`OpenTelemetryMiddleware` turns events into spans:

- a **served trace** (``ChainService(middleware=[...])``) is one ``chainette.trace`` span, from
  submission to its end, with one child span per node (``chainette.node <id>``: engine, tokens,
  duration; status error where the record failed). One span per record: a service sees records
  one at a time.
- a **batch run** (``chain.run(..., middleware=[...])``) is one ``chainette.run`` span with one
  child span per node, made when the run finishes from its ``metadata.json`` (records in and out,
  failures, tokens, cache hits, engine); a node's span lasts from its first progress event to its
  last. There are no per-record spans in a batch run: its records move in chunks through
  overlapping stages, and a run of millions of rows would make millions of spans.

Example:
    >>> from opentelemetry.sdk.trace import TracerProvider            # doctest: +SKIP
    >>> otel = OpenTelemetryMiddleware(TracerProvider())               # doctest: +SKIP
    >>> chain.run("inputs.jsonl", "runs/x", middleware=[otel])         # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import MissingDependencyError
from ..io.layout import METADATA
from ..runtime.events import Event
from ..runtime.service import TERMINAL

__all__ = ["OpenTelemetryMiddleware"]


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _attrs(values: dict[str, Any]) -> dict[str, Any]:
    """Span attributes: OpenTelemetry takes str, bool, int and float, never None."""
    return {k: v for k, v in values.items() if isinstance(v, (str, bool, int, float))}


@dataclass
class _Trace:
    span: Any
    nodes: dict[str, Any] = field(default_factory=dict)
    """Node spans started and not yet ended."""
    failed_node: tuple[Any, int] | None = None
    """The node span where the record failed, kept open for the reason (the ``failed`` event)."""


@dataclass
class _Run:
    span: Any
    started: float
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)


class OpenTelemetryMiddleware:
    """Middleware that records served traces and batch runs as OpenTelemetry spans.

    Args:
        tracer_provider: Where spans go (default: the global provider,
            ``opentelemetry.trace.get_tracer_provider()``).

    Raises:
        MissingDependencyError: ``opentelemetry`` is not installed.

    Example:
        >>> async with ChainService(chain, middleware=[OpenTelemetryMiddleware()]) as service:  # doctest: +SKIP
        ...     ...
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise MissingDependencyError(
                "OpenTelemetryMiddleware needs OpenTelemetry: pip install 'chainette[otel]'."
            ) from exc
        self._api = trace
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer("chainette")
        self._traces: dict[str, _Trace] = {}
        self._runs: dict[str, _Run] = {}
        self._current_run: _Run | None = None

    def __call__(self, event: Event) -> None:
        if event.trace_id is not None:
            self._on_trace_event(event.trace_id, event)
        elif event.kind == "run_started":
            self._on_run_started(event)
        elif event.kind == "node_progress":
            run = self._current_run
            if run is not None:
                node = str(event.data.get("node"))
                run.first.setdefault(node, event.at)
                run.last[node] = event.at
        elif event.kind == "run_finished":
            self._on_run_finished(event)

    # ---------------------------------------------------------------- served traces

    def _on_trace_event(self, trace_id: str, event: Event) -> None:
        kind, data = event.kind, event.data
        if kind == "queued":
            span = self._tracer.start_span(
                "chainette.trace",
                start_time=_ns(event.at),
                attributes=_attrs({"chainette.trace_id": trace_id, "chainette.chain": data.get("chain")}),
            )
            self._traces[trace_id] = _Trace(span)
            return
        state = self._traces.get(trace_id)
        if state is None:  # a trace submitted before this middleware saw it, or a runtime event after its end
            return
        if kind == "started":
            state.span.add_event("started", timestamp=_ns(event.at))
        elif kind == "node_started":
            node = str(data["node"])
            state.nodes[node] = self._tracer.start_span(
                f"chainette.node {node}",
                context=self._api.set_span_in_context(state.span),
                start_time=_ns(event.at),
                attributes={"chainette.node.id": node},
            )
        elif kind == "node_finished":
            self._end_node(state, event)
        elif kind in TERMINAL:
            self._end_trace(trace_id, state, event)

    def _end_node(self, state: _Trace, event: Event) -> None:
        data = event.data
        span = state.nodes.pop(str(data["node"]), None)
        if span is None:
            return
        span.set_attributes(
            _attrs(
                {
                    "chainette.engine": data.get("engine"),
                    "chainette.tokens": data.get("tokens"),
                    "chainette.duration_s": data.get("duration_s"),
                }
            )
        )
        if data.get("failed"):
            state.failed_node = (span, _ns(event.at))  # ended with the reason, which comes next
        else:
            span.end(end_time=_ns(event.at))

    def _end_trace(self, trace_id: str, state: _Trace, event: Event) -> None:
        from opentelemetry.trace import Status, StatusCode

        del self._traces[trace_id]
        kind, data, end = event.kind, event.data, _ns(event.at)
        error = Status(StatusCode.ERROR, str(data.get("message", ""))) if kind == "failed" else None
        if state.failed_node is not None:
            span, ended = state.failed_node
            span.set_status(error or Status(StatusCode.ERROR))
            span.end(end_time=ended)
        for span in state.nodes.values():  # still running: the deadline, a cancel, an error
            if error is not None:
                span.set_status(error)
            span.set_attribute("chainette.outcome", kind)
            span.end(end_time=end)
        span = state.span
        span.set_attributes(
            _attrs(
                {
                    "chainette.outcome": kind,
                    "chainette.failed.node": data.get("node") if kind == "failed" else None,
                    "chainette.failed.error_type": data.get("error_type"),
                    "chainette.cancelled.reason": data.get("reason"),
                }
            )
        )
        if error is not None:
            span.set_status(error)
        span.end(end_time=end)

    # ---------------------------------------------------------------- batch runs

    def _on_run_started(self, event: Event) -> None:
        data = event.data
        span = self._tracer.start_span(
            "chainette.run",
            start_time=_ns(event.at),
            attributes=_attrs(
                {
                    "chainette.chain": data.get("chain"),
                    "chainette.run_id": data.get("run_id"),
                    "chainette.output_dir": data.get("output_dir"),
                }
            ),
        )
        # node progress carries no run id: it goes to the run started last (one batch run at a time)
        self._runs[str(data.get("output_dir"))] = self._current_run = _Run(span, event.at)

    def _on_run_finished(self, event: Event) -> None:
        from opentelemetry.trace import Status, StatusCode

        folder = str(event.data.get("output_dir"))
        run = self._runs.pop(folder, None)
        if run is None:  # a service's recording, or a run started before this middleware saw it
            return
        if self._current_run is run:
            self._current_run = None
        meta = _read_metadata(Path(folder))
        end = _ns(event.at)
        context = self._api.set_span_in_context(run.span)
        engines = {k: v.get("engine") for k, v in ((meta.get("cost") or {}).get("by_step") or {}).items()}
        for node, stats in (meta.get("nodes") or {}).items():
            span = self._tracer.start_span(
                f"chainette.node {node}",
                context=context,
                start_time=_ns(run.first.get(node, run.started)),
                attributes=_attrs(
                    {
                        "chainette.node.id": node,
                        "chainette.engine": engines.get(node),
                        **{f"chainette.{k}": v for k, v in stats.items()},
                        "chainette.tokens": stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0),
                    }
                ),
            )
            if stats.get("failed"):
                span.set_status(Status(StatusCode.ERROR, f"{stats['failed']} record(s) failed"))
            span.end(end_time=_ns(run.last[node]) if node in run.last else end)
        counts = event.data.get("counts") or {}
        tokens = meta.get("tokens") or {}
        cache = meta.get("cache") or {}
        status = str(event.data.get("status"))
        run.span.set_attributes(
            _attrs(
                {
                    "chainette.status": status,
                    **{f"chainette.{k}": v for k, v in counts.items()},
                    "chainette.tokens.prompt": tokens.get("prompt"),
                    "chainette.tokens.completion": tokens.get("completion"),
                    "chainette.cache.hits": cache.get("hits"),
                    "chainette.cache.deduped": cache.get("deduped"),
                    "chainette.requests": cache.get("sent"),
                    "chainette.cost.usd": (meta.get("cost") or {}).get("usd"),
                    "chainette.duration_s": meta.get("duration_s"),
                }
            )
        )
        if status != "completed":
            run.span.set_status(Status(StatusCode.ERROR, str(meta.get("error") or status)))
        run.span.end(end_time=end)


def _read_metadata(folder: Path) -> dict[str, Any]:
    """The run's final ``metadata.json`` (written, atomically, before ``run_finished``); ``{}`` if
    it could not be written."""
    try:
        meta: dict[str, Any] = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta
