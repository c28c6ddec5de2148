"""Per-case figures of an experiment (timeline, duration, tokens, cost) and the runtime's record
trace they come from: on for experiments, off (and absent) for ordinary runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tests.experiments.shared import CASES, CalcConfig, build_chain

from chainette import Chain, Experiment, Step, exact, llm_judge, numeric, register_engine, set_price
from chainette.runtime.record_trace import MAX_SPANS, RecordTrace


def chunked(config: CalcConfig) -> Chain:
    chain = build_chain(config)
    chain.batch_size = 2  # add+mul in one chunk, off+boom in the next
    return chain


def test_each_case_records_its_tokens_cost_and_a_timeline_of_its_own(
    calc_engine: str, tmp_path: Path
) -> None:
    set_price("calc", prompt=1_000_000.0, completion=2_000_000.0)  # $1 / $2 per token: easy sums
    try:
        Experiment("calc", chunked, CASES, [numeric("answer")], CalcConfig).run(
            tmp_path / "run", ["engine=calc"], ledger=tmp_path / "ledger.sqlite"
        )
    finally:
        from chainette.ledger.costs import PRICES

        PRICES.pop("calc", None)
    data = json.loads((tmp_path / "run" / "experiment.json").read_text())
    cases = {c["id"]: c for c in data["cases"]}
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert sum(c["tokens"]["prompt"] for c in cases.values()) == meta["tokens"]["prompt"] > 0
    assert sum(c["tokens"]["completion"] for c in cases.values()) == meta["tokens"]["completion"]
    add = cases["add"]
    assert add["cost"]["usd"] == add["tokens"]["prompt"] * 1 + add["tokens"]["completion"] * 2
    assert add["by_step"]["solve"]["requests"] == 1 and add["by_step"]["solve"]["reused"] == 0
    assert sum(c["cost"]["usd"] for c in cases.values()) == meta["cost"]["usd"]
    for case in cases.values():
        [span] = case["timeline"]
        assert (
            span["node"] == "solve" and span["run"] == "run" and span["chunk"] == 1
        )  # each record goes on its own
        assert 0 <= span["start_s"] <= span["end_s"]
        assert case["duration_s"] == round(span["end_s"] - span["start_s"], 6)
    assert data["timeline_started_at"].startswith(meta["started_at"][:10])
    assert data["totals"]["cache"]["sent"] == 4 and data["totals"]["cache"]["runs"] == 1

    again = Experiment("calc", chunked, CASES, [numeric("answer")], CalcConfig).run(
        tmp_path / "again", ["engine=calc"], ledger=tmp_path / "ledger.sqlite"
    )
    add2 = again.case("add")
    assert add2.tokens is not None and add2.tokens["prompt"] == 0
    assert add2.tokens["saved_prompt"] == add["tokens"]["prompt"]  # served from the ledger
    assert add2.by_step["solve"]["reused"] == 1 and again.totals["cache"]["hits"] >= 3


class Chat(BaseModel):
    text: str
    history: list[dict[str, Any]] = []


class Reply(BaseModel):
    reply: str


class Verdict(BaseModel):
    passed: bool


class JudgeInput(BaseModel):
    case_id: str
    output: dict[str, Any]


def test_turns_and_judges_add_spans_tokens_and_totals(tmp_path: Path) -> None:
    register_engine("echo", backend="fake", responder=lambda r: {"reply": "ok"})
    register_engine("yes", backend="fake", responder=lambda r: {"passed": True})
    talk = Step(id="talk", input_model=Chat, output_model=Reply, engine_name="echo", user_prompt="{{ text }}")
    judge = Step(
        id="judge", input_model=JudgeInput, output_model=Verdict, engine_name="yes",
        user_prompt="{{ case_id }}: {{ output.reply }}",
    )  # fmt: skip
    cases = [
        {"id": "chat", "turns": [{"text": "hi"}, {"text": "bye"}], "expected": {"reply": "ok"}},
        {"id": "one", "input": {"text": "solo"}, "expected": {"reply": "ok"}},
    ]
    result = Experiment("chat", Chain("chat", [talk]), cases, [exact("reply"), llm_judge(judge)]).run(
        tmp_path / "run"
    )
    chat, one = result.case("chat"), result.case("one")
    assert [s["run"] for s in chat.timeline] == ["run", "turn-2", "judge-judge"]
    assert [s["run"] for s in one.timeline] == ["run", "judge-judge"]
    assert chat.by_step["talk"]["requests"] == 2 and chat.by_step["judge"]["requests"] == 1
    assert chat.duration_s is not None and chat.duration_s <= chat.timeline[1]["end_s"]
    metas = [
        json.loads((tmp_path / "run" / p / "metadata.json").read_text())
        for p in (".", "experiment/turn-2", "experiment/judge-judge")
    ]
    assert result.totals["tokens"]["prompt"] == sum(m["tokens"]["prompt"] for m in metas)
    assert result.totals["cache"]["sent"] == sum(m["cache"]["sent"] for m in metas) == 5
    assert result.totals["cache"]["runs"] == 3


def test_an_ordinary_run_keeps_no_trace_and_a_traced_one_times_nested_nodes(tmp_path: Path) -> None:
    from chainette import Branch, apply

    def up(c: Chat) -> Reply:
        return Reply(reply=c.text.upper())

    def low(c: Chat) -> Reply:
        return Reply(reply=c.text.lower())

    chain = Chain(
        "par",
        [[Branch("a", [apply(up)]).join("ua"), Branch("b", [apply(low)]).join("lb")]],
        batch_size=3,
    )
    rows = [{"text": t} for t in ("x", "y", "z", "w")]
    plain = chain.run(rows, tmp_path / "plain")
    assert plain.trace is None
    traced = chain.run(rows, tmp_path / "traced", record_trace=True)
    trace = traced.trace
    assert isinstance(trace, RecordTrace)
    nodes = {s.node for s in trace.spans_of(0)}
    assert {"up", "low"} <= nodes and len(nodes) >= 3  # the group and each branch's node
    # each record goes through the nodes on its own: a span of one, whatever batch_size is
    assert {s.size for s in trace.spans_of(0)} == {s.size for s in trace.spans_of(3)} == {1}
    assert trace.usage == {} and trace.dropped == 0 and MAX_SPANS >= 100
    assert sorted(r["_id"] for r in plain.flattened()) == sorted(r["_id"] for r in traced.flattened())
