"""Subflows: a chain used as a node of another chain (own history inside, its final output under
the subflow's id after it), the same chain twice under different ids (qualified ids for stats,
folders and failures), checks before any request, failures / filters / fan-out inside."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel
from tests.helpers import Answer, Question, Summary, qa_step, read_jsonl

from chainette import (
    Branch,
    Chain,
    ChainDefinitionError,
    IncompatibleStepsError,
    Step,
    Subflow,
    TemplateError,
    apply,
    register_engine,
)


class Num(BaseModel):
    x: int


class Word(BaseModel):
    word: str


@pytest.fixture(autouse=True)
def fake_engine() -> None:
    register_engine("fake", backend="fake")


def ask_chain() -> Chain:
    """Question → qa → a summary step reading the chain's own names ({{ input.text }}, {{ qa.answer }})."""
    summary = Step(
        id="sum",
        input_model=Answer,
        output_model=Summary,
        engine_name="fake",
        user_prompt="Q: {{ input.text }} A: {{ qa.answer }}",
    )
    return Chain("ask", [qa_step(), summary])


def test_the_same_chain_twice_keeps_its_names_inside_and_qualified_ids_outside(run_dir: Path) -> None:
    ask = ask_chain()

    def rephrase(s: Summary) -> Question:
        return Question(text=f"again: {s.summary[:20]}")

    outer = Chain("outer", [ask.as_node("first"), apply(rephrase), Subflow("second", ask)])
    assert [n.id for n in outer.iter_nodes()] == [
        "first.qa",
        "first.sum",
        "rephrase",
        "second.qa",
        "second.sum",
    ]
    assert [n.id for n in ask.iter_nodes()] == ["qa", "sum"]  # the chain itself is left as it was

    questions = [Question(text=f"q{i}") for i in range(3)]
    result = outer.run(questions, output_dir=run_dir)
    assert result.counts == {"records_in": 3, "records_out": 3, "failures": 0, "filtered": 0}
    for sub in ("first", "second"):
        for step in ("qa", "sum"):
            assert len(read_jsonl(run_dir / f"{sub}.{step}")) == 3
            assert result.metadata["nodes"][f"{sub}.{step}"]["records_in"] == 3
        assert result.metadata["nodes"][sub]["records_out"] == 3
    rows = list(result.flattened())
    columns = {k for r in rows for k in r if not k.startswith("_")}
    assert columns == {"input.text", "first.summary", "rephrase.text", "second.summary"}  # final outputs only
    assert [r["rephrase.text"] for r in rows] == [f"again: {r['first.summary'][:20]}" for r in rows]


def test_inside_templates_read_the_subflow_input_not_the_outer_chain_input(run_dir: Path) -> None:
    seen: list[str] = []

    def answer(request):  # type: ignore[no-untyped-def]
        seen.append(request.messages[-1]["content"])
        return {"answer": "ok", "confidence": 1.0}

    register_engine("rec", backend="fake", responder=answer)
    echo = Step(
        id="echo",
        input_model=Question,
        output_model=Answer,
        engine_name="rec",
        user_prompt="IN={{ input.text }}",
    )

    def wrap(q: Question) -> Question:
        return Question(text=f"wrapped {q.text}")

    Chain("outer", [apply(wrap), Chain("inner", [echo]).as_node("sub")]).run(
        [Question(text="a")], output_dir=run_dir
    )
    assert seen == ["IN=wrapped a"]


def test_the_subflow_output_is_read_after_it_and_its_inner_names_are_not(run_dir: Path) -> None:
    after = Step(
        id="after",
        input_model=Summary,
        output_model=Summary,
        engine_name="fake",
        user_prompt="{{ first.summary }}",
    )
    assert Chain("ok", [ask_chain().as_node("first"), after]).check().ok

    leaky = Step(
        id="leaky",
        input_model=Summary,
        output_model=Summary,
        engine_name="fake",
        user_prompt="{{ qa.answer }}",
    )
    with pytest.raises(TemplateError, match=r"leaky.*\{\{ qa\.answer \}\}"):
        Chain("bad", [ask_chain().as_node("first"), leaky]).check().raise_for_errors()


