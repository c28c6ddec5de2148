"""Map / collect: one child record per list item (``<parent>/<k>``), the body run over the
children with the usual runners, the outputs collected back in item order under the map's id;
child failures per ``on_child_failure``; ``join_k``; bounded memory; checked before running."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import anyio.lowlevel
import pytest
from pydantic import BaseModel, Field
from tests.helpers import Summary, read_jsonl

from chainette import (
    Branch,
    Chain,
    ChainDefinitionError,
    ChatRequest,
    Collected,
    Map,
    RecordView,
    Step,
    TemplateError,
    apply,
    register_engine,
)
from chainette.runtime.records import Record


class Chapter(BaseModel):
    title: str
    paragraphs: list[str]


class Para(BaseModel):
    text: str


class Pair(BaseModel):
    text: str
    lang: str


class Defaulted(BaseModel):
    text: str
    lang: str = "en"


class Count(BaseModel):
    words: int


class Tag(BaseModel):
    tag: str


class Synopsis(BaseModel):
    synopsis: str = Field(max_length=400)


def user_prompt(request: ChatRequest) -> str:
    return str(request.messages[-1]["content"])


def echo(request: ChatRequest) -> dict[str, str]:
    """The fake engine's answer: the user prompt itself, so tests see what each child rendered."""
    return {"summary": user_prompt(request)[:120], "synopsis": user_prompt(request)[:400]}


@pytest.fixture(autouse=True)
def fake_engine() -> None:
    register_engine("fake", backend="fake", responder=echo)


def summarise(prompt: str = "{{ text }}", **options: Any) -> Step:
    return Step(
        id="summ", input_model=Para, output_model=Summary, engine_name="fake", user_prompt=prompt, **options
    )


def count_words(p: Para) -> Count:
    if p.text == "boom":
        raise ValueError("cannot count a boom")
    return Count(words=len(p.text.split()))


def chapters(*lists: list[str]) -> list[Chapter]:
    return [Chapter(title=f"ch{i}", paragraphs=paras) for i, paras in enumerate(lists)]


def collected(result: Any, map_id: str = "m") -> list[dict[str, Any]]:
    return [
        {k.split(".", 1)[1]: v for k, v in row.items() if k.startswith(map_id + ".")}
        for row in result.flattened()
    ]


def test_children_run_in_item_order_with_lineage_ids_and_typed_items(run_dir: Path) -> None:
    def tag(ch: Chapter) -> Tag:
        return Tag(tag=ch.title.upper())

    seen: list[Any] = []

    def after(ch: Chapter, record: RecordView) -> Chapter:
        seen.append(record["m"])
        return ch

    body = summarise("{{ input.title }}/{{ tag.tag }}: {{ text }}")
    chain = Chain(
        "c", [[Branch("t", [apply(tag)]).join("tag")], Map("m", body, over="paragraphs"), apply(after)]
    )
    result = chain.run(chapters(["a", "b", "c"], ["d"]), output_dir=run_dir)

    rows = list(result.flattened())
    ids = [r["_id"] for r in rows]
    assert [i["summary"] for i in rows[0]["m.items"]] == ["ch0/CH0: a", "ch0/CH0: b", "ch0/CH0: c"]
    assert [i["summary"] for i in rows[1]["m.items"]] == ["ch1/CH1: d"]
    assert rows[0]["after.paragraphs"] == ["a", "b", "c"]  # the value goes on unchanged
    step_rows = {r["_id"]: r["summary"] for r in read_jsonl(run_dir / "summ")}
    assert step_rows == {
        f"{ids[0]}/0": "ch0/CH0: a",
        f"{ids[0]}/1": "ch0/CH0: b",
        f"{ids[0]}/2": "ch0/CH0: c",
        f"{ids[1]}/0": "ch1/CH1: d",
    }
    assert all(isinstance(c, Collected) and type(c).__name__ == "MCollected" for c in seen)
    assert all(isinstance(item, Summary) for c in seen for item in c.items)
    # ``after`` sees each record as it finishes (the one-paragraph chapter may come first)
    assert sorted((c.total, c.failed, c.filtered, c.skipped) for c in seen) == [(1, [], 0, 0), (3, [], 0, 0)]
    assert result.counts == {"records_in": 2, "records_out": 2, "failures": 0, "filtered": 0}
    stats = result.metadata["nodes"]
    assert {k: stats["m"][k] for k in ("records_in", "records_out", "done", "failed")} == {
        "records_in": 2,
        "records_out": 2,
        "done": 2,
        "failed": 0,
    }
    assert stats["summ"]["records_in"] == 4 and stats["summ"]["requests"] == 4


