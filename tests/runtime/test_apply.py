"""apply(): sync or async, 1→1, 1→N, filtering, errors, declared models."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel
from tests.helpers import Answer, Question, Summary, read_jsonl

from chainette import Branch, Chain, Step, apply, register_engine


class Num(BaseModel):
    x: int


def double(n: Num) -> Num:
    return Num(x=n.x * 2)


def test_python_steps_run_in_order_per_record(run_dir: Path) -> None:
    def add_one(n: Num) -> Num:
        return Num(x=n.x + 1)

    result = Chain("c", [apply(double), apply(add_one)]).run(
        [Num(x=i) for i in range(200)], output_dir=run_dir
    )
    rows = list(result.flattened())
    assert [r["add_one.x"] for r in rows] == [i * 2 + 1 for i in range(200)]  # one worker keeps input order
    assert [r["double.x"] for r in rows] == [i * 2 for i in range(200)]


def test_fan_out_gives_children_their_own_ids(run_dir: Path) -> None:
    def explode(n: Num) -> list[Num]:
        return [Num(x=n.x * 10 + k) for k in range(n.x)]

    result = Chain("c", [apply(explode)]).run([Num(x=0), Num(x=2), Num(x=3)], output_dir=run_dir)
    rows = list(result.flattened())
    assert [r["explode.x"] for r in rows] == [20, 21, 30, 31, 32]
    parent_ids = {r["_id"].rsplit(".", 1)[0] for r in rows}
    assert len(parent_ids) == 2 and all(r["_id"].endswith((".0", ".1", ".2")) for r in rows)
    assert result.counts["filtered"] == 1  # x=0 produced an empty list


def test_filter_by_returning_none(run_dir: Path) -> None:
    def keep_even(n: Num) -> Num | None:
        return n if n.x % 2 == 0 else None

    result = Chain("c", [apply(keep_even)]).run([Num(x=i) for i in range(10)], output_dir=run_dir)
    assert [r["keep_even.x"] for r in result.flattened()] == [0, 2, 4, 6, 8]
    assert result.counts["filtered"] == 5 and result.counts["failures"] == 0


def test_async_functions_are_awaited(run_dir: Path) -> None:
    async def slow_double(n: Num) -> Num:
        await anyio.lowlevel.checkpoint()
        return Num(x=n.x * 2)

    result = Chain("c", [apply(slow_double)]).run([Num(x=i) for i in range(5)], output_dir=run_dir)
    assert [r["slow_double.x"] for r in result.flattened()] == [0, 2, 4, 6, 8]


def test_exception_fails_only_that_record_with_location(run_dir: Path) -> None:
    def fragile(n: Num) -> Num:
        if n.x == 3:
            raise ValueError("three is right out")
        return n

    result = Chain("c", [apply(fragile)]).run([Num(x=i) for i in range(5)], output_dir=run_dir)
    [failure] = list(result.failures())
    assert failure["error_type"] == "apply_error" and failure["input"] == {"x": 3}
    assert "ValueError: three is right out" in failure["message"] and "test_apply.py:" in failure["message"]
    assert [r["fragile.x"] for r in result.flattened()] == [0, 1, 2, 4]


def test_output_that_does_not_fit_declared_model_fails(run_dir: Path) -> None:
    result = Chain("c", [apply(lambda n: {"y": 1}, id="bad", input_model=Num, output_model=Num)]).run(
        [Num(x=1)], output_dir=run_dir
    )
    [failure] = list(result.failures())
    assert "output does not fit Num" in failure["message"] and "field 'x'" in failure["message"]


def test_dict_outputs_are_validated_into_declared_model(run_dir: Path) -> None:
    register_engine("fake", backend="fake")
    to_q = apply(lambda n: {"text": f"n={n.x}"}, id="to_q", input_model=Num, output_model=Question)
    qa = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="fake", user_prompt="{{ text }}"
    )
    result = Chain("c", [to_q, qa]).run([Num(x=7)], output_dir=run_dir)
    assert [r["to_q.text"] for r in result.flattened()] == ["n=7"]


def test_write_true_gives_apply_its_own_folder(run_dir: Path) -> None:
    Chain("c", [apply(double, write=True)]).run([Num(x=2)], output_dir=run_dir)
    assert [r["x"] for r in read_jsonl(run_dir / "double")] == [4]


def test_fan_out_inside_a_joined_branch_is_a_failure_not_a_silent_drop(run_dir: Path) -> None:
    register_engine("fake", backend="fake")
    qa = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="fake", user_prompt="{{ text }}"
    )

    def twice(a: Answer) -> list[Summary]:
        return [Summary(summary="a"), Summary(summary="b")]

    result = Chain("c", [qa, [Branch("b", [apply(twice)]).join("both")]]).run(
        [Question(text="q")], output_dir=run_dir
    )
    [failure] = list(result.failures())
    assert failure["node"] == "both" and "produced 2 outputs" in failure["message"]


def test_cheap_functions_run_on_the_loop_and_slow_ones_move_to_threads(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from chainette.runtime import apply_runner

    threads: dict[str, list[bool]] = {"cheap": [], "slow": [], "busy": []}
    main = threading.get_ident()

    def cheap(n: Num) -> Num:
        threads["cheap"].append(threading.get_ident() == main)
        return n

    def slow(n: Num) -> Num:  # blocks without working: slow by the clock only
        threads["slow"].append(threading.get_ident() == main)
        time.sleep(0.004)
        return n

    def busy(n: Num) -> Num:  # slow by its own work (CPU)
        threads["busy"].append(threading.get_ident() == main)
        until = time.thread_time() + 0.004
        while time.thread_time() < until:
            pass
        return n

    monkeypatch.setattr(apply_runner, "INLINE_BUDGET_S", 0.002)  # a 2-record chunk of either takes >= 8 ms
    result = Chain("c", [apply(cheap), apply(slow), apply(busy)], batch_size=2).run(
        [Num(x=i) for i in range(8)], output_dir=run_dir
    )
    assert result.counts["records_out"] == 8
    # `busy` ran its first chunk on the loop, found its own work over budget, and used worker
    # threads after that; `slow`, over budget by the clock only (as a preempted loop would be),
    # moved at its second slow chunk in a row
    assert threads["busy"][:2] == [True, True] and not any(threads["busy"][2:])
    assert threads["slow"][:4] == [True] * 4 and not any(threads["slow"][4:])
    monkeypatch.setattr(apply_runner, "INLINE_BUDGET_S", 10.0)
    threads["cheap"].clear()
    Chain("c", [apply(cheap)], batch_size=2).run(
        [Num(x=i) for i in range(8)], output_dir=run_dir, overwrite=True
    )
    assert threads["cheap"] == [True] * 8  # under budget: never leaves the loop
