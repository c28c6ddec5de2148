"""Consecutive sync ``apply`` nodes run in one pass per record (``apply_fused.run_fused``): the
same rows, failures, ``_index`` and per-node files and counts as node by node."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from chainette import Chain, apply
from chainette.runtime import apply_runner, stages


class Num(BaseModel):
    x: int


def add_one(n: Num) -> Num:
    return Num(x=n.x + 1)


def picky(n: Num) -> Num | list[Num] | None:
    """Raises on some records, filters some, fans some out, in the middle of the fused run."""
    if n.x % 7 == 3:
        raise ValueError(f"no {n.x}")
    if n.x % 5 == 0:
        return None
    if n.x % 4 == 0:
        return [Num(x=n.x * 10), Num(x=n.x * 10 + 1)]
    return Num(x=n.x * 2)


def square(n: Num) -> Num:
    if n.x == 38:
        raise RuntimeError("38 again")
    return Num(x=n.x * n.x)


def _run(run_dir: Path) -> dict[str, Any]:
    chain = Chain(
        "c",
        [apply(add_one, write=True), apply(picky, write=True), apply(square, write=True)],
        batch_size=8,
    )
    result = chain.run([Num(x=i) for i in range(60)], output_dir=run_dir, overwrite=True)

    def by_id(rows: Any) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda r: (r["_index"], r["_id"], r.get("node", "")))

    return {
        "flattened": list(result.flattened()),  # input order
        "failures": by_id(result.failures()),
        **{node: list(result.outputs(node)) for node in ("add_one", "picky", "square")},
        "counts": result.counts,
        "nodes": result.metadata["nodes"],
    }


def test_fused_run_gives_what_node_by_node_gives(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fused: list[list[str]] = []
    real = stages.run_fused

    def spy(nodes: Any, chunk: Any, ctx: Any) -> Any:
        fused.append([n.id for n in nodes])
        return real(nodes, chunk, ctx)

    monkeypatch.setattr(stages, "run_fused", spy)
    monkeypatch.setattr(apply_runner, "INLINE_BUDGET_S", 10.0)
    with_fusion = _run(run_dir / "fused")
    assert fused and all(ids == ["add_one", "picky", "square"] for ids in fused)
    assert len(fused) == 60 // 8  # every chunk after the first (each node's first chunk runs alone)

    monkeypatch.setattr(stages, "fused_run", lambda items, start, ctx, runner: start)
    alone = _run(run_dir / "alone")
    assert with_fusion == alone

    failures = with_fusion["failures"]
    raised = [f for f in failures if f["node"] == "picky"]
    assert [f["_index"] for f in raised] == [i for i in range(60) if (i + 1) % 7 == 3]
    assert all("ValueError" in f["message"] for f in raised)
    assert [(f["node"], f["_index"]) for f in failures if f["node"] != "picky"] == [("square", 18)]
    # records after a failure in the same chunk went on through every node (index 3: a fan-out of
    # two, 4: filtered); index 9 raised in a fused chunk, 10 went on
    flat = [r["_index"] for r in with_fusion["flattened"]]
    assert flat[:6] == [0, 1, 3, 3, 5, 6] and 9 not in flat and 10 in flat
    assert with_fusion["nodes"]["picky"]["failed"] == len(raised)


def test_a_node_moved_to_a_thread_breaks_the_fused_run(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = threading.get_ident()
    on_loop: list[bool] = []
    fused: list[list[str]] = []
    real = stages.run_fused

    def spy(nodes: Any, chunk: Any, ctx: Any) -> Any:
        fused.append([n.id for n in nodes])
        return real(nodes, chunk, ctx)

    def busy(n: Num) -> Num:  # slow by its own work (CPU) from the third chunk on
        on_loop.append(threading.get_ident() == main)
        if n.x >= 4:
            until = time.thread_time() + 0.004
            while time.thread_time() < until:
                pass
        return n

    def last(n: Num) -> Num:
        return Num(x=-n.x)

    monkeypatch.setattr(stages, "run_fused", spy)
    monkeypatch.setattr(apply_runner, "INLINE_BUDGET_S", 0.002)  # a 2-record chunk of busy: >= 8 ms
    result = Chain("c", [apply(add_one), apply(busy), apply(last)], batch_size=2).run(
        [Num(x=i) for i in range(12)], output_dir=run_dir
    )
    assert [r["last.x"] for r in result.flattened()] == [-(i + 1) for i in range(12)]
    # chunk 1: each alone (under budget); chunk 2: fused, over budget (busy's records x >= 4);
    # chunk 3: each alone again, busy over budget by its CPU time -> a worker thread; then
    # add_one and last have no fusable neighbour
    assert fused == [["add_one", "busy", "last"]]
    assert on_loop == [True] * 6 + [False] * 6