def test_a_later_step_reads_the_collected_items(run_dir: Path) -> None:
    synopsis = Step(
        id="syn",
        input_model=Chapter,
        output_model=Synopsis,
        engine_name="fake",
        user_prompt="{% for s in m.items %}[{{ s.summary }}]{% endfor %} of {{ m.total }}",
    )
    chain = Chain("c", [Map("m", summarise(), over="paragraphs"), synopsis])
    rows = list(chain.run(chapters(["x", "y"]), output_dir=run_dir).flattened())
    assert rows[0]["syn.synopsis"] == "[x][y] of 2"


def test_over_may_be_a_function_of_the_value_or_of_the_value_and_the_record(
    run_dir: Path, tmp_path: Path
) -> None:
    def split(ch: Chapter) -> list[str]:
        return ch.title.split("-")

    plain = Chain("c", [Map("m", apply(count_words), over=split)]).run(
        [Chapter(title="one two-three", paragraphs=[])], output_dir=run_dir
    )
    assert [i["words"] for i in collected(plain)[0]["items"]] == [2, 1]

    def from_record(ch: Chapter, record: RecordView) -> list[Para]:
        return [Para(text=f"{record.input.title} {p}") for p in ch.paragraphs]

    with_record = Chain("c", [Map("m", apply(count_words), over=from_record)]).run(
        chapters(["a b", "c"]), output_dir=tmp_path / "run2"
    )
    assert [i["words"] for i in collected(with_record)[0]["items"]] == [3, 2]


def test_scalar_items_are_wrapped_in_item_field(run_dir: Path) -> None:
    def show(p: Pair) -> Tag:
        return Tag(tag=f"{p.lang}:{p.text}")

    def items(ch: Chapter) -> list[Any]:
        return ["a", {"text": "b", "lang": "fr"}, Pair(text="c", lang="de")]

    wrap = apply(show, input_model=Pair)
    with pytest.raises(ChainDefinitionError, match="item_field='nope' is not a field of Pair"):
        Map("m", wrap, over=items, item_field="nope")

    def show_defaulted(p: Defaulted) -> Tag:
        return Tag(tag=f"{p.lang}:{p.text}")

    chain = Chain("c", [Map("m", apply(show_defaulted), over=items, item_field="text")])
    rows = collected(chain.run(chapters([]), output_dir=run_dir))
    assert [i["tag"] for i in rows[0]["items"]] == ["en:a", "fr:b", "de:c"]


def test_a_scalar_item_without_an_item_field_fails_the_record_before_any_child(run_dir: Path) -> None:
    def show(p: Pair) -> Tag:
        return Tag(tag=p.text)

    chain = Chain("c", [Map("m", apply(show), over=lambda ch: [{"text": "a", "lang": "x"}, 7])])
    result = chain.run(chapters([]), output_dir=run_dir)
    [failure] = list(result.failures())
    assert failure["node"] == "m" and "item 1 of over is a int" in failure["message"]
    assert "item_field=" in failure["message"]
    assert "show" not in result.metadata["nodes"]  # no child ran


