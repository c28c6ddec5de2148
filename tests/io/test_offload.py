"""File work runs on the event loop while it is quick, on worker threads once a batch is slow."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio

from chainette.io.offload import Offload
from chainette.io.writer import RunWriter


def test_quick_batches_stay_on_the_loop_and_the_first_slow_one_moves_the_rest_to_threads() -> None:
    threads: list[int] = []

    def work(pause: float) -> int:
        threads.append(threading.get_ident())
        time.sleep(pause)
        return len(threads)

    async def main() -> tuple[int, bool]:
        offload = Offload(budget_s=0.02)
        loop_thread = threading.get_ident()
        assert await offload.run(work, 0) == 1 and offload.inline
        await offload.run(work, 0.05)  # over the budget: it ran inline, the next ones will not
        assert not offload.inline
        await offload.run(work, 0)
        return loop_thread, offload.inline

    loop_thread, inline = anyio.run(main)
    assert threads[:2] == [loop_thread, loop_thread]
    assert threads[2] != loop_thread and not inline


def test_the_writer_and_the_reader_work_on_the_loop_for_a_local_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from chainette.io import inputs

    calls: list[str] = []
    real = anyio.to_thread.run_sync

    async def spy(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", spy)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"x": {i}}}\n' for i in range(5000)))

    async def main() -> int:
        writer = RunWriter(tmp_path / "run", chain_name="c", run_id="r")
        seen = 0
        async for chunk in inputs.iter_input_chunks(source, 64):
            for item in chunk:
                writer.add_flattened({"_id": item.id, "x": item.value["x"]})
                seen += 1
            await writer.maybe_flush()
        await writer.close()
        writer.release()
        return seen

    assert anyio.run(main) == 5000
    assert "_read_chunks" not in calls and "_write_all" not in calls  # both ran on the loop
    assert sum(f.read_text().count("\n") for f in (tmp_path / "run" / "flattened").glob("*.jsonl")) == 5000


def test_a_pinned_offload_runs_every_batch_off_the_loop_on_one_thread_of_its_own() -> None:
    """pyarrow keeps an allocator heap per thread: a reader's batches must not wander between
    anyio's workers (which other streams use too), however those are scheduled."""
    from chainette.io.offload import PinnedOffload

    threads: list[int] = []

    def work() -> None:
        threads.append(threading.get_ident())
        time.sleep(0.002)

    async def other() -> None:
        for _ in range(20):
            await anyio.to_thread.run_sync(time.sleep, 0.002)

    async def main() -> int:
        offload = PinnedOffload(budget_s=0.0)  # every batch is "slow": all but the first off the loop
        async with anyio.create_task_group() as tg:  # others use anyio's workers meanwhile
            for _ in range(3):
                tg.start_soon(other)
            for _ in range(20):
                await offload.run(work)
        offload.close()
        return threading.get_ident()

    loop_thread = anyio.run(main)
    assert threads[0] == loop_thread
    assert len(set(threads[1:])) == 1 and threads[1] != loop_thread
