"""OpenTelemetry spans from the event stream, read back with the SDK's in-memory exporter."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel
from tests.helpers import Answer, Question, echo, qa_step

from chainette import Chain, ChainService, apply, register_engine

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from chainette.integrations.otel import OpenTelemetryMiddleware


class Note(BaseModel):
    note: str


def _note(answer: Answer) -> Note:
    if "boom" in answer.answer:
        raise ValueError("the note cannot be written")
    return Note(note=answer.answer[:5])


def two_nodes() -> Chain:
    register_engine("echo", backend="fake", responder=echo)
    return Chain(
        name="two-nodes",
        steps=[
            qa_step("echo"),
            apply(_note, id="note"),
        ],
    )


@pytest.fixture
def exporter() -> tuple[InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def serve(chain: Chain, provider: TracerProvider, *texts: str) -> None:
    async def main() -> None:
        async with ChainService(chain, middleware=[OpenTelemetryMiddleware(provider)]) as service:
            for i, text in enumerate(texts):
                trace = await service.submit({"text": text}, trace_id=f"t-{i}")
                await trace.done.wait()

    anyio.run(main)


def test_a_served_trace_is_a_span_with_a_child_span_per_node(
    exporter: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    memory, provider = exporter
    serve(two_nodes(), provider, "hello there")

    spans = _by_name(memory.get_finished_spans())
    assert set(spans) == {"chainette.trace", "chainette.node qa", "chainette.node note"}
    root, qa, note = spans["chainette.trace"], spans["chainette.node qa"], spans["chainette.node note"]
    assert root.parent is None
    assert root.attributes is not None and qa.attributes is not None and note.attributes is not None
    assert dict(root.attributes) == {
        "chainette.trace_id": "t-0",
        "chainette.chain": "two-nodes",
        "chainette.outcome": "output",
    }
    for child in (qa, note):
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
        assert child.status.status_code == StatusCode.UNSET
    assert qa.attributes["chainette.node.id"] == "qa"
    assert qa.attributes["chainette.engine"] == "echo"
    assert isinstance(qa.attributes["chainette.tokens"], int) and qa.attributes["chainette.tokens"] > 0
    assert "chainette.engine" not in note.attributes  # a Python node sends no request
    assert qa.start_time is not None and note.start_time is not None and root.end_time is not None
    assert (
        root.start_time is not None and root.start_time <= qa.start_time <= note.start_time <= root.end_time
    )
    assert [e.name for e in root.events] == ["started"]


def test_a_failed_trace_and_the_node_it_failed_in_have_an_error_status(
    exporter: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    memory, provider = exporter
    serve(two_nodes(), provider, "boom", "fine")

    spans = memory.get_finished_spans()
    roots = {
        s.attributes["chainette.trace_id"]: s for s in spans if s.name == "chainette.trace" and s.attributes
    }
    failed, fine = roots["t-0"], roots["t-1"]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description is not None and "the note cannot be written" in failed.status.description
    assert failed.attributes is not None and failed.attributes["chainette.outcome"] == "failed"
    assert failed.attributes["chainette.failed.node"] == "note"
    nodes = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == failed.context.span_id}
    assert nodes["chainette.node note"].status.status_code == StatusCode.ERROR
    assert nodes["chainette.node qa"].status.status_code == StatusCode.UNSET
    assert fine.status.status_code == StatusCode.UNSET


def test_a_batch_run_is_a_span_with_a_child_span_per_node(
    tmp_path: Path, exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    memory, provider = exporter
    result = two_nodes().run(
        [Question(text=t) for t in ("a", "b", "boom")],
        tmp_path / "run",
        middleware=[OpenTelemetryMiddleware(provider)],
    )

    spans = _by_name(memory.get_finished_spans())
    assert set(spans) == {"chainette.run", "chainette.node qa", "chainette.node note"}
    run, qa, note = spans["chainette.run"], spans["chainette.node qa"], spans["chainette.node note"]
    assert run.attributes is not None and qa.attributes is not None and note.attributes is not None
    assert run.parent is None
    assert qa.parent is not None and qa.parent.span_id == run.context.span_id
    assert note.parent is not None and note.parent.span_id == run.context.span_id
    assert run.attributes["chainette.status"] == "completed"
    assert run.attributes["chainette.records_in"] == 3 and run.attributes["chainette.records_out"] == 2
    assert run.attributes["chainette.failures"] == 1
    assert run.attributes["chainette.run_id"] == result.run_id
    assert run.attributes["chainette.tokens.prompt"] == result.metadata["tokens"]["prompt"] > 0
    assert qa.attributes["chainette.engine"] == "echo"
    assert qa.attributes["chainette.records_in"] == 3 and qa.attributes["chainette.requests"] == 3
    assert qa.attributes["chainette.tokens"] > 0 and qa.attributes["chainette.cache_hits"] == 0
    assert note.attributes["chainette.failed"] == 1 and note.status.status_code == StatusCode.ERROR
    assert qa.status.status_code == StatusCode.UNSET


def test_a_rerun_shows_its_cache_hits(
    tmp_path: Path, exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    memory, provider = exporter
    chain = two_nodes()
    chain.run([Question(text="a")], tmp_path / "first")
    chain.run([Question(text="a")], tmp_path / "again", middleware=[OpenTelemetryMiddleware(provider)])
    spans = _by_name(memory.get_finished_spans())
    assert spans["chainette.node qa"].attributes is not None
    assert spans["chainette.node qa"].attributes["chainette.cache_hits"] == 1
    assert spans["chainette.run"].attributes is not None
    assert spans["chainette.run"].attributes["chainette.cache.hits"] == 1


def test_without_opentelemetry_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from chainette import MissingDependencyError

    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import opentelemetry -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'chainette\[otel\]'"):
        OpenTelemetryMiddleware()