def test_on_child_failure_fail_fails_the_record_naming_the_first_failed_child(run_dir: Path) -> None:
    chain = Chain("c", [Map("m", apply(count_words), over="paragraphs")])
    result = chain.run(chapters(["a", "boom", "b", "boom"], ["ok fine"]), output_dir=run_dir)
    failures = list(result.failures())
    parent = next(f for f in failures if f["node"] == "m")
    children = [f for f in failures if f["node"] == "count_words"]
    first = parent["_id"]
    assert "_parent" not in parent
    assert f"item 1 (child {first}/1) failed at 'count_words'" in parent["message"]
    assert "cannot count a boom" in parent["message"] and "on_child_failure='skip'" in parent["message"]
    assert sorted(f["_id"] for f in children) == [f"{first}/1", f"{first}/3"]
    assert all(f["_parent"] == first for f in children)
    assert [r["m.items"] for r in result.flattened()] == [[{"words": 2}]]
    top_level = [f["_id"] for f in failures if "_parent" not in f] + [r["_id"] for r in result.flattened()]
    assert len(top_level) == len(set(top_level)) == 2  # each input once, counted on top-level ids
    assert result.metadata["nodes"]["m"]["failed"] == 1 and result.metadata["nodes"]["m"]["done"] == 2


def test_on_child_failure_skip_and_partial(run_dir: Path, tmp_path: Path) -> None:
    inputs = chapters(["a", "boom", "b c"])
    skip = Chain("c", [Map("m", apply(count_words), over="paragraphs", on_child_failure="skip")])
    [row] = collected(skip.run(inputs, output_dir=run_dir))
    assert row["items"] == [{"words": 1}, {"words": 2}]
    assert row["failed"] == [1] and "cannot count a boom" in row["errors"]["1"]
    assert [f["_parent"] for f in read_jsonl(run_dir / "failures.jsonl")] == [
        next(iter(read_jsonl(run_dir / "flattened")))["_id"]
    ]

    partial = Chain("c", [Map("m", apply(count_words), over="paragraphs", on_child_failure="partial")])
    result = partial.run(inputs, output_dir=tmp_path / "partial")
    [row] = collected(result)
    assert row["items"] == [{"words": 1}, None, {"words": 2}]  # positions align with the list
    assert row["failed"] == [1] and list(row["errors"]) == ["1"]
    assert len(list(result.failures())) == 1  # the child's row, still written


def test_a_filtered_child_is_counted_and_left_out_and_a_fan_out_child_gives_all_its_outputs(
    run_dir: Path,
) -> None:
    def split_or_drop(p: Para) -> list[Para] | None:
        if p.text == "drop":
            return None
        return [Para(text=w) for w in p.text.split()]

    chain = Chain("c", [Map("m", [apply(split_or_drop), apply(count_words)], over="paragraphs")])
    result = chain.run(chapters(["a b", "drop", "c"]), output_dir=run_dir)
    [row] = collected(result)
    assert row["items"] == [{"words": 1}] * 3  # a, b (from child 0), c (from child 2)
    assert (row["total"], row["filtered"], row["failed"]) == (3, 1, [])
    assert result.metadata["nodes"]["split_or_drop"]["filtered"] == 1
    assert list(result.failures()) == []


def test_a_child_with_one_failed_fan_out_output_is_a_failed_child(run_dir: Path) -> None:
    def split(p: Para) -> list[Para]:
        return [Para(text=w) for w in p.text.split()]

    body = [apply(split), apply(count_words)]
    chain = Chain("c", [Map("m", body, over="paragraphs", on_child_failure="partial")])
    result = chain.run(chapters(["a boom b", "c"]), output_dir=run_dir)
    [row] = collected(result)
    assert row["items"] == [None, {"words": 1}]  # child 0's outputs for a and b are not kept
    assert row["failed"] == [0]
    [failure] = list(result.failures())
    assert failure["_id"].endswith("/0.1") and failure["_parent"] + "/0.1" == failure["_id"]


def test_an_empty_list_collects_nothing_and_the_record_goes_on(run_dir: Path) -> None:
    result = Chain("c", [Map("m", summarise(), over="paragraphs")]).run(
        chapters([], ["x"]), output_dir=run_dir
    )
    rows = collected(result)
    assert rows[0] == {"items": [], "total": 0, "failed": [], "filtered": 0, "skipped": 0, "errors": {}}
    assert len(rows[1]["items"]) == 1
    assert result.counts["filtered"] == 0


