"""Router: one route per record (by function, field or model class), outputs under the router's
id in input order; no match → default, filter or failure; fan-out; checked before running."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel
from tests.helpers import Answer, Question

from chainette import Chain, ChainDefinitionError, RecordView, Router, Step, apply, register_engine


class Num(BaseModel):
    x: int


class Even(BaseModel):
    half: int


class Odd(BaseModel):
    rest: int


class Tagged(BaseModel):
    kind: Literal["small", "big"]
    x: int


class Out(BaseModel):
    label: str


@pytest.fixture(autouse=True)
def fake_engine() -> None:
    register_engine("fake", backend="fake")


def label(prefix: str):  # type: ignore[no-untyped-def]
    def fn(n: Num) -> Out:
        return Out(label=f"{prefix}{n.x}")

    fn.__name__ = f"label_{prefix}"
    return fn


def parity_router(**options) -> Router:  # type: ignore[no-untyped-def]
    return Router(
        "parity",
        {"even": apply(label("e")), "odd": [apply(label("o"))]},
        by=lambda n: "even" if n.x % 2 == 0 else "odd",
        **options,
    )


def test_each_record_takes_its_route_and_goes_on_in_input_order(run_dir: Path) -> None:
    def shout(o: Out) -> Out:
        return Out(label=o.label.upper())

    result = Chain("c", [parity_router(), apply(shout)]).run([Num(x=i) for i in range(7)], output_dir=run_dir)
    rows = list(result.flattened())
    assert [r["parity.label"] for r in rows] == ["e0", "o1", "e2", "o3", "e4", "o5", "e6"]
    assert [r["shout.label"] for r in rows] == ["E0", "O1", "E2", "O3", "E4", "O5", "E6"]
    assert all(("label_e.label" in r) != ("label_o.label" in r) for r in rows)  # one route's step each
    assert result.counts == {"records_in": 7, "records_out": 7, "failures": 0, "filtered": 0}


def test_routes_keyed_by_model_class_route_by_the_variant(run_dir: Path) -> None:
    def split(n: Num) -> Even | Odd:
        return Even(half=n.x // 2) if n.x % 2 == 0 else Odd(rest=n.x)

    def from_even(e: Even) -> Out:
        return Out(label=f"half {e.half}")

    def from_odd(o: Odd) -> Out:
        return Out(label=f"odd {o.rest}")

    router = Router("variant", {Even: apply(from_even), Odd: apply(from_odd)})
    chain = Chain("c", [apply(split, output_model=None), router])
    rows = list(chain.run([Num(x=i) for i in range(4)], output_dir=run_dir).flattened())
    assert [r["variant.label"] for r in rows] == ["half 0", "odd 1", "half 1", "odd 3"]


def test_a_discriminator_field_names_the_route(run_dir: Path) -> None:
    def tag(n: Num) -> Tagged:
        return Tagged(kind="big" if n.x > 2 else "small", x=n.x)

    def small(t: Tagged) -> Out:
        return Out(label="s")

    def big(t: Tagged) -> Out:
        return Out(label="B")

    chain = Chain("c", [apply(tag), Router("size", {"small": apply(small), "big": apply(big)}, by="kind")])
    rows = list(chain.run([Num(x=i) for i in range(5)], output_dir=run_dir).flattened())
    assert "".join(r["size.label"] for r in rows) == "sssBB"


def test_no_match_fails_the_record_by_default_naming_the_router(run_dir: Path) -> None:
    router = Router("pick", {"a": apply(label("a"))}, by=lambda n: "a" if n.x == 0 else None)
    result = Chain("c", [router]).run([Num(x=0), Num(x=1)], output_dir=run_dir)
    [failure] = list(result.failures())
    assert failure["node"] == "pick" and failure["_index"] == 1
    assert "no route matches this record" in failure["message"] and "default=" in failure["message"]
    assert [r["pick.label"] for r in result.flattened()] == ["a0"]
    stats = result.metadata["nodes"]["pick"]
    assert (stats["records_in"], stats["done"], stats["failed"], stats["records_out"]) == (2, 2, 1, 1)


def test_no_match_can_filter_or_take_the_default(run_dir: Path, tmp_path: Path) -> None:
    choose = {"by": lambda n: "a" if n.x == 0 else None}
    filtered = Chain("c", [Router("pick", {"a": apply(label("a"))}, on_no_match="filter", **choose)]).run(
        [Num(x=0), Num(x=1)], output_dir=run_dir
    )
    assert filtered.counts == {"records_in": 2, "records_out": 1, "failures": 0, "filtered": 1}
    routes = {"a": apply(label("a")), "other": apply(label("z"))}
    defaulted = Chain("c", [Router("pick", routes, default="other", **choose)]).run(
        [Num(x=0), Num(x=1)], output_dir=tmp_path / "run2"
    )
    assert [r["pick.label"] for r in defaulted.flattened()] == ["a0", "z1"]


def test_a_bad_choice_or_a_raising_chooser_fails_only_that_record(run_dir: Path) -> None:
    def choose(n: Num, record: RecordView) -> str:
        if n.x == 1:
            return "nowhere"
        if n.x == 2:
            raise ValueError("cannot decide")
        return "a"

    result = Chain("c", [Router("pick", {"a": apply(label("a"))}, by=choose)]).run(
        [Num(x=i) for i in range(4)], output_dir=run_dir
    )
    messages = {f["_index"]: f["message"] for f in result.failures()}
    assert "'nowhere', which is not a route" in messages[1]
    assert "raised ValueError: cannot decide" in messages[2]
    assert [r["_index"] for r in result.flattened()] == [0, 3]


def test_fan_out_sends_a_record_down_every_route_it_names(run_dir: Path) -> None:
    router = Router(
        "both", {"e": apply(label("e")), "o": apply(label("o"))}, by=lambda n: ["e", "o"], fan_out=True
    )
    rows = list(Chain("c", [router]).run([Num(x=1), Num(x=2)], output_dir=run_dir).flattened())
    assert [(r["_id"].rsplit(".", 1)[1], r["both.label"]) for r in rows] == [
        ("e", "e1"),
        ("o", "o1"),
        ("e", "e2"),
        ("o", "o2"),
    ]
    no_fan = Router("one", {"e": apply(label("e")), "o": apply(label("o"))}, by=lambda n: ["e", "o"])
    result = Chain("c", [no_fan]).run([Num(x=1)], output_dir=run_dir.parent / "run2")
    assert "without fan_out=True" in next(result.failures())["message"]


def test_steps_in_routes_and_templates_after_the_router_are_checked(run_dir: Path) -> None:
    def step(id: str, prompt: str, model: type[BaseModel] = Question) -> Step:
        return Step(id=id, input_model=model, output_model=Answer, engine_name="fake", user_prompt=prompt)

    router = Router("r", {"a": step("qa_a", "{{ text }}"), "b": step("qa_b", "{{ text }}")}, by=lambda q: "a")
    good = Chain("c", [router, step("after", "{{ input.text }} {{ r.answer }}", Answer)])
    assert good.check().errors == []
    rows = list(good.run([Question(text="hi")], output_dir=run_dir).flattened())
    assert isinstance(rows[0]["r.answer"], str) and isinstance(rows[0]["after.answer"], str)

    bad = Chain("c", [router, step("after", "{{ r.nope }} {{ qa_b.answer }}", Answer)])
    messages = [e.message for e in bad.check().errors]
    assert any("Answer has no field 'nope'" in m for m in messages)
    assert any("'qa_b' runs inside route 'b' of router 'r'" in m for m in messages)


def test_router_definition_mistakes_are_refused() -> None:
    with pytest.raises(ChainDefinitionError, match="say how a route is chosen"):
        Router("r", {"a": apply(label("a"))})
    with pytest.raises(ChainDefinitionError, match="default 'c' is not one of its routes"):
        Router("r", {"a": apply(label("a"))}, by="kind", default="c")
    with pytest.raises(ChainDefinitionError, match="used more than once: r"):
        Chain("c", [apply(label("r"), id="r"), Router("r", {"a": apply(label("a"))}, by="kind")])


def test_the_graph_records_the_routes(run_dir: Path) -> None:
    Chain("c", [parity_router()]).run([Num(x=1)], output_dir=run_dir)
    graph = json.loads((run_dir / "graph.json").read_text())
    router = next(n for n in graph["nodes"] if n["id"] == "parity")
    assert router["kind"] == "router" and router["routes"] == {"even": ["label_e"], "odd": ["label_o"]}
    labels = {(e["from"], e["to"]): e.get("label") for e in graph["edges"]}
    assert labels[("parity", "label_e")] == "even" and labels[("input", "parity")] is None


def test_an_apply_hinted_to_return_a_union_gets_the_variant_checks_of_a_union_step(run_dir: Path) -> None:
    def split(n: Num) -> Even | Odd | None:
        return Even(half=n.x // 2) if n.x % 2 == 0 else Odd(rest=n.x)

    def from_even(e: Even) -> Out:
        return Out(label=f"half {e.half}")

    node = apply(split)
    assert node.output_model is None and node.output_variants == (Even, Odd)
    missing = Chain("c", [node, Router("variant", {Even: apply(from_even)})]).check()
    assert any("no route takes Odd" in e.message for e in missing.errors)
    covered = Chain("c", [node, Router("variant", {Even: apply(from_even)}, default="Even")]).check()
    assert covered.errors == []
    named = Chain("c", [node]).describe()["nodes"][0]["output_model"].split(" | ")
    assert [n.rsplit(".", 1)[1] for n in named] == ["Even", "Odd"]  # graph.json names the union
