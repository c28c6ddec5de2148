"""The cost of listening to a run's events: the same chain with no listener, with a middleware
that takes the default events, with one that also asks for the per-record ones
(``node_started`` / ``node_finished`` / ``attempt``, see ``runtime/events.py``), and with the
live progress display (drawing to a file, as on a terminal-less stderr), measured in the same
process, interleaved.

Two chains: ``apply`` (three sync ``apply`` nodes, the chain of ``benchmarks/overhead.py``) and
``step`` (a fake-engine step, no ledger, then two ``apply`` nodes). Goal: a default middleware
and the progress display cost <= 1.1 x no listener; the per-record events are reported (they
are opt-in because of what they cost).

    python benchmarks/events.py                              # 100,000 records, best of 3 interleaved runs
    python benchmarks/events.py --records 20000 --repeat 5 --chains step
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from overhead import NODES, Item

from chainette import Chain, Event, Step, apply, register_engine
from chainette.cli.progress import ProgressDisplay
from chainette.runtime.events import PER_RECORD

GOAL = 1.1


class Text(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


def keep(answer: Answer) -> Answer:
    return answer


def trim(answer: Answer) -> Answer:
    return Answer(answer=answer.answer.strip())


class Count:
    """A middleware that counts what it receives (the least a real one does)."""

    def __init__(self, wants: frozenset[str] | None = None) -> None:
        self.seen = 0
        if wants is not None:
            self.wants = wants

    def __call__(self, event: Event) -> None:
        self.seen += 1


def make_chain(kind: str, batch_size: int) -> tuple[Chain, list[Any]]:
    if kind == "apply":
        chain = Chain("events bench", [apply(fn) for _, fn in NODES], batch_size=batch_size)
        return chain, [Item(id=i, text=f"Alpha  Beta {i}", price=1.5, qty=i % 9 + 1) for i in range(RECORDS)]
    register_engine("bench", backend="fake", responder=lambda r: {"answer": r.messages[-1]["content"]})
    step = Step(
        id="echo", input_model=Text, output_model=Answer, engine_name="bench", user_prompt="{{ text }}"
    )
    chain = Chain("events bench", [step, apply(keep), apply(trim)], batch_size=batch_size)
    return chain, [Text(text=f"record {i}") for i in range(RECORDS)]


RECORDS = 0


def listeners(variant: str, chain: Chain) -> tuple[list[Any], Count | None]:
    if variant == "off":
        return [], None
    if variant == "default":
        count = Count()
        return [count], count
    if variant == "per-record":
        count = Count(PER_RECORD | {"node_progress", "record_failed"})
        return [count], count
    display = ProgressDisplay(chain, total=RECORDS, console=Console(file=io.StringIO(), width=120))
    return [display], None


def main() -> None:
    global RECORDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chains", default="apply,step")
    args = parser.parse_args()
    RECORDS = args.records
    variants = ("off", "default", "per-record", "progress")
    folder = Path(tempfile.mkdtemp(prefix="chainette-events-bench-"))
    try:
        for kind in args.chains.split(","):
            chain, rows = make_chain(kind, args.batch_size)
            times: dict[str, list[float]] = {v: [] for v in variants}
            cpu: dict[str, list[float]] = {v: [] for v in variants}
            seen: dict[str, int] = {}
            for _ in range(args.repeat):
                for variant in variants:
                    middleware, count = listeners(variant, chain)
                    start, start_cpu = time.perf_counter(), time.process_time()
                    result = chain.run(
                        rows, folder / variant, overwrite=True, cache="off", middleware=middleware
                    )
                    times[variant].append(time.perf_counter() - start)
                    cpu[variant].append(time.process_time() - start_cpu)
                    assert result.counts["records_out"] == args.records
                    if count is not None:
                        seen[variant] = count.seen
            off, off_cpu = min(times["off"]), min(cpu["off"])
            print(
                f"{kind} chain: {args.records:,} records, batch size {args.batch_size}, best of {args.repeat} "
                "(wall clock; CPU time of this process, steadier on a shared machine):"
            )
            for variant in variants:
                took, used = min(times[variant]), min(cpu[variant])
                events = f", {seen[variant]:,} events" if variant in seen else ""
                print(
                    f"  {variant:<11} {took:7.3f} s ({args.records / took:9,.0f} records/s) "
                    f"ratio {took / off:5.3f}; cpu {used:7.3f} s ratio {used / off_cpu:5.3f}{events}"
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
