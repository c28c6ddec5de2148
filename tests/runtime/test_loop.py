"""Loops (While / Repeat / Loop): passes in lockstep, one ledger key per pass, stop reasons and
budgets that a rerun decides the same way, failures that leave the loop, and checks of the body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field
from tests.helpers import (
    Answer,
    CountingEngine,
    Question,
    assert_every_record_accounted_for,
    qa_step,
    read_jsonl,
)

from chainette import (
    Branch,
    Chain,
    ChainDefinitionError,
    ChatRequest,
    IncompatibleStepsError,
    Loop,
    LoopState,
    RecordView,
    Repeat,
    Step,
    While,
    apply,
    register_engine,
)
from chainette.engines import registry
from chainette.graph.loop import DEFAULT_MAX_ITERATIONS


class Num(BaseModel):
    x: int
    limit: int = 0


class Out(BaseModel):
    label: str


class Draft(BaseModel):
    text: str = Field(max_length=80)


class Critique(BaseModel):
    feedback: str = Field(max_length=120)
    ok: bool


def inc(n: Num) -> Num:
    return Num(x=n.x + 1, limit=n.limit)


@pytest.fixture(autouse=True)
def counting() -> Iterator[list[str]]:
    """Engine ``fake`` counts every request it receives (the step id of each, in order)."""
    saved = registry.BACKENDS.get("counting")
    registry.BACKENDS["counting"] = "tests.helpers:CountingEngine"
    CountingEngine.sent = []
    register_engine("fake", backend="counting")
    yield CountingEngine.sent
    if saved is None:
        registry.BACKENDS.pop("counting", None)
    else:
        registry.BACKENDS["counting"] = saved


def questions(*texts: str) -> list[Question]:
    return [Question(text=t) for t in texts]


def test_repeat_sends_one_request_per_pass_and_a_rerun_sends_none(
    run_dir: Path, tmp_path: Path, counting: list[str]
) -> None:
    # the prompt is the same in every pass: only the pass number tells the requests apart
    chain = Chain("c", [Repeat("r", 3, qa_step(prompt="{{ input.text }}"))])
    events: list[dict[str, Any]] = []
    first = chain.run(
        questions("a", "b"),
        output_dir=run_dir,
        on_event=lambda kind, data: events.append(data) if kind == "loop_pass" else None,
    )
    assert counting == ["qa"] * 6 and first.metadata["cache"]["sent"] == 6
    # each record loops on its own (no lockstep): one event per record and pass
    assert sorted((e["iteration"], e["records"]) for e in events) == [
        (0, 1),
        (0, 1),
        (1, 1),
        (1, 1),
        (2, 1),
        (2, 1),
    ]
    rows = read_jsonl(run_dir / "qa")
    assert sorted((r["_id"], r["r.iteration"]) for r in rows) == sorted(
        (f["_id"], k) for f in first.flattened() for k in range(3)
    )
    assert list(rows[0])[:3] == ["_id", "_index", "r.iteration"]  # the input position, then the pass
    flat = list(first.flattened())
    assert [(r["r.iterations"], r["r.iteration"], r["r.stop_reason"], r["r.hops"]) for r in flat] == [
        (3, 2, "times", 3)
    ] * 2
    last = {r["_id"]: r["answer"] for r in rows if r["r.iteration"] == 2}
    assert all(r["qa.answer"] == last[r["_id"]] for r in flat)  # the value after the loop: the last pass's

    counting.clear()
    again = chain.run(questions("a", "b"), output_dir=tmp_path / "again")
    assert counting == [] and again.metadata["cache"]["hits"] == 6
    assert sorted(again.flattened(), key=lambda r: r["_index"]) == sorted(flat, key=lambda r: r["_index"])
    # pass 0's key is the key the same request has outside any loop: existing ledgers stay valid
    Chain("plain", [qa_step(prompt="{{ input.text }}")]).run(
        questions("a", "b"), output_dir=tmp_path / "plain"
    )
    assert counting == []


def test_while_reads_the_loop_state_and_the_record_and_until_stops_after_a_pass(run_dir: Path) -> None:
    def more(n: Num, record: RecordView) -> bool:
        state = record["w"]
        assert isinstance(state, LoopState) and state.stop_reason is None
        return state.iterations < record.input.limit

    chain = Chain("c", [While("w", more, apply(inc))])
    result = chain.run([Num(x=10 * i, limit=i) for i in range(4)], output_dir=run_dir)
    rows = list(result.flattened())
    assert [(r["w.iterations"], r["w.stop_reason"]) for r in rows] == [(i, "condition") for i in range(4)]
    assert [r.get("inc.x") for r in rows] == [None, 11, 22, 33]  # no pass: the record went on as it came

    until = Chain("c", [Loop("u", apply(inc), until=lambda n: n.x >= 3)])
    rows = list(until.run([Num(x=i) for i in range(5)], output_dir=run_dir.parent / "until").flattened())
    assert [(r["u.iterations"], r["inc.x"], r["u.stop_reason"]) for r in rows] == [
        (3, 3, "until"),
        (2, 3, "until"),
        (1, 3, "until"),
        (1, 4, "until"),  # until is checked after a pass: at least one runs
        (1, 5, "until"),
    ]


def test_templates_in_the_body_read_the_pass_and_after_the_loop_the_stop_reason(
    run_dir: Path, counting: list[str]
) -> None:
    seen: list[str] = []

    def echo(request: ChatRequest) -> dict[str, Any]:
        prompt = request.messages[-1]["content"]
        seen.append(prompt)
        return {"answer": prompt[:80], "confidence": 1.0}

    register_engine("fake", backend="counting", responder=echo)
    body = qa_step(prompt="{{ input.text }} #{{ r.iteration }}")
    after = Step(
        id="report",
        input_model=Answer,
        output_model=Answer,
        engine_name="fake",
        user_prompt="{{ r.stop_reason }} after {{ r.iterations }}: {{ answer }}",
    )
    result = Chain("c", [Repeat("r", 2, body), after]).run(questions("hi"), output_dir=run_dir)
    assert seen == ["hi #0", "hi #1", "times after 2: hi #1"]
    assert next(result.flattened())["report.answer"] == "times after 2: hi #1"
    [report] = read_jsonl(run_dir / "report")
    # after the loop, rows have no pass column
    assert list(report) == ["_id", "_index", "answer", "confidence"]


def test_the_default_cap_stops_a_loop_that_never_ends_and_on_limit_decides(run_dir: Path) -> None:
    forever = Chain("c", [Loop("l", apply(inc), condition=lambda n: True)])
    result = forever.run([Num(x=0), Num(x=5)], output_dir=run_dir)
    rows = list(result.flattened())
    assert [(r["l.iterations"], r["l.stop_reason"], r["inc.x"]) for r in rows] == [
        (DEFAULT_MAX_ITERATIONS, "max_iterations", 10),
        (DEFAULT_MAX_ITERATIONS, "max_iterations", 15),
    ]
    assert result.metadata["nodes"]["l"]["stop_reasons"] == {"max_iterations": 2}

    failing = Chain("c", [Loop("l", apply(inc), condition=lambda n: n.x < 12, on_limit="fail")])
    result = failing.run([Num(x=0), Num(x=5)], output_dir=run_dir.parent / "fail")
    _, [failure] = assert_every_record_accounted_for(result.path, 2)
    assert failure["node"] == "l" and failure["_index"] == 0 and failure["input"] == {"x": 10, "limit": 0}
    assert "Loop 'l' stopped this record at its max_iterations limit after 10 pass(es)" in failure["message"]
    assert "raise max_iterations" in failure["message"] and "on_limit='continue'" in failure["message"]
    assert [r["l.stop_reason"] for r in result.flattened()] == ["condition"]  # x=5 stops at 12 after 7 passes
    stats = result.metadata["nodes"]["l"]
    assert (stats["records_in"], stats["records_out"], stats["failed"], stats["done"]) == (2, 1, 1, 2)


def test_max_tokens_counts_stored_and_shared_answers_so_a_rerun_stops_at_the_same_pass(
    run_dir: Path, tmp_path: Path, counting: list[str]
) -> None:
    body = qa_step(prompt="{{ input.text }} {% if qa is defined %}{{ qa.answer }}{% endif %}")
    chain = Chain("c", [Loop("budget", body, condition=lambda a: True, max_tokens=60, max_iterations=50)])
    inputs = questions("one", "two words", "one")  # the two "one" share each request: one is deduped
    first = chain.run(inputs, output_dir=run_dir, ordered=True)
    rows = list(first.flattened())
    assert {r["budget.stop_reason"] for r in rows} == {"max_tokens"}
    assert all(r["budget.tokens"] >= 60 for r in rows) and all(r["budget.iterations"] > 1 for r in rows)
    assert rows[0] == {**rows[2], "_id": rows[0]["_id"], "_index": 0}  # the deduped twin spent the same
    sent = len(counting)
    assert sent == first.metadata["cache"]["sent"] == sum(r["budget.iterations"] for r in rows[:2])

    counting.clear()
    rerun = chain.run(inputs, output_dir=tmp_path / "rerun", ordered=True)
    assert counting == [] and rerun.metadata["cache"]["hits"] == sent + rows[2]["budget.iterations"]
    assert list(rerun.flattened()) == rows
    assert sorted(map(json.dumps, read_jsonl(tmp_path / "rerun" / "qa"))) == sorted(
        map(json.dumps, read_jsonl(run_dir / "qa"))
    )


def test_tokens_spent_in_a_joined_branch_count_for_the_loop(run_dir: Path) -> None:
    side = Branch("b", [qa_step(prompt="{{ input.text }}")]).join("j")
    chain = Chain("c", [Loop("l", [[side]], condition=lambda q: True, max_tokens=30, max_iterations=20)])
    [row] = chain.run(questions("hello"), output_dir=run_dir).flattened()
    assert row["l.stop_reason"] == "max_tokens" and 1 < row["l.iterations"] < 20 and row["l.tokens"] >= 30


def test_max_hops_counts_top_level_body_nodes(run_dir: Path) -> None:
    def label(n: Num) -> Num:
        return n

    body = [apply(inc), apply(label)]  # two hops per pass
    chain = Chain("c", [Loop("h", body, condition=lambda n: True, max_hops=5)])
    [row] = chain.run([Num(x=0)], output_dir=run_dir).flattened()
    assert (row["h.stop_reason"], row["h.iterations"], row["h.hops"], row["label.x"]) == ("max_hops", 2, 4, 2)
    fail = Chain("c", [Loop("h", body, condition=lambda n: True, max_hops=5, on_limit="fail")])
    [failure] = fail.run([Num(x=0)], output_dir=run_dir.parent / "fail").failures()
    assert (
        "max_hops limit after 2 pass(es)" in failure["message"]
        and "4 hops used, 2 per pass" in failure["message"]
    )
    with pytest.raises(ChainDefinitionError, match="max_hops=1 is less than one pass"):
        Loop("h", body, max_hops=1)


@pytest.mark.timeout(60)
def test_deadline_stops_a_slow_loop(run_dir: Path) -> None:
    register_engine("fake", backend="counting", latency=0.1)
    body = qa_step(prompt="{{ input.text }}")
    chain = Chain("c", [Loop("d", body, condition=lambda a: True, deadline_s=0.25, max_iterations=50)])
    rows = list(chain.run(questions("a", "b"), output_dir=run_dir).flattened())
    assert [r["d.stop_reason"] for r in rows] == ["deadline", "deadline"]
    # the chunk entered together and loops in lockstep: both records stop at the same pass
    assert 1 <= rows[0]["d.iterations"] == rows[1]["d.iterations"] < 50


def test_a_writer_reads_the_critics_feedback_from_the_previous_pass(run_dir: Path) -> None:
    prompts: list[str] = []

    def respond(request: ChatRequest) -> dict[str, Any]:
        prompt = request.messages[-1]["content"]
        if prompt.startswith("Write"):
            prompts.append(prompt)
            return {"text": f"draft {prompt.split('(pass ')[1][0]} of {prompt.split()[2]}"}
        draft = prompt.removeprefix("Critique: ")
        return {"feedback": f"feedback on {draft}", "ok": draft.startswith("draft 2")}

    register_engine("fake", backend="counting", responder=respond)
    writer = Step(
        id="writer",
        input_model=Question,
        output_model=Draft,
        engine_name="fake",
        user_prompt="Write about {{ input.text }} (pass {{ refine.iteration }})."
        "{% if critic is defined %} Fix: {{ critic.feedback }}{% endif %}",
    )
    critic = Step(
        id="critic",
        input_model=Draft,
        output_model=Critique,
        engine_name="fake",
        user_prompt="Critique: {{ text }}",
    )
    chain = Chain("c", [Loop("refine", [writer, critic], until=lambda c: c.ok, max_iterations=5)])
    assert [i.message for i in chain.check().errors] == []
    [row] = chain.run(questions("owls"), output_dir=run_dir).flattened()
    assert prompts == [
        "Write about owls (pass 0).",
        "Write about owls (pass 1). Fix: feedback on draft 0 of owls",
        "Write about owls (pass 2). Fix: feedback on draft 1 of owls",
    ]
    assert (row["refine.stop_reason"], row["refine.iterations"], row["writer.text"]) == (
        "until",
        3,
        "draft 2 of owls",
    )
    assert row["critic.ok"] is True and row["critic.feedback"] == "feedback on draft 2 of owls"
    assert [r["refine.iteration"] for r in read_jsonl(run_dir / "critic")] == [0, 1, 2]


def test_a_failure_in_the_body_leaves_the_loop_once_and_the_others_go_on(run_dir: Path) -> None:
    def fragile(n: Num, record: RecordView) -> Num:
        if n.limit == 1 and record["r"].iteration == 1:
            raise ValueError("broke in pass 1")
        return inc(n)

    chain = Chain("c", [Repeat("r", 3, apply(fragile, write=True))])
    result = chain.run([Num(x=0), Num(x=0, limit=1), Num(x=0)], output_dir=run_dir)
    flat, [failure] = assert_every_record_accounted_for(result.path, 3)
    assert failure["_index"] == 1 and failure["node"] == "fragile" and "broke in pass 1" in failure["message"]
    assert failure["r.iteration"] == 1  # the failures row says which pass
    assert [(r["_index"], r["fragile.x"], r["r.iterations"]) for r in flat] == [(0, 3, 3), (2, 3, 3)]
    passes = [(r["r.iteration"], r["x"]) for r in read_jsonl(run_dir / "fragile")]
    assert sorted(passes) == [(0, 1), (0, 1), (0, 1), (1, 2), (1, 2), (2, 3), (2, 3)]
    assert result.metadata["nodes"]["r"]["stop_reasons"] == {"times": 2}


def test_a_body_that_fans_out_fails_the_record_clearly(run_dir: Path) -> None:
    def twice(n: Num) -> list[Num]:
        return [n, n]

    result = Chain("c", [Repeat("r", 2, apply(twice))]).run([Num(x=1), Num(x=2)], output_dir=run_dir)
    _, failures = assert_every_record_accounted_for(result.path, 2)
    assert all(f["node"] == "r" for f in failures)
    assert "pass 0 of the body produced 2 outputs for this record" in failures[0]["message"]
    assert "before or after the loop" in failures[0]["message"]

    sampled = Chain("c", [Repeat("r", 2, qa_step(prompt="{{ input.text }}", samples=3))])
    result = sampled.run(questions("a"), output_dir=run_dir.parent / "samples")
    [failure] = result.failures()
    assert failure["node"] == "r" and "produced 3 outputs" in failure["message"]


def test_a_condition_that_raises_fails_only_that_record(run_dir: Path) -> None:
    def picky(n: Num) -> bool:
        if n.x == 2 and n.limit == 0:
            raise KeyError("no")
        return n.x < 3

    result = Chain("c", [While("w", picky, apply(inc))]).run(
        [Num(x=0), Num(x=1, limit=1)], output_dir=run_dir
    )
    flat, [failure] = assert_every_record_accounted_for(result.path, 2)
    assert failure["_index"] == 0 and "Loop 'w': condition raised KeyError" in failure["message"]
    assert "before pass 2" in failure["message"]
    assert [(r["_index"], r["inc.x"]) for r in flat] == [(1, 3)]


def test_nested_loops_tag_rows_with_both_passes_and_key_every_pass(
    run_dir: Path, tmp_path: Path, counting: list[str]
) -> None:
    inner = Repeat("inner", 2, qa_step(prompt="{{ input.text }}"))
    chain = Chain("c", [Repeat("outer", 2, inner)])
    result = chain.run(questions("a"), output_dir=run_dir)
    assert len(counting) == 4
    tags = [(r["outer.iteration"], r["inner.iteration"]) for r in read_jsonl(run_dir / "qa")]
    assert tags == [(0, 0), (0, 1), (1, 0), (1, 1)]
    [row] = result.flattened()
    assert (row["outer.iterations"], row["inner.iterations"], row["outer.hops"]) == (2, 2, 2)
    counting.clear()
    chain.run(questions("a"), output_dir=tmp_path / "again")
    assert counting == []


def test_the_body_is_checked_with_the_previous_pass_and_the_loop_state_in_scope() -> None:
    def step(id: str, prompt: str, input_model: type[BaseModel] = Question) -> Step:
        return Step(
            id=id, input_model=input_model, output_model=Answer, engine_name="fake", user_prompt=prompt
        )

    good = Chain(
        "c",
        [
            Loop(
                "l",
                [
                    step(
                        "a",
                        "{{ input.text }} {{ l.iteration }}{% if b is defined %}{{ b.answer }}{% endif %}",
                    ),
                    step("b", "{{ a.answer }}", Answer),
                ],
                until=lambda v: True,
            ),
            step("after", "{{ l.stop_reason }} {{ b.answer }} {{ a.answer }}", Answer),
        ],
    )
    report = good.check()
    assert report.errors == []

    bad = Chain(
        "c",
        [
            Loop(
                "l",
                [
                    step("a", "{{ text }} {{ l.nope }} {{ nopenope }} {{ b.answer }}"),
                    step("b", "{{ a.answer }}", Answer),
                ],
            ),
            step("after", "{{ l.bogus }}", Answer),
        ],
    )
    report = bad.check()
    messages = [e.message for e in report.errors]
    assert any("LoopState has no field 'nope'" in m for m in messages)
    assert any("no field 'nopenope'" in m for m in messages)
    assert any("LoopState has no field 'bogus'" in m for m in messages)
    # b reads a's output of this pass, but a reads b's of the previous pass, undefined in pass 0
    assert [w.node_id for w in report.warnings if "undefined in the first pass" in w.message] == ["a"]
    assert "reads {{ b.answer }}, which loop 'l' sets in the previous pass" in next(
        w.message for w in report.warnings if w.node_id == "a" and "first pass" in w.message
    )
    assert "{% if b is defined %}" in next(
        w.message for w in report.warnings if w.node_id == "a" and "first pass" in w.message
    )
    # the last pass's output goes round: Answer cannot be a Question (the step reads {{ text }})
    [round_trip] = [e for e in report.errors if e.error_type is IncompatibleStepsError]
    assert round_trip.node_id == "l" and round_trip.message.startswith(
        "Loop 'l': each pass after the first starts from the previous pass's output; step 'a' needs Question "
        "but 'b' outputs Answer"
    )


def test_an_incompatible_body_is_refused_before_any_request(run_dir: Path, counting: list[str]) -> None:
    def to_out(n: Num) -> Out:
        return Out(label=str(n.x))

    chain = Chain("c", [Repeat("r", 2, [apply(inc), apply(to_out)])])
    with pytest.raises(
        IncompatibleStepsError,
        match=r"Loop 'r': each pass after the first .* apply 'inc' needs Num but 'to_out' outputs Out",
    ):
        chain.run([Num(x=1)], output_dir=run_dir)
    assert not run_dir.exists()

    def needs_num(n: Num) -> Out:
        return Out(label=str(n.x))

    def shout(n: Num) -> Out:
        return Out(label=str(n.x))

    # a mismatch inside one pass is reported once, at its node; the loop adds only the round trip's
    twice = Chain("c", [Repeat("r", 2, [apply(shout), apply(needs_num)])]).check().errors
    assert [(e.node_id, e.message.split(" needs")[0]) for e in twice] == [
        ("needs_num", "apply 'needs_num'"),
        ("r", "Loop 'r': each pass after the first starts from the previous pass's output; apply 'shout'"),
    ]


def test_loop_definition_mistakes_are_refused() -> None:
    body = apply(inc)
    for kwargs, match in [
        ({"times": 0}, "times must be an integer >= 1"),
        ({"max_iterations": -1}, "max_iterations must be an integer >= 1"),
        ({"max_tokens": 0}, "max_tokens must be an integer >= 1"),
        ({"deadline_s": 0}, "deadline_s must be a number > 0"),
        ({"condition": "x < 3"}, "condition must be a function"),
        ({"until": 3}, "until must be a function"),
        ({"times": 2, "max_iterations": 3}, "times=2 already bounds the passes"),
        ({"on_limit": "stop"}, "on_limit must be 'continue' or 'fail'"),
    ]:
        with pytest.raises(ChainDefinitionError, match=match):
            Loop("l", body, **kwargs)
    with pytest.raises(ChainDefinitionError, match="empty body"):
        Loop("l", [])
    with pytest.raises(ChainDefinitionError, match="used more than once: inc"):
        Chain("c", [Repeat("l", 2, body), Repeat("m", 2, apply(inc))])
    with pytest.raises(ChainDefinitionError, match="used more than once: l"):
        Chain("c", [Repeat("l", 2, body), apply(inc, id="l")])


def test_the_graph_draws_the_body_inside_the_loop_and_the_edge_back(run_dir: Path) -> None:
    def done(n: Num) -> Out:
        return Out(label=str(n.x))

    chain = Chain("c", [While("grow", lambda n: n.x < 3, [apply(inc)]), apply(done)])
    chain.run([Num(x=0)], output_dir=run_dir)
    graph = json.loads((run_dir / "graph.json").read_text())
    loop = next(n for n in graph["nodes"] if n["id"] == "grow")
    assert loop["kind"] == "loop" and loop["body"] == ["inc"] and loop["max_iterations"] == 10
    assert loop["summary"] == "while <lambda>, at most 10"
    assert next(n for n in graph["nodes"] if n["id"] == "inc")["parent"] == "grow"
    assert graph["edges"] == [
        {"from": "input", "to": "grow"},
        {"from": "grow", "to": "inc"},
        {"from": "inc", "to": "grow", "label": "repeat"},
        {"from": "inc", "to": "done"},
    ]
    mermaid = chain.to_mermaid()
    assert 'subgraph sg_0 ["loop grow"]' in mermaid and 'inc -->|"repeat"| grow' in mermaid
    assert 'grow("grow<br/>(loop#58; while #60;lambda#62;, at most 10)")' in mermaid
    dot = chain.to_dot()
    assert '"grow" [label="grow\\n(loop: while <lambda>, at most 10)", shape=hexagon];' in dot
    assert '"inc" -> "grow" [label="repeat"];' in dot