def test_a_bad_over_value_fails_the_record_with_the_reason(run_dir: Path) -> None:
    def explode(ch: Chapter) -> list[str]:
        raise RuntimeError("no list today")

    result = Chain("c", [Map("m", apply(count_words), over=explode)]).run(chapters(["a"]), output_dir=run_dir)
    [failure] = list(result.failures())
    assert failure["node"] == "m" and "over raised RuntimeError: no list today" in failure["message"]
    result = Chain("c", [Map("m", apply(count_words), over=lambda ch: "abc")]).run(
        chapters(["a"]), output_dir=run_dir, overwrite=True
    )
    [failure] = list(result.failures())
    assert "over gave str, not a list" in failure["message"]


def test_join_k_sends_only_the_requests_it_needs_and_a_rerun_makes_the_same_choice(
    run_dir: Path, tmp_path: Path
) -> None:
    sent: list[str] = []

    def answer(request: ChatRequest) -> Any:
        sent.append(request.tag.split("/", 1)[1])  # the child's id
        text = user_prompt(request)
        return "not json" if text.startswith("bad") else {"summary": text}

    register_engine("fake", backend="fake", responder=answer)
    body = summarise(max_reasks=0)
    chain = Chain("c", [Map("m", body, over="paragraphs", join_k=2, on_child_failure="skip", child_batch=64)])
    inputs = chapters(["a", "bad1", "b", "c", "d"], ["bad2", "bad3", "e"], ["f", "g", "h"])
    result = chain.run(inputs, output_dir=run_dir, ordered=True)
    rows = collected(result)
    ids = [r["_id"] for r in result.flattened()]
    assert [[i["summary"] for i in r["items"]] for r in rows] == [["a", "b"], ["e"], ["f", "g"]]
    assert [(r["total"], r["skipped"], r["failed"]) for r in rows] == [
        (5, 2, [1]),
        (3, 0, [0, 1]),
        (3, 1, []),
    ]
    # a, bad1 → one success: then b alone. bad2, bad3 → none: then e (the list ends). f, g.
    assert sorted(sent) == sorted(
        [f"{ids[0]}/{k}" for k in (0, 1, 2)]
        + [f"{ids[1]}/{k}" for k in (0, 1, 2)]
        + [f"{ids[2]}/{k}" for k in (0, 1)]
    )
    assert result.metadata["cache"]["sent"] == 8

    sent.clear()
    again = chain.run(inputs, output_dir=tmp_path / "again", ordered=True)
    assert sent == [] and again.metadata["cache"]["sent"] == 0  # the ledger holds every answer needed
    assert collected(again) == rows


def test_join_k_with_fail_stops_a_record_at_its_first_failure(run_dir: Path) -> None:
    def answer(request: ChatRequest) -> Any:
        text = user_prompt(request)
        return "not json" if text.startswith("bad") else {"summary": text}

    register_engine("fake", backend="fake", responder=answer)
    chain = Chain("c", [Map("m", summarise(max_reasks=0), over="paragraphs", join_k=1)])
    result = chain.run(chapters(["bad", "a", "b"]), output_dir=run_dir)
    assert result.metadata["cache"]["sent"] == 1
    [parent] = [f for f in result.failures() if f["node"] == "m"]
    assert "item 0" in parent["message"] and "not valid JSON" in parent["message"]


def test_a_map_inside_a_map_and_inside_a_joined_branch(run_dir: Path) -> None:
    class Book(BaseModel):
        chapters: list[Chapter]

    inner = Map("words", apply(count_words), over="paragraphs", on_child_failure="skip")

    def total(ch: Chapter, record: RecordView) -> Count:
        return Count(words=sum(c.words for c in record["words"].items))

    outer = Map("per_chapter", [inner, apply(total)], over="chapters")
    chain = Chain("c", [[Branch("b", [outer]).join("done")]])
    book = Book(chapters=chapters(["a b", "boom"], ["c", "d e f"]))
    result = chain.run([book], output_dir=run_dir)
    [row] = list(result.flattened())
    assert row["per_chapter.items"] == [{"words": 2}, {"words": 4}]
    [failure] = list(result.failures())  # the inner child's, marked with its parent (an outer child)
    assert failure["_id"] == f"{row['_id']}/0/1" and failure["_parent"] == f"{row['_id']}/0"


