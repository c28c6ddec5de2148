"""A run writes graph.json, step folders, flattened/, failures.jsonl and metadata.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.helpers import Answer, Question, Summary, Translation, read_jsonl

from chainette import Branch, Chain, RunFolderError, Step, apply, register_engine


def build_chain() -> Chain:
    qa = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="fake", user_prompt="Q: {{ text }}"
    )
    fr = Branch(
        "fr",
        [
            Step(
                id="tr_fr",
                input_model=Answer,
                output_model=Translation,
                engine_name="fake",
                user_prompt="FR: {{ answer }}",
            )
        ],
    ).join("fr")
    es = Branch(
        "es",
        [
            Step(
                id="tr_es",
                input_model=Answer,
                output_model=Translation,
                engine_name="fake",
                user_prompt="ES: {{ answer }}",
            )
        ],
    ).join("es")
    agg = Step(
        id="agg",
        input_model=Answer,
        output_model=Summary,
        engine_name="fake",
        user_prompt="{{ fr.translated }} | {{ es.translated }} | {{ input.text }}",
    )
    return Chain("Translate & Summarise", [qa, [fr, es], agg])


def test_run_writes_every_artefact(run_dir: Path, recording_backend: type) -> None:
    register_engine("fake", backend="recording", api_key="sk-secret-value")
    result = build_chain().run([Question(text=f"q{i}") for i in range(7)], output_dir=run_dir)

    assert result.counts == {"records_in": 7, "records_out": 7, "failures": 0, "filtered": 0}
    graph = json.loads((run_dir / "graph.json").read_text())
    assert [n["id"] for n in graph["nodes"]] == ["qa", "tr_fr", "tr_es", "agg"]
    assert {"from": "qa", "to": "tr_fr"} in graph["edges"] and {"from": "tr_es", "to": "agg"} in graph[
        "edges"
    ]
    qa_node = graph["nodes"][0]
    assert qa_node["output_schema"]["properties"]["answer"]["maxLength"] == 80
    assert graph["engines"]["fake"]["backend"] == "recording"
    for step_id in ("qa", "tr_fr", "tr_es", "agg"):
        rows = read_jsonl(run_dir / step_id)
        assert len(rows) == 7 and all("_id" in r for r in rows)
    flat = read_jsonl(run_dir / "flattened")
    assert len(flat) == 7
    assert {
        "input.text",
        "qa.answer",
        "fr.translated",
        "es.translated",
        "tr_fr.translated",
        "agg.summary",
    } <= set(flat[0])
    assert read_jsonl(run_dir / "failures.jsonl") == []
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "completed" and meta["counts"]["records_out"] == 7
    assert meta["nodes"]["qa"]["requests"] == 7 and meta["tokens"]["by_step"]["qa"]["prompt"] > 0
    assert "pydantic" in meta["versions"] and meta["finished_at"] >= meta["started_at"]


def test_secrets_never_reach_the_run_folder(run_dir: Path, recording_backend: type) -> None:
    register_engine("fake", backend="recording", api_key="sk-secret-value")
    build_chain().run([Question(text="q")], output_dir=run_dir)
    for file in run_dir.rglob("*"):
        if file.is_file():
            assert "sk-secret-value" not in file.read_text()


def test_join_aliases_carry_the_branch_output(run_dir: Path) -> None:
    seen: list[str] = []

    def responder(request):  # type: ignore[no-untyped-def]
        user = request.messages[-1]["content"]
        seen.append(user)
        if user.startswith("Q: "):
            return {"answer": "A-" + user[3:], "confidence": 0.5}
        if user.startswith(("FR: ", "ES: ")):
            return {"translated": user[:2] + "(" + user[4:] + ")"}
        return {"summary": user}

    register_engine("fake", backend="fake", responder=responder)
    build_chain().run([Question(text="x1"), Question(text="x2")], output_dir=run_dir)
    summaries = sorted(r["agg.summary"] for r in read_jsonl(run_dir / "flattened"))
    assert summaries == ["FR(A-x1) | ES(A-x1) | x1", "FR(A-x2) | ES(A-x2) | x2"]


def test_ids_are_stable_across_runs(tmp_path: Path) -> None:
    register_engine("fake", backend="fake")
    inputs = [Question(text=f"q{i}") for i in range(5)]
    a = build_chain().run(inputs, output_dir=tmp_path / "a")
    b = build_chain().run(inputs, output_dir=tmp_path / "b")
    ids = lambda result: sorted((r["_index"], r["_id"]) for r in result.flattened())  # noqa: E731
    assert ids(a) == ids(b)  # rows land as records finish: the same ids at the same input positions
    assert len({r["_id"] for r in a.flattened()}) == 5


def test_existing_output_folder_is_refused_unless_overwrite(run_dir: Path) -> None:
    register_engine("fake", backend="fake")
    build_chain().run([Question(text="q")], output_dir=run_dir)
    (run_dir / "stale.txt").write_text("from the earlier run")
    with pytest.raises(RunFolderError, match="already exists"):
        build_chain().run([Question(text="q")], output_dir=run_dir)
    with pytest.raises(RunFolderError, match=r"entries that no Chainette run wrote: stale\.txt"):
        build_chain().run([Question(text="q")], output_dir=run_dir, overwrite=True)  # not ours to delete
    (run_dir / "stale.txt").unlink()
    build_chain().run([Question(text="q")], output_dir=run_dir, overwrite=True)
    assert (run_dir / "metadata.json").exists()


def test_files_roll_every_max_lines(run_dir: Path) -> None:
    register_engine("fake", backend="fake")
    build_chain().run([Question(text=f"q{i}") for i in range(25)], output_dir=run_dir, max_lines_per_file=10)
    parts = sorted(p.name for p in (run_dir / "qa").iterdir())
    assert parts == ["000.jsonl", "001.jsonl", "002.jsonl"]
    assert len(read_jsonl(run_dir / "qa")) == 25


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_other_output_formats(run_dir: Path, fmt: str) -> None:
    register_engine("fake", backend="fake")
    result = build_chain().run([Question(text=f"q{i}") for i in range(5)], output_dir=run_dir, fmt=fmt)
    assert (run_dir / "qa" / f"000.{fmt}").exists()
    rows = list(result.flattened())
    assert len(rows) == 5 and {r["input.text"] for r in rows} == {f"q{i}" for i in range(5)}


def test_engine_starts_lazily_and_is_released(run_dir: Path, recording_backend: type) -> None:
    events: list[str] = []
    register_engine("fake", backend="recording")
    chain = Chain(
        "lazy",
        [
            apply(lambda q: None, id="drop_all", input_model=Question),
            Step(
                id="qa",
                input_model=Question,
                output_model=Answer,
                engine_name="fake",
                user_prompt="{{ text }}",
            ),
        ],
    )
    chain.run([Question(text="q")], output_dir=run_dir)
    assert recording_backend.instances == []  # no record reached the step: the engine never started

    build_chain().run(
        [Question(text="q")], output_dir=run_dir, overwrite=True, on_event=lambda k, d: events.append(k)
    )
    [engine] = recording_backend.instances  # one engine shared by four steps, branches included
    assert engine.started and engine.closed and engine.calls == 4
    assert events.index("engine_started") < events.index("engine_released") < events.index("run_finished")


def test_progress_events_count_finished_records(run_dir: Path) -> None:
    def responder(request):  # type: ignore[no-untyped-def]
        text = request.messages[-1]["content"]
        return "not json" if text.endswith("bad") else {"answer": "a", "confidence": 1}

    register_engine("fake", backend="fake", responder=responder, max_batch_size=1)
    events: list[dict] = []
    qa = Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name="fake",
        user_prompt="Q: {{ text }}",
        max_reasks=0,
    )
    Chain("c", [qa]).run(
        [Question(text=t) for t in ("ok", "bad", "ok", "ok")],
        output_dir=run_dir,
        on_event=lambda kind, data: events.append(data) if kind == "node_progress" else None,
    )
    done = [e["done"] for e in events]
    assert done == sorted(done) and done[-1] == 4 and events[-1]["failed"] == 1


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    register_engine("fake", backend="fake")
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    with pytest.raises(RunFolderError, match="has no Chainette run marker"):
        build_chain().run([Question(text="q")], output_dir=precious, overwrite=True)
    assert (precious / "chapter1.tex").read_text() == "years of work"


def test_engine_is_released_when_no_pending_step_needs_it(run_dir: Path) -> None:
    register_engine("first", backend="fake")
    register_engine("second", backend="fake", latency=0.01)
    events: list[tuple[str, str]] = []
    a = Step(id="a", input_model=Question, output_model=Answer, engine_name="first", user_prompt="{{ text }}")
    b = Step(
        id="b", input_model=Answer, output_model=Summary, engine_name="second", user_prompt="{{ answer }}"
    )
    Chain("two engines", [a, b], batch_size=2).run(
        [Question(text=f"q{i}") for i in range(10)],
        output_dir=run_dir,
        on_event=lambda kind, data: events.append((kind, data.get("engine") or data.get("node", ""))),
    )
    released_first = events.index(("engine_released", "first"))
    last_progress_b = max(i for i, e in enumerate(events) if e == ("node_progress", "b"))
    # 'first' is released once step a has finished, while step b is still working on 'second'
    assert released_first < last_progress_b < events.index(("engine_released", "second"))
    assert events.count(("engine_started", "first")) == 1 and events.count(("engine_started", "second")) == 1


def test_an_output_path_that_is_a_file_is_named_as_a_file(tmp_path: Path) -> None:
    target = tmp_path / "results.jsonl"
    target.write_text("keep me\n")
    register_engine("fake", backend="fake")
    for options in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(RunFolderError, match=r"results.jsonl' is a file, not a folder") as info:
            build_chain().run([Question(text="q")], output_dir=target, **options)
        assert "not empty" not in str(info.value)
    assert target.read_text() == "keep me\n"
