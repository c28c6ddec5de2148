"""The gatherer behind the ledger batching: one call per moment, bounded, errors and cancels."""

from __future__ import annotations

import anyio
import anyio.lowlevel

from chainette.runtime.ledger_batch import Gatherer


def gatherer(log: list[list[int]], fail: bool = False, limit: int = 4096) -> Gatherer[int, list[int]]:
    async def call(items: list[int]) -> list[int]:
        log.append(items)
        await anyio.lowlevel.checkpoint()
        if fail:
            raise ValueError("disk full")
        return [i * 10 for i in items]

    return Gatherer(call, limit=limit)


def test_payloads_of_one_moment_go_in_one_call_and_each_waiter_gets_the_result() -> None:
    log: list[list[int]] = []
    got: dict[int, list[int]] = {}

    async def main() -> None:
        g = gatherer(log)

        async def ask(i: int) -> None:
            got[i] = await g.submit(i)

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(ask, i)
        assert await g.submit(99) == [990]  # a lone one goes alone, at once

    anyio.run(main)
    assert log[0] == list(range(50)) and log[1] == [99]
    assert all(got[i] == [i * 10 for i in range(50)] for i in range(50))


def test_batches_are_bounded() -> None:
    log: list[list[int]] = []

    async def main() -> None:
        g = gatherer(log, limit=8)
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(g.submit, i)

    anyio.run(main)
    assert [len(items) for items in log] == [8, 8, 4]
    assert sorted(i for items in log for i in items) == list(range(20))


def test_an_error_reaches_every_waiter() -> None:
    errors: list[BaseException] = []

    async def main() -> None:
        g = gatherer([], fail=True)

        async def ask(i: int) -> None:
            try:
                await g.submit(i)
            except ValueError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(ask, i)

    anyio.run(main)
    assert len(errors) == 5 and all(str(e) == "disk full" for e in errors)


def test_a_cancelled_waiter_loses_nobody_elses_result() -> None:
    got: dict[int, list[int]] = {}
    calls: list[list[int]] = []

    async def main() -> None:
        release = anyio.Event()

        async def call(items: list[int]) -> list[int]:
            calls.append(items)
            await release.wait()  # cancellable: the runner is cancelled mid-call
            return items

        g: Gatherer[int, list[int]] = Gatherer(call)

        async def ask(i: int) -> None:
            got[i] = await g.submit(i)

        first = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancellable, first, g)
            for i in range(1, 4):
                tg.start_soon(ask, i)
            await anyio.sleep(0.05)
            first.cancel()  # the waiter running the call: the others take the batch over
            await anyio.sleep(0.05)
            release.set()

    anyio.run(main)
    assert got == {1: [1, 2, 3], 2: [1, 2, 3], 3: [1, 2, 3]}
    assert calls == [[0, 1, 2, 3], [1, 2, 3]]  # the cut call, then the batch again without the cancelled one


async def _cancellable(scope: anyio.CancelScope, g: Gatherer[int, list[int]]) -> None:
    with scope:
        await g.submit(0)