def test_an_inner_template_error_names_the_qualified_step(run_dir: Path) -> None:
    broken = Chain(
        "broken",
        [
            Step(
                id="qa",
                input_model=Question,
                output_model=Answer,
                engine_name="fake",
                user_prompt="{{ nope }}",
            )
        ],
    )
    report = Chain("outer", [broken.as_node("sub")]).check()
    assert not report.ok
    assert "'sub.qa'" in report.errors[0].message and "nope" in report.errors[0].message


def test_a_record_that_does_not_fit_the_chain_input_is_refused_before_running(run_dir: Path) -> None:
    def count(w: Word) -> Num:
        return Num(x=len(w.word))

    with pytest.raises(IncompatibleStepsError, match="subflow 'sub' needs Question"):
        Chain("outer", [apply(count), ask_chain().as_node("sub")]).run([Word(word="hi")], output_dir=run_dir)
    assert not run_dir.exists()


def test_failures_filters_and_fan_out_inside_keep_every_record_accounted_for(run_dir: Path) -> None:
    def explode(n: Num) -> list[Num] | None:
        if n.x == 1:
            raise ValueError("one is not allowed")
        if n.x == 2:
            return None
        return [Num(x=n.x * 10 + k) for k in range(n.x % 3 + 1)]

    def plus(n: Num) -> Num:
        return Num(x=n.x + 1)

    inner = Chain("inner", [apply(explode), apply(plus)])
    result = Chain("outer", [inner.as_node("sub")]).run([Num(x=i) for i in range(5)], output_dir=run_dir)
    rows = list(result.flattened())
    assert [(r["_id"].count("."), r["sub.x"]) for r in rows] == [(1, 1), (1, 31), (1, 41), (1, 42)]
    assert [r["_index"] for r in rows] == [0, 3, 4, 4]
    [failure] = list(result.failures())
    assert (
        failure["node"] == "sub.explode"
        and failure["_index"] == 1
        and "one is not allowed" in failure["message"]
    )
    assert result.counts == {"records_in": 5, "records_out": 4, "failures": 1, "filtered": 1}
    assert result.metadata["nodes"]["sub"]["records_in"] == 5


def test_a_subflow_in_a_joined_branch_and_a_subflow_in_a_subflow(run_dir: Path) -> None:
    def double(n: Num) -> Num:
        return Num(x=n.x * 2)

    twice = Chain("twice", [apply(double), Chain("again", [apply(double)])])  # a chain given as is: id = name
    assert [n.id for n in twice.iter_nodes()] == ["double", "again.double"]
    outer = Chain("outer", [[Branch("b", [twice.as_node("quad")]).join("b")], twice.as_node("quad2")])
    assert [n.id for n in outer.iter_nodes()] == [
        "quad.double",
        "quad.again.double",
        "quad2.double",
        "quad2.again.double",
    ]
    rows = list(outer.run([Num(x=1), Num(x=3)], output_dir=run_dir).flattened())
    assert [(r["b.x"], r["quad.x"], r["quad2.x"]) for r in rows] == [(4, 4, 4), (12, 12, 12)]


def test_a_failure_inside_a_subflow_in_a_joined_branch_is_written_once(run_dir: Path) -> None:
    def picky(n: Num) -> Num:
        if n.x == 0:
            raise ValueError("zero")
        return n

    inner = Chain("inner", [apply(picky)])
    result = Chain("outer", [[Branch("b", [inner.as_node("sub")]).join("b")]]).run(
        [Num(x=0), Num(x=1)], output_dir=run_dir
    )
    assert [f["node"] for f in result.failures()] == ["sub.picky"]
    assert result.counts == {"records_in": 2, "records_out": 1, "failures": 1, "filtered": 0}


def test_identical_requests_of_two_uses_are_sent_once(run_dir: Path) -> None:
    ask = ask_chain()
    outer = Chain(
        "outer", [[Branch("a", [ask.as_node("one")]).join("a"), Branch("b", [ask.as_node("two")]).join("b")]]
    )
    result = outer.run([Question(text=f"q{i}") for i in range(4)], output_dir=run_dir)
    assert result.counts["records_out"] == 4
    nodes = result.metadata["nodes"]
    sent = sum(nodes[f"{u}.{s}"]["requests"] for u in ("one", "two") for s in ("qa", "sum"))
    shared = sum(
        nodes[f"{u}.{s}"]["deduped"] + nodes[f"{u}.{s}"]["cache_hits"]
        for u in ("one", "two")
        for s in ("qa", "sum")
    )
    assert (sent, shared) == (8, 8)  # 4 records x 2 steps, once; the other use's 8 are shared