def test_graph_json_draws_the_body_inside_the_map(run_dir: Path) -> None:
    after = apply(lambda ch: ch, id="after", input_model=Chapter, output_model=Chapter)
    chain = Chain("c", [Map("m", [summarise(), apply(lambda s: s, id="keep")], over="paragraphs"), after])
    graph = chain.describe()
    edges = {(e["from"], e["to"], e.get("label")) for e in graph["edges"]}
    assert edges == {
        ("input", "m", None),
        ("m", "summ", "each"),
        ("summ", "keep", None),
        ("keep", "m", "collect"),
        ("m", "after", None),
    }
    parents = {n["id"]: n.get("parent") for n in graph["nodes"]}
    assert parents == {"m": None, "summ": "m", "keep": "m", "after": None}
    m = next(n for n in graph["nodes"] if n["id"] == "m")
    assert (m["kind"], m["over"], m["body"], m["output_model"]) == (
        "map",
        "paragraphs",
        ["summ", "keep"],
        "chainette.graph.map.MCollected",
    )
    mermaid = chain.to_mermaid()
    assert 'subgraph sg_0 ["map m"]' in mermaid and 'summ -->|"each"|' not in mermaid
    assert 'm -->|"each"| summ' in mermaid and 'keep -->|"collect"| m' in mermaid
    chain.run(chapters(["a"]), output_dir=run_dir)
    assert json.loads((run_dir / "graph.json").read_text())["edges"] == graph["edges"]


# --- checks ---------------------------------------------------------------------------------


def errors(chain: Chain) -> list[str]:
    return [i.message for i in chain.check().errors]


def test_over_must_name_a_list_field_of_the_current_model() -> None:
    assert errors(Chain("c", [Map("m", summarise(), over="paragraphz", input_model=Chapter)])) == [
        "Map 'm': over='paragraphz' is not a field of Chapter (fields: title, paragraphs). Did you mean "
        "'paragraphs'? Name a list field, or pass over=fn(value) returning the list."
    ]
    [message] = errors(Chain("c", [Map("m", summarise(), over="title", input_model=Chapter)]))
    assert "is Chapter.title (str), not a list" in message

    class Pairs(BaseModel):
        pairs: list[str]

    def show(p: Pair) -> Tag:
        return Tag(tag=p.text)

    [message] = errors(
        Chain(
            "c",
            [
                apply(lambda x: x, id="start", input_model=Pairs, output_model=Pairs),
                Map("m", apply(show), over="pairs"),
            ],
        )
    )
    assert "the items of Pairs.pairs are str" in message and "item_field=" in message

    class Rows(BaseModel):
        rows: list[dict[str, Any]]

    start = apply(lambda x: x, id="start", input_model=Rows, output_model=Rows)
    assert errors(Chain("c", [start, Map("m", apply(show), over="rows")])) == []  # dicts go in as they are


def test_the_body_is_checked_with_the_item_model_and_sees_earlier_outputs() -> None:
    ok = Chain(
        "c", [Map("m", summarise("{{ input.title }} {{ text }}"), over="paragraphs", input_model=Chapter)]
    )
    assert errors(ok) == []
    bad = Chain("c", [Map("m", summarise("{{ txt }}"), over="paragraphs", input_model=Chapter)])
    [message] = errors(bad)
    assert "Step 'summ' user_prompt line 1 uses {{ txt }}; Para has no field 'txt'" in message
    own = Chain("c", [Map("m", summarise("{{ m.items }}"), over="paragraphs", input_model=Chapter)])
    [message] = errors(own)
    assert "{{ m.items }}" in message and "no earlier step or alias has that name" in message


