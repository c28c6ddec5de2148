"""Whole-stream operations: ``take`` (first n; stops reading the input at the head of a chain),
``shuffle`` (seeded, bounded buffer) and ``a | b | c`` composition."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel
from tests.helpers import read_jsonl

from chainette import Chain, ChainDefinitionError, Router, apply, shuffle, take
from chainette.graph.nodes import Branch, Seq


class Num(BaseModel):
    x: int


def inc(n: Num) -> Num:
    return Num(x=n.x + 1)


def double(n: Num) -> Num:
    return Num(x=n.x * 2)


def flattened(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return read_jsonl(path / "flattened")


def metadata(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((path / "metadata.json").read_text())


def numbers(n: int, seen: list[int]) -> Iterator[Num]:
    for k in range(n):
        seen.append(k)
        yield Num(x=k)


def test_pipe_composes_nodes_like_a_list(tmp_path: Path) -> None:
    piped = Chain("p", apply(inc) | apply(double) | apply(inc, id="inc2"))
    listed = Chain("l", [apply(inc), apply(double), apply(inc, id="inc2")])
    assert [n.id for n in piped.items] == [n.id for n in listed.items] == ["inc", "double", "inc2"]
    a = piped.run([Num(x=k) for k in range(5)], tmp_path / "a")
    b = listed.run([Num(x=k) for k in range(5)], tmp_path / "b")
    assert (
        [r["inc2.x"] for r in flattened(a.path)]
        == [r["inc2.x"] for r in flattened(b.path)]
        == [(k + 1) * 2 + 1 for k in range(5)]
    )


def test_pipe_as_one_node_inside_a_route_and_a_branch(tmp_path: Path) -> None:
    def big(n: Num) -> Num:
        return Num(x=n.x + 100)

    body = apply(inc) | apply(double)
    assert isinstance(body, Seq) and len(body) == 2
    router = Router("r", {"low": body, "high": apply(big)}, by=lambda n: "low" if n.x < 2 else "high")
    chain = Chain("c", [router, [Branch("side", [apply(inc, id="again") | apply(double, id="twice")])]])
    result = chain.run([Num(x=k) for k in range(4)], tmp_path / "run")
    rows = flattened(result.path)
    assert [r["r.x"] for r in rows] == [2, 4, 102, 103]
    assert metadata(result.path)["nodes"]["twice"]["records_out"] == 4  # the branch ran the sequence


def test_take_passes_the_first_n_and_stops_reading_the_input(tmp_path: Path) -> None:
    seen: list[int] = []
    chain = Chain("t", [take(25), apply(inc)], batch_size=10)
    result = chain.run(numbers(100_000, seen), tmp_path / "run", buffer=2)
    rows = flattened(result.path)
    assert [r["inc.x"] for r in rows] == list(range(1, 26))
    meta = metadata(result.path)
    # every record read is accounted for: passed on or counted as filtered by take
    assert meta["counts"]["records_in"] == meta["counts"]["records_out"] + meta["counts"]["filtered"]
    assert meta["nodes"]["take_25"]["filtered"] == meta["counts"]["records_in"] - 25
    assert len(seen) < 200  # the input stops soon after the 25th record (chunks in flight only)


def test_take_after_shuffle_samples_the_whole_input(tmp_path: Path) -> None:
    seen: list[int] = []
    chain = Chain("t", [shuffle(seed=3, buffer=1000), take(10)], batch_size=50)
    result = chain.run(numbers(500, seen), tmp_path / "run")
    assert len(seen) == 500  # a shuffle before take must see everything
    xs = [r["input.x"] for r in flattened(result.path)]
    assert len(xs) == 10 and len(set(xs)) == 10
    assert xs != list(range(10))
    assert metadata(result.path)["counts"]["filtered"] == 490


def run_shuffle(tmp_path: Path, name: str, *, seed: int, buffer: int, n: int = 300) -> list[int]:
    chain = Chain("s", [shuffle(seed=seed, buffer=buffer), apply(inc)], batch_size=16)
    result = chain.run([Num(x=k) for k in range(n)], tmp_path / name)
    return [r["input.x"] for r in flattened(result.path)]


def test_shuffle_is_a_seeded_permutation(tmp_path: Path) -> None:
    first = run_shuffle(tmp_path, "a", seed=1, buffer=1000)
    again = run_shuffle(tmp_path, "b", seed=1, buffer=1000)
    other = run_shuffle(tmp_path, "c", seed=2, buffer=1000)
    assert sorted(first) == list(range(300))  # nothing lost or doubled
    assert first == again  # same seed, same order
    assert first != other and first != list(range(300))


def test_shuffle_buffer_bounds_how_far_records_move(tmp_path: Path) -> None:
    order = run_shuffle(tmp_path, "small", seed=0, buffer=8, n=400)
    assert sorted(order) == list(range(400))
    # a record leaves the buffer only when later ones arrive: none comes out more than ~buffer early
    assert all(x <= pos + 8 for pos, x in enumerate(order))
    assert order != list(range(400))


def test_whole_stream_nodes_are_refused_inside_containers() -> None:
    with pytest.raises(ChainDefinitionError, match="top level"):
        Chain("c", [[Branch("b", [take(3)])]])
    with pytest.raises(ChainDefinitionError, match="take"):
        Chain("c", [Router("r", {"a": take(2)}, by=lambda n: "a")])
    with pytest.raises(ChainDefinitionError, match="n must be"):
        take(0)


def test_graph_json_records_stream_ops(tmp_path: Path) -> None:
    chain = Chain("g", shuffle(seed=4, buffer=5) | take(2) | apply(inc))
    result = chain.run([Num(x=k) for k in range(3)], tmp_path / "run")
    graph = json.loads((result.path / "graph.json").read_text())
    kinds = {n["id"]: (n["kind"], n.get("n"), n.get("seed")) for n in graph["nodes"]}
    assert kinds["take_2"] == ("take", 2, None)
    assert kinds["shuffle"] == ("shuffle", None, 4)
