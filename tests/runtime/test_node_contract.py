"""One node contract: kinds are found by class (subclasses included), containers nest, joins
filter without inventing failures, and a kind nothing runs is refused before any request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from tests.helpers import Answer, CountingEngine, Question, Translation, qa_step

from chainette import Branch, Chain, ChainDefinitionError, Step, apply, register_engine
from chainette.engines import registry
from chainette.graph.nodes import Node
from chainette.runtime.dispatch import register_runner


class Num(BaseModel):
    x: int


class Pair(BaseModel):
    total: int


@pytest.fixture(autouse=True)
def fake_engine() -> None:
    register_engine("fake", backend="fake")


def inc(n: Num) -> Num:
    return Num(x=n.x + 1)


def test_a_subclass_of_step_runs_with_the_step_runner(run_dir: Path) -> None:
    class MyStep(Step):
        pass

    step = MyStep(
        id="qa", input_model=Question, output_model=Answer, engine_name="fake", user_prompt="{{ text }}"
    )
    result = Chain("c", [step]).run([Question(text="hi")], output_dir=run_dir)
    rows = list(result.flattened())
    assert len(rows) == 1 and isinstance(rows[0]["qa.answer"], str) and result.counts["failures"] == 0


def test_a_kind_nothing_runs_is_refused_before_any_request(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    CountingEngine.sent = []
    monkeypatch.setitem(registry.BACKENDS, "counting", "tests.helpers:CountingEngine")
    register_engine("counting", backend="counting")

    class Mystery(Node):
        kind = "mystery"

        def __init__(self) -> None:
            self.id, self.name, self.input_model, self.output_model = "mystery", "mystery", None, None

    step = qa_step("counting")
    with pytest.raises(ChainDefinitionError, match=r"mystery 'mystery': nothing runs nodes of class Mystery"):
        Chain("c", [step, Mystery()]).run([Question(text="hi")], output_dir=run_dir)
    assert CountingEngine.sent == [] and not run_dir.exists()


def test_a_new_kind_registers_its_runner_and_runs(run_dir: Path) -> None:
    class Times(Node):
        """A new kind in its own module: multiplies ``x``; nothing else in the library changes."""

        kind = "times"

        def __init__(self, id: str, k: int) -> None:
            self.id, self.name, self.k, self.input_model, self.output_model = id, id, k, Num, Num

    async def run_times(node: Times, chunk: list[Any], ctx: Any) -> list[Any]:
        return [r.advance(node.id, Num(x=r.value.x * node.k)) for r in chunk]

    register_runner(Times, run_times)
    result = Chain("c", [apply(inc), Times("triple", 3), apply(inc, id="again")]).run(
        [Num(x=i) for i in range(4)], output_dir=run_dir
    )
    assert [r["again.x"] for r in result.flattened()] == [(i + 1) * 3 + 1 for i in range(4)]
    graph = json.loads((run_dir / "graph.json").read_text())
    assert [n["kind"] for n in graph["nodes"]] == ["apply", "times", "apply"]


def _dag() -> Chain:
    """GoTaglio's ``dag`` shape: B and C after A, D after both (a branch inside a branch, too)."""

    def b(n: Num) -> Num:
        return Num(x=n.x * 10)

    def c(n: Num) -> Num:
        return Num(x=n.x * 100)

    def c2(n: Num) -> Num:
        return Num(x=n.x + 7)

    def d(n: Num) -> Pair:
        return Pair(total=n.x)

    inner = [Branch("c_inner", [apply(c2)]).join("c_plus")]
    return Chain(
        "dag",
        [
            apply(inc, id="a"),
            [Branch("left", [apply(b)]).join("b_out"), Branch("right", [apply(c), inner]).join("c_out")],
            apply(d),
        ],
    )


def test_branches_nest_and_joined_outputs_reach_the_history(run_dir: Path) -> None:
    chain = _dag()
    assert chain.check().issues == []
    rows = list(chain.run([Num(x=1), Num(x=2)], output_dir=run_dir).flattened())
    assert [
        (r["a.x"], r["b.x"], r["c.x"], r["c2.x"], r["c_plus.x"], r["b_out.x"], r["c_out.x"]) for r in rows
    ] == [
        (2, 20, 200, 207, 207, 20, 200),  # the right branch's value is c's: the inner group passes through
        (3, 30, 300, 307, 307, 30, 300),
    ]
    assert [r["d.total"] for r in rows] == [2, 3]  # after the group the record's value is a's


