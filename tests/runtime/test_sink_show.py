"""``Sink`` (chosen fields of each record to a JSONL / CSV / Parquet file) and ``Show`` (a quick
look at records on stdout or above the live display), on the fake engine."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tests.helpers import Answer, echo, qa_step

from chainette import Chain, ChainDefinitionError, Show, Sink, apply, register_engine
from chainette.runtime.events import Event


@pytest.fixture(autouse=True)
def fake_engine() -> None:
    register_engine("fake", backend="fake", responder=echo)


QUESTIONS = [{"text": f"q{i}"} for i in range(5)]


def test_sink_writes_chosen_fields_in_each_format_and_passes_records_on(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "answers.parquet"
    chain = Chain(
        "qa",
        [
            qa_step(),
            Sink("answers.csv", fields=["answer"]),
            Sink("renamed.jsonl", fields={"reply": "answer", "score": "confidence"}),
            Sink(str(outside), id="outside", project=lambda a: {"answer": a.answer, "len": len(a.answer)}),
        ],
    )
    result = chain.run(QUESTIONS, tmp_path / "run")
    assert sorted(r["qa.answer"] for r in result.flattened()) == [f"re: q{i}" for i in range(5)]
    with (tmp_path / "run" / "answers.csv").open() as fh:
        assert sorted(r["answer"] for r in csv.DictReader(fh)) == [f"re: q{i}" for i in range(5)]
    rows = [json.loads(x) for x in (tmp_path / "run" / "renamed.jsonl").read_text().splitlines()]
    assert sorted(rows, key=lambda r: r["reply"]) == [{"reply": f"re: q{i}", "score": 1.0} for i in range(5)]
    table = pq.read_table(outside).to_pylist()
    assert sorted(r["len"] for r in table) == [6] * 5
    assert result.metadata["nodes"]["sink_answers"]["records_out"] == 5
    # the file is the run's: a resumed run writes it again whole, not twice over
    chain.run(QUESTIONS, tmp_path / "run", resume=True)
    with (tmp_path / "run" / "answers.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 5


def test_an_unknown_field_is_refused_before_any_request(tmp_path: Path) -> None:
    chain = Chain("qa", [qa_step(), Sink("answers.csv", fields=["answr"])])
    with pytest.raises(
        ChainDefinitionError, match=r"field 'answr' is not a field of Answer.*did you mean 'answer'"
    ):
        chain.run(QUESTIONS, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(
        ChainDefinitionError, match=r"show 'show': field 'confidance'.*did you mean 'confidence'"
    ):
        Chain("qa", [qa_step(), Show(["confidance"])]).check().raise_for_errors()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("answers.txt", "must end in"),
        ("out/answers.csv", "file in the run folder"),
        ("metadata.json", "must end in"),
        ("failures.jsonl", "run's own files"),
    ],
)
def test_bad_sink_paths_are_refused(path: str, message: str) -> None:
    with pytest.raises(ChainDefinitionError, match=message):
        Sink(path)


def test_sink_file_is_closed_and_readable_when_the_run_fails(tmp_path: Path) -> None:
    seen: list[str] = []

    def stop(kind: str, data: dict[str, Any]) -> None:
        if kind == "node_progress" and data["node"] == "sink_answers":
            seen.append(kind)
            if len(seen) == 3:
                raise RuntimeError("listener stopped the run")

    chain = Chain("qa", [qa_step(), Sink("answers.parquet", fields=["answer", "confidence"])])
    chain.batch_size = 1
    with pytest.raises(RuntimeError, match="listener stopped"):
        chain.run(QUESTIONS, tmp_path / "run", on_event=stop)
    rows = pq.read_table(tmp_path / "run" / "answers.parquet").to_pylist()  # footer written: closed
    assert 1 <= len(rows) <= 5
    assert json.loads((tmp_path / "run" / "metadata.json").read_text())["status"] == "failed"


def test_projection_with_other_keys_fails_that_record_for_csv(tmp_path: Path) -> None:
    def project(a: Answer) -> dict[str, Any]:
        return {"answer": a.answer} if a.answer != "re: q3" else {"other": 1}

    result = Chain("qa", [qa_step(), Sink("a.csv", project=project)]).run(QUESTIONS, tmp_path / "run")
    failures = list(
        result.failures()
    )  # the first row written fixes the columns (records finish in any order)
    assert failures and all(f["node"] == "sink_a" and "one set of columns" in f["message"] for f in failures)
    with (tmp_path / "run" / "a.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(list(result.flattened())) == 5 - len(failures)


def test_show_prints_chosen_fields_every_nth_up_to_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def double(a: Answer) -> Answer:
        return Answer(answer=a.answer * 2, confidence=a.confidence)

    chain = Chain("qa", [qa_step(), Show(["answer"], every=2, limit=2), apply(double)])
    chain.batch_size = 1
    result = chain.run(QUESTIONS, tmp_path / "run", ordered=True)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[show]")]
    assert len(lines) == 2 and all("answer=re: q" in x for x in lines)
    assert (
        sorted(r["double.answer"] for r in result.flattened())[0] == "re: q0re: q0"
    )  # unchanged values go on


def test_show_goes_to_a_display_that_takes_its_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    got: list[Event] = []

    class Display:
        displays_shown = True

        def __call__(self, event: Event) -> None:
            if event.kind == "show":
                got.append(event)

    Chain("qa", [qa_step(), Show()]).run(QUESTIONS[:2], tmp_path / "run", middleware=[Display()])
    assert len(got) == 2 and "re: q" in got[0].data["text"]
    assert "[show]" not in capsys.readouterr().out


def test_show_under_the_live_display_prints_on_its_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from rich.console import Console

    from chainette.cli.progress import ProgressDisplay

    chain = Chain("qa", [qa_step(), Show(["answer"])])
    screen = io.StringIO()
    display = ProgressDisplay(chain, total=2, console=Console(file=screen, width=200), summary=False)
    try:
        chain.run(QUESTIONS[:2], tmp_path / "run", middleware=[display])
    finally:
        display.stop()
    assert screen.getvalue().count("answer=re: q") == 2
    assert "[show]" not in capsys.readouterr().out