def test_after_the_map_only_its_collected_model_is_visible() -> None:
    def later(prompt: str) -> Step:
        return Step(
            id="later", input_model=Chapter, output_model=Synopsis, engine_name="fake", user_prompt=prompt
        )

    body = summarise()
    assert (
        errors(
            Chain(
                "c",
                [
                    Map("m", body, over="paragraphs", input_model=Chapter),
                    later("{{ m.items }} {{ m.total }}"),
                ],
            )
        )
        == []
    )
    [message] = errors(
        Chain("c", [Map("m", summarise(), over="paragraphs", input_model=Chapter), later("{{ m.nope }}")])
    )
    assert "MCollected has no field 'nope'" in message
    [message] = errors(
        Chain(
            "c", [Map("m", summarise(), over="paragraphs", input_model=Chapter), later("{{ summ.summary }}")]
        )
    )
    assert "'summ' runs inside map 'm'" in message and "{{ m.items }}" in message
    with pytest.raises(TemplateError, match="runs inside map 'm'"):
        Chain(
            "c", [Map("m", summarise(), over="paragraphs", input_model=Chapter), later("{{ summ.summary }}")]
        ).run(chapters(["a"]))


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"join_k": 0}, "join_k must be an integer >= 1, got 0"),
        ({"child_batch": 0}, "child_batch must be an integer >= 1, got 0"),
        ({"concurrency": -1}, "concurrency must be an integer >= 1, got -1"),
        ({"on_child_failure": "ignore"}, "on_child_failure must be one of 'fail', 'skip', 'partial'"),
        ({"over": 3}, "over must name a list field"),
    ],
)
def test_bad_options_are_refused_at_definition(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ChainDefinitionError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        Map("m", summarise(), **{"over": "paragraphs", **options})
    with pytest.raises(ChainDefinitionError, match="empty body"):
        Map("m", [], over="paragraphs")


# --- bounded memory -------------------------------------------------------------------------


def test_a_huge_list_and_many_records_run_in_bounded_memory(run_dir: Path) -> None:
    child_batch, concurrency = 50, 3
    bound = child_batch * concurrency
    probe = {"alive": 0, "max_alive": 0, "entered": 0, "max_records": 0}

    def children_alive() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is Record and "/" in o.id) - before

    gc.collect()
    before = 0
    before = children_alive()  # child records other tests left behind (still referenced) are not ours

    def enter(p: Para) -> Para:
        probe["alive"] += 1
        probe["entered"] += 1
        probe["max_alive"] = max(probe["max_alive"], probe["alive"])
        if probe["entered"] % 2000 == 1:
            probe["max_records"] = max(probe["max_records"], children_alive())
        return p

    async def pause(p: Para) -> Para:
        await anyio.lowlevel.checkpoint()  # lets other sub-chunks run
        return p

    def leave(p: Para) -> Count:
        probe["alive"] -= 1
        return Count(words=len(p.text))

    body = [apply(enter), apply(pause), apply(leave)]
    inputs = [Chapter(title="huge", paragraphs=["x" * (k % 7) for k in range(10_000)])]
    inputs += [Chapter(title=f"small {i}", paragraphs=["ab"] * (i % 4)) for i in range(2_000)]
    chain = Chain("c", [Map("m", body, over="paragraphs", child_batch=child_batch, concurrency=concurrency)])
    result = chain.run(inputs, output_dir=run_dir, ordered=True)

    assert probe["entered"] == 10_000 + sum(i % 4 for i in range(2_000))
    assert 1 < probe["max_alive"] <= bound  # sub-chunks overlap, never more than the bound
    assert 0 < probe["max_records"] <= bound  # children are made as they are needed, not up front
    rows = collected(result)
    assert len(rows) == 2_001 and result.counts["failures"] == 0
    assert [i["words"] for i in rows[0]["items"]] == [k % 7 for k in range(10_000)]
    assert [len(r["items"]) for r in rows[1:]] == [i % 4 for i in range(2_000)]


def test_progress_events_count_the_items_collected(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []

    def listen(kind: str, data: dict[str, Any]) -> None:
        if kind == "node_progress" and data["node"] == "m" and "detail" in data:
            events.append(data)

    from chainette import Map

    chain = Chain("c", [Map("m", apply(_upper_para), over="paragraphs", input_model=_Doc)])
    chain.run(
        [_Doc(paragraphs=["a", "b"]), _Doc(paragraphs=["c", "d", "e"])], tmp_path / "run", on_event=listen
    )
    assert events[-1]["detail"] == "5 items" and events[-1]["done"] == 2


class _Doc(BaseModel):
    paragraphs: list[str]


class _Para(BaseModel):
    text: str


def _upper_para(p: _Para) -> _Para:
    return _Para(text=p.text.upper())