def test_a_nested_branch_is_described_with_its_innermost_branch() -> None:
    graph = _dag().describe()
    place = {n["id"]: (n.get("branch"), n.get("join_alias")) for n in graph["nodes"]}
    assert place["c2"] == ("c_inner", "c_plus") and place["c"] == ("right", "c_out")
    assert place["a"] == (None, None)
    edges = {(e["from"], e["to"]) for e in graph["edges"]}
    assert {("input", "a"), ("a", "b"), ("a", "c"), ("c", "c2"), ("b", "d"), ("c", "d"), ("a", "d")} <= edges


def test_a_record_filtered_in_a_joined_branch_is_filtered_not_failed(run_dir: Path) -> None:
    def keep_even(n: Num) -> Num | None:
        return n if n.x % 2 == 0 else None

    chain = Chain("c", [[Branch("even", [apply(keep_even)]).join("kept")], apply(inc)])
    result = chain.run([Num(x=i) for i in range(6)], output_dir=run_dir)
    assert [r["kept.x"] for r in result.flattened()] == [0, 2, 4]
    assert result.counts["failures"] == 0 and list(result.failures()) == []
    assert result.counts["filtered"] == 3


def test_a_failure_inside_a_nested_branch_is_written_once(run_dir: Path) -> None:
    def boom(n: Num) -> Num:
        if n.x == 1:
            raise ValueError("no ones")
        return n

    chain = Chain(
        "c", [[Branch("outer", [apply(inc), [Branch("inner", [apply(boom)]).join("checked")]]).join("out")]]
    )
    result = chain.run([Num(x=0), Num(x=1), Num(x=2)], output_dir=run_dir)  # inc makes 0 → 1: that one fails
    failures = list(result.failures())
    assert [(f["node"], f["_index"]) for f in failures] == [("boom", 0)]
    assert [r["_index"] for r in result.flattened()] == [1, 2]


def test_a_join_alias_may_be_the_id_of_the_branchs_last_step(run_dir: Path) -> None:
    fr = Step(
        id="fr", input_model=Question, output_model=Translation, engine_name="fake", user_prompt="{{ text }}"
    )
    summary = Step(
        id="summary",
        input_model=Question,
        output_model=Answer,
        engine_name="fake",
        user_prompt="{{ fr.translated }}",
    )
    chain = Chain("c", [[Branch("fr", [fr]).join("fr")], summary])
    assert chain.check().errors == []
    rows = list(chain.run([Question(text="hello")], output_dir=run_dir).flattened())
    assert len(rows) == 1 and isinstance(rows[0]["fr.translated"], str)


def test_a_join_alias_naming_another_step_is_still_a_duplicate() -> None:
    one = apply(inc, id="one")
    with pytest.raises(ChainDefinitionError, match="used more than once: one"):
        Chain("c", [one, [Branch("b", [apply(inc, id="two")]).join("one")]])


def test_sibling_branches_cannot_read_each_others_outputs() -> None:
    fr = Step(
        id="fr", input_model=Question, output_model=Translation, engine_name="fake", user_prompt="{{ text }}"
    )
    reads_fr = Step(
        id="es",
        input_model=Question,
        output_model=Translation,
        engine_name="fake",
        user_prompt="{{ fr.translated }}",
    )
    report = Chain("c", [[Branch("a", [fr]).join("fr_out"), Branch("b", [reads_fr]).join("es_out")]]).check()
    assert [e.node_id for e in report.errors] == ["es"]
    assert "'fr' runs inside branch 'a'" in report.errors[0].message


def test_the_seed_readme_join_example_runs_as_written(run_dir: Path) -> None:
    """``[[fr_branch, es_branch], agg]`` with ``agg = Step(input_model=Translation, ...)`` reading
    only the aliases: the record (a Question) is not validated into Translation."""

    def translate(lang: str) -> Step:
        return Step(
            id=f"translate_{lang}",
            input_model=Question,
            output_model=Translation,
            engine_name="fake",
            user_prompt=f"Translate to {lang}: {{{{ text }}}}",
        )

    fr_branch = Branch(name="fr", steps=[translate("fr")]).join("fr")
    es_branch = Branch(name="es", steps=[translate("es")]).join("es")
    agg = Step(
        id="agg",
        input_model=Translation,
        output_model=Answer,
        engine_name="fake",
        system_prompt="Summarise both translations.",
        user_prompt="FR: {{fr.translated}}\nES: {{es.translated}}",
    )
    chain = Chain(name="Translate & Summarise", steps=[[fr_branch, es_branch], agg])
    result = chain.run([Question(text="Hello"), Question(text="Bye")], output_dir=run_dir)
    assert result.counts == {"records_in": 2, "records_out": 2, "failures": 0, "filtered": 0}
    assert all(isinstance(r["agg.answer"], str) and r["fr.translated"] for r in result.flattened())
