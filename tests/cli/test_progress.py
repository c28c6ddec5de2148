"""The live progress display and the JSON event log, fed real and synthetic run events."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from rich.console import Console

from chainette import Chain, Event, Step, apply, register_engine
from chainette.cli.progress import JsonEventLog, ProgressDisplay, print_run_summary


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


def keep(answer: Answer) -> Answer:
    return answer


def make_chain() -> Chain:
    register_engine("fake", backend="fake")
    qa = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="fake", user_prompt="{{ text }}"
    )
    return Chain(name="progress demo", steps=[qa, apply(keep)], batch_size=4)


def file_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=120), buffer


def feed(display: ProgressDisplay, *, total_events: int, failures: int = 0) -> None:
    display(
        "run_started",
        {"chain": "progress demo", "run_id": "x", "output_dir": "runs/x", "nodes": ["qa", "keep"]},
    )
    for done in range(1, total_events + 1):
        display("node_progress", {"node": "qa", "done": done, "failed": min(done, failures)})
    for i in range(failures):
        display("record_failed", {"node": "qa", "record": f"r{i}", "message": f"bad output number {i}"})
    display("node_progress", {"node": "keep", "done": total_events - failures, "failed": 0})
    counts = {
        "records_in": total_events,
        "records_out": total_events - failures,
        "failures": failures,
        "filtered": 0,
    }
    display("run_finished", {"status": "completed", "output_dir": "runs/x", "counts": counts})


def test_bars_show_done_total_and_failures() -> None:
    console, buffer = file_console()
    display = ProgressDisplay(make_chain(), total=10, console=console)

    feed(display, total_events=10, failures=2)

    out = buffer.getvalue()
    qa_line = next(line for line in out.splitlines() if line.startswith("qa "))
    assert "10/10" in qa_line and "2 failed" in qa_line
    keep_line = next(line for line in out.splitlines() if line.startswith("keep "))
    assert "8/8" in keep_line and "failed" not in keep_line  # net of the 2 that failed upstream
    assert "✗ qa: bad output number 0" in out
    assert "completed: 10 in, 8 out, 2 failed, 0 filtered → runs/x" in out
    assert not display.active


def test_bars_show_answers_from_the_ledger(tmp_path: Path) -> None:
    chain = make_chain()
    questions = [Question(text=f"q{i % 3}") for i in range(6)]  # 3 distinct prompts, each twice
    console, buffer = file_console()
    chain.run(questions, tmp_path / "a", on_event=ProgressDisplay(chain, total=6, console=console))
    qa_line = next(line for line in buffer.getvalue().splitlines() if line.startswith("qa "))
    assert "6/6" in qa_line and "3 cached" in qa_line  # the duplicates
    console, buffer = file_console()
    chain.run(questions, tmp_path / "b", on_event=ProgressDisplay(chain, total=6, console=console))
    qa_line = next(line for line in buffer.getvalue().splitlines() if line.startswith("qa "))
    assert "6 cached" in qa_line  # the rerun: everything from the ledger
    keep_line = next(line for line in buffer.getvalue().splitlines() if line.startswith("keep "))
    assert "cached" not in keep_line


def test_without_a_terminal_the_final_state_is_printed_once_not_per_event() -> None:
    console, buffer = file_console()
    display = ProgressDisplay(make_chain(), total=5000, console=console)

    feed(display, total_events=5000)

    assert sum(1 for line in buffer.getvalue().splitlines() if line.startswith("qa ")) == 1


def test_only_the_first_failures_are_printed_in_full() -> None:
    console, buffer = file_console()
    display = ProgressDisplay(make_chain(), total=20, console=console)

    feed(display, total_events=20, failures=10)

    out = buffer.getvalue()
    assert out.count("bad output number") == 3
    assert "further failures are counted" in out


def test_fan_out_beyond_the_input_total_shows_the_count_alone() -> None:
    console, buffer = file_console()
    display = ProgressDisplay(make_chain(), total=3, console=console, summary=False)

    display("run_started", {"chain": "c", "output_dir": "o", "nodes": ["qa", "keep"]})
    display("node_progress", {"node": "keep", "done": 7, "failed": 0})
    display("run_finished", {"status": "completed", "output_dir": "o", "counts": {}})

    keep_line = next(line for line in buffer.getvalue().splitlines() if line.startswith("keep "))
    assert " 7 " in keep_line and "7/" not in keep_line and "/3" not in keep_line


def test_unknown_total_shows_counts_and_stop_is_safe_twice() -> None:
    console, buffer = file_console()
    display = ProgressDisplay(make_chain(), console=console, summary=False)

    feed(display, total_events=4)
    display.stop()

    qa_line = next(line for line in buffer.getvalue().splitlines() if line.startswith("qa "))
    assert " 4 " in qa_line and "4/" not in qa_line


def test_chain_run_with_progress_uses_the_display(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain = make_chain()

    chain.run([Question(text=f"q{i}") for i in range(6)], output_dir=tmp_path / "run", progress=True)

    err = capsys.readouterr().err
    assert "Running progress demo" in err
    assert any(line.startswith("qa ") and "6" in line for line in err.splitlines())
    assert "completed: 6 in, 6 out, 0 failed" in err


def test_json_event_log_writes_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    log = JsonEventLog()

    log("node_progress", {"node": "qa", "done": 3, "failed": 0})
    log("run_finished", {"status": "completed", "output_dir": Path("runs/x"), "counts": {"records_in": 3}})

    lines = capsys.readouterr().err.splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "node_progress" and first["done"] == 3 and isinstance(first["ts"], float)
    assert second["output_dir"] == "runs/x"


def test_json_event_log_as_middleware_writes_the_same_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """As middleware of the event stream it prints the event's own time, and a trace's id."""
    log = JsonEventLog()

    log(Event("node_progress", {"node": "qa", "done": 3}, at=1718000000.1234))
    log(Event("node_finished", {"node": "qa", "tokens": 12}, "t-1", at=1718000001.0))

    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first == {"ts": 1718000000.123, "event": "node_progress", "node": "qa", "done": 3}
    assert second == {
        "ts": 1718000001.0,
        "event": "node_finished",
        "trace_id": "t-1",
        "node": "qa",
        "tokens": 12,
    }


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0.42, "0.4s"), (59.9, "59.9s"), (245, "4m05s"), (3725, "1h02m")]
)
def test_summary_shows_counts_tokens_duration_and_failures(seconds: float, shown: str) -> None:
    console, buffer = file_console()
    meta = {
        "counts": {"records_in": 1200, "records_out": 1190, "failures": 10, "filtered": 0},
        "tokens": {"prompt": 51234, "completion": 800, "by_step": {"qa": {}}},
        "duration_s": seconds,
    }

    print_run_summary(console, meta, Path("runs/x"))

    out = buffer.getvalue()
    assert f"Done in {shown}: 1,200 records in, 1,190 out, 10 failed, 0 filtered" in out
    assert "tokens: 51,234 prompt + 800 completion" in out
    assert "10 record(s) failed; reasons in runs/x/failures.jsonl" in out


def test_brief_summary_only_mentions_failures() -> None:
    console, buffer = file_console()
    meta = {"counts": {"records_in": 3, "records_out": 3, "failures": 0, "filtered": 0}, "duration_s": 1.0}

    print_run_summary(console, meta, Path("runs/x"), brief=True)

    assert buffer.getvalue() == ""


def nested_chain() -> Chain:
    from chainette import Branch, Router

    register_engine("fake", backend="fake")

    def shout(a: Answer) -> Answer:
        return Answer(answer=a.answer.upper())

    def hush(a: Answer) -> Answer:
        return Answer(answer=a.answer.lower())

    qa = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="fake", user_prompt="{{ text }}"
    )
    router = Router("tone", {"loud": apply(shout), "quiet": apply(hush)}, by=lambda a: "loud")
    side = Branch("side", [apply(keep, id="kept")]).join("side_out")
    return Chain("nested", [qa, router, [side]])


def test_display_rows_follow_the_chain_structure(tmp_path: Path) -> None:
    from chainette.cli.progress import structure

    rows = structure(nested_chain())
    assert rows == [
        ("qa", 0, "qa"),
        ("tone", 0, "router tone"),
        (None, 1, "route loud"),
        ("shout", 2, "shout"),
        (None, 1, "route quiet"),
        ("hush", 2, "hush"),
        (None, 0, "branch side"),
        ("kept", 1, "kept"),
    ]
    console, buffer = file_console()
    chain = nested_chain()
    chain.run(
        [Question(text=f"q{k}") for k in range(3)],
        tmp_path / "run",
        on_event=ProgressDisplay(chain, total=3, console=console),
    )
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    by_label = {
        line.split()[0]
        + (" " + line.split()[1] if line.split()[0] in ("router", "route", "branch") else ""): line
        for line in lines
    }
    assert "3/3" in by_label["qa"] and "3/3" in by_label["router tone"]
    assert (
        lines.index(by_label["route loud"])
        < lines.index(by_label["shout"])
        < lines.index(by_label["route quiet"])
    )
    assert by_label["shout"].startswith("    shout")  # nested two levels: indented
    assert "3" in by_label["shout"] and "/3" not in by_label["shout"]  # a share of the records: count alone
    assert "━" not in by_label["route loud"]  # a heading has no bar


def test_detail_from_events_is_shown() -> None:
    console, buffer = file_console()
    display = ProgressDisplay(nested_chain(), total=2, console=console, summary=False)
    display("run_started", {"chain": "nested", "run_id": "x", "output_dir": "o", "nodes": []})
    display("node_progress", {"node": "tone", "done": 2, "failed": 0, "detail": "pass 3 of 5"})
    display("run_finished", {"status": "completed", "output_dir": "o", "counts": {}})
    assert "pass 3 of 5" in buffer.getvalue()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rows_and_footer_show_rate_eta_in_flight_retries_reasks_and_tokens() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    clock = Clock()
    display = ProgressDisplay(make_chain(), total=100, console=console, summary=False, clock=clock)
    display("run_started", {"chain": "c", "output_dir": "o", "nodes": ["qa", "keep"]})
    for second in range(5):  # 10 records a second; 64 entered, 10 done at the last event
        clock.now += 1.0
        done = 10 * (second + 1)
        tokens = {"prompt_tokens": 20 * done, "completion_tokens": 10 * done}
        display("node_progress", {"node": "qa", "done": done, "failed": 0, "in": done + 14, **tokens})
    display(
        "retry", {"node": "qa", "record": "r1", "index": 1, "attempt": 1, "error": "timed out", "delay_s": 1}
    )
    display("timeout", {"node": "qa", "record": "r1", "index": 1, "attempt": 1, "timeout_s": 2.0})
    for k in range(2):
        display(
            "reask", {"node": "qa", "record": f"r{k}", "index": k, "attempt": 1, "reask": 1, "error": "bad"}
        )
    display("node_progress", {"node": "keep", "done": 40, "failed": 0, "in": 40})
    display("run_finished", {"status": "completed", "output_dir": "o", "counts": {}})

    lines = buffer.getvalue().splitlines()
    qa_line = next(line for line in lines if line.startswith("qa "))
    assert "50/100" in qa_line and "10.0 rec/s" in qa_line and "300 tok/s" in qa_line
    assert "eta 0:00:05" in qa_line  # 50 left at 10 a second
    assert "14 in flight" in qa_line and "1 retry (1 timed out)" in qa_line
    assert "2 re-asks" in qa_line
    run_line = next(line for line in lines if line.startswith("run "))
    assert "14 in flight" in run_line and "300 tok/s" in run_line and "2 re-asks" in run_line


def test_a_loop_shows_its_pass() -> None:
    console, buffer = file_console()
    display = ProgressDisplay(make_chain(), total=4, console=console, summary=False)
    display("run_started", {"chain": "c", "output_dir": "o", "nodes": ["qa", "keep"]})
    display("loop_pass", {"node": "qa", "iteration": 2, "records": 3})
    display("node_progress", {"node": "qa", "done": 1, "failed": 0, "in": 4})
    display("run_finished", {"status": "completed", "output_dir": "o", "counts": {}})
    qa_line = next(line for line in buffer.getvalue().splitlines() if line.startswith("qa "))
    assert "pass 3: 3 looping" in qa_line


def test_a_later_steps_total_is_net_of_records_that_failed_before_it(tmp_path: Path) -> None:
    def fail_odd(request: Any) -> Any:
        text = request.messages[-1]["content"]
        return "not json" if int(text[1:]) % 2 else {"answer": text}

    register_engine("fake", backend="fake", responder=fail_odd)
    qa = Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name="fake",
        user_prompt="{{ text }}",
        max_reasks=0,
    )
    chain = Chain(name="net", steps=[qa, apply(keep)], batch_size=4)
    console, buffer = file_console()
    chain.run(
        [Question(text=f"q{i}") for i in range(10)],
        tmp_path / "run",
        middleware=[ProgressDisplay(chain, total=10, console=console)],
    )
    lines = buffer.getvalue().splitlines()
    qa_line = next(line for line in lines if line.startswith("qa "))
    keep_line = next(line for line in lines if line.startswith("keep "))
    assert "10/10" in qa_line and "5 failed" in qa_line
    assert "5/5" in keep_line and "/10" not in keep_line
