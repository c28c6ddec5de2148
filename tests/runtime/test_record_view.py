"""Python nodes see the record: ``def f(value, record)`` reads earlier outputs, aliases and input."""

from __future__ import annotations

import time
from pathlib import Path

import anyio.lowlevel
import pytest
from pydantic import BaseModel
from tests.helpers import Answer, Question, qa_step

from chainette import Branch, Chain, RecordView, apply, register_engine


class Num(BaseModel):
    x: int


class Graded(BaseModel):
    question: str
    left: int
    right: int
    answer_length: int


@pytest.fixture(autouse=True)
def fake_engine() -> None:
    register_engine("fake", backend="fake")


def to_num(a: Answer) -> Num:
    return Num(x=len(a.answer))


def test_a_python_node_after_a_join_reads_both_branches_the_step_and_the_input(run_dir: Path) -> None:
    qa = qa_step("fake")

    def double(n: Num) -> Num:
        return Num(x=n.x * 2)

    def triple(n: Num) -> Num:
        return Num(x=n.x * 3)

    def grade(value: Num, record: RecordView) -> Graded:
        return Graded(
            question=record.input.text,
            left=record["l"].x,
            right=record["r"].x,
            answer_length=len(record["qa"].answer),
        )

    chain = Chain(
        "assess",
        [
            qa,
            apply(to_num),
            [Branch("left", [apply(double)]).join("l"), Branch("right", [apply(triple)]).join("r")],
            apply(grade),
        ],
    )
    result = chain.run([Question(text=f"q{i}") for i in range(5)], output_dir=run_dir, ordered=True)
    rows = list(result.flattened())
    assert len(rows) == 5 and result.counts["failures"] == 0
    for i, row in enumerate(rows):
        n = len(row["qa.answer"])
        assert (row["grade.question"], row["grade.left"], row["grade.right"]) == (f"q{i}", 2 * n, 3 * n)
        assert row["grade.answer_length"] == n


def test_one_argument_functions_and_optional_second_parameters_get_only_the_value(run_dir: Path) -> None:
    def plain(n: Num) -> Num:
        return Num(x=n.x + 1)

    def optional(n: Num, step: int = 10) -> Num:
        return Num(x=n.x + step)

    def hinted(n: Num, record: RecordView) -> Num:
        return Num(x=n.x + record.index)

    assert (apply(plain).wants_record, apply(optional).wants_record, apply(hinted).wants_record) == (
        False,
        False,
        True,
    )
    rows = list(
        Chain("c", [apply(plain), apply(optional), apply(hinted)])
        .run([Num(x=0)] * 3, output_dir=run_dir)
        .flattened()
    )
    assert [r["hinted.x"] for r in rows] == [11, 12, 13]


def test_async_and_threaded_functions_get_the_record_too(run_dir: Path) -> None:
    async def with_id(n: Num, record: RecordView) -> Num:
        await anyio.lowlevel.checkpoint()
        return Num(x=n.x + len(record.id))

    def slow(n: Num, record: RecordView) -> Num:  # > 5 ms per chunk: moves to a worker thread
        time.sleep(0.002)
        return Num(x=record["with_id"].x - len(record.id) + record.input.x)

    result = Chain("c", [apply(with_id), apply(slow)], batch_size=8).run(
        [Num(x=i) for i in range(24)], output_dir=run_dir
    )
    assert [r["slow.x"] for r in result.flattened()] == [2 * i for i in range(24)]


def test_reading_a_name_the_record_lacks_fails_that_record_naming_what_it_has(run_dir: Path) -> None:
    def reads_missing(n: Num, record: RecordView) -> Num:
        return record["nope"] if n.x == 1 else n

    result = Chain("c", [apply(reads_missing)]).run([Num(x=0), Num(x=1)], output_dir=run_dir)
    [failure] = list(result.failures())
    assert failure["_index"] == 1 and failure["node"] == "reads_missing"
    assert "'nope': no earlier output of this record has that name (it has: input)" in failure["message"]
    assert [r["_index"] for r in result.flattened()] == [0]


def test_inside_a_map_and_a_loop_the_view_names_the_parent_the_item_and_the_pass(run_dir: Path) -> None:
    from chainette import Map, Repeat

    class Doc(BaseModel):
        name: str
        parts: list[Num]

    seen: list[tuple[str | None, int | None, int, str]] = []

    def note(n: Num, record: RecordView) -> Num:
        seen.append((record.parent, record.item, record["twice"].iteration, record["tag"].name))
        return Num(x=n.x + 1)

    def tag(d: Doc) -> Doc:
        return d

    chain = Chain("c", [apply(tag), Map("each", Repeat("twice", 2, apply(note)), over="parts")])
    result = chain.run([Doc(name="d", parts=[Num(x=1), Num(x=2)])], output_dir=run_dir)
    [row] = list(result.flattened())
    assert [i["x"] for i in row["each.items"]] == [3, 4]
    parent = row["_id"]
    assert sorted(seen) == [
        (parent, 0, 0, "d"),
        (parent, 0, 1, "d"),
        (parent, 1, 0, "d"),
        (parent, 1, 1, "d"),
    ]
    top = RecordView("abc", 0, {})
    assert (top.parent, top.item) == (None, None)
    assert (RecordView("abc/3.1", 0, {}).parent, RecordView("abc/3.1", 0, {}).item) == ("abc", 3)