def test_definition_errors(run_dir: Path) -> None:
    with pytest.raises(ChainDefinitionError, match="not a valid identifier"):
        Subflow("bad id", ask_chain())
    with pytest.raises(ChainDefinitionError, match=r"give it one with chain.as_node"):
        Chain("outer", [Chain("my chain", [qa_step()])])
    with pytest.raises(ChainDefinitionError, match="used more than once: first"):
        Chain("outer", [ask_chain().as_node("first"), apply(lambda s: s, id="first")])
    from chainette import take

    with pytest.raises(ChainDefinitionError, match="whole stream"):
        Subflow("sub", Chain("streamy", [qa_step(), take(2)]))


def test_graph_json_and_diagrams_draw_the_subflow_around_its_nodes(run_dir: Path) -> None:
    outer = Chain("outer", [ask_chain().as_node("first")])
    graph = outer.describe()
    kinds = {n["id"]: (n["kind"], n.get("parent")) for n in graph["nodes"]}
    assert kinds == {
        "first": ("subflow", None),
        "first.qa": ("step", "first"),
        "first.sum": ("step", "first"),
    }
    labels = {(e["from"], e["to"]): e.get("label") for e in graph["edges"]}
    assert labels == {
        ("input", "first"): None,
        ("first", "first.qa"): "in",
        ("first.qa", "first.sum"): None,
        ("first.sum", "first"): "out",
    }
    mermaid = outer.to_mermaid()
    assert "subgraph" in mermaid and "first.qa" in mermaid.replace("first_qa", "first.qa")
    assert "cluster" in outer.to_dot()


def test_every_node_kind_runs_inside_a_subflow_used_twice(run_dir: Path) -> None:
    """Loops, maps, routers and dialogues are copied with qualified ids and run as they do alone."""
    from chainette import Agent, Dialogue, Map, Repeat, Router

    class Doc(BaseModel):
        name: str
        parts: list[Num]

    def inc(n: Num) -> Num:
        return Num(x=n.x + 1)

    def to_topic(d: Doc) -> Question:
        return Question(text=d.name)

    router = Router(
        "size",
        {"small": apply(inc, id="bump"), "big": apply(inc, id="keep")},
        by=lambda n: "small" if n.x < 3 else "big",
    )
    talk = Dialogue(
        "talk",
        [Agent("a", "You are A.", "fake"), Agent("b", "You are B.", "fake")],
        opening="{{ text }}",
        turns=2,
    )
    inner = Chain(
        "inner",
        [
            Map("each", [Repeat("twice", 2, apply(inc, write=True)), router], over="parts"),
            apply(to_topic),
            talk,
        ],
    )
    outer = Chain(
        "outer",
        [
            inner.as_node("one"),
            apply(lambda t: Doc(name="again", parts=[Num(x=5)]), id="reset", output_model=Doc),
            inner.as_node("two"),
        ],
    )
    ids = [n.id for n in outer.walk()]
    for use in ("one", "two"):
        for name in ("each", "twice", "inc", "size", "bump", "keep", "talk", "talk.a", "talk.b"):
            assert f"{use}.{name}" in ids
    result = outer.run([Doc(name="d", parts=[Num(x=0), Num(x=4)])], output_dir=run_dir)
    assert result.counts == {"records_in": 1, "records_out": 1, "failures": 0, "filtered": 0}
    [row] = list(result.flattened())
    assert [len(row[f"{use}.turns"]) for use in ("one", "two")] == [2, 2]
    loop_rows = read_jsonl(run_dir / "one.inc")
    assert sorted(r["one.twice.iteration"] for r in loop_rows) == [0, 0, 1, 1]  # the loop's pass, qualified
    assert len(read_jsonl(run_dir / "two.inc")) == 2  # one item, two passes
    assert (
        result.metadata["nodes"]["one.talk.a"]["requests"]
        + result.metadata["nodes"]["one.talk.b"]["requests"]
        == 2
    )
