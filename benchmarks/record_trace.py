"""The cost of ``record_trace=True`` (an experiment's per-case timeline and tokens) against the
same run without it, measured in the same process, interleaved.

The chain is a fake-engine step (no ledger) then two ``apply`` nodes, over N records in chunks
of ``--batch-size``: with the trace on, every node run over a chunk is timed and noted under
each record of the chunk, and every answer's tokens are noted under its record. Both sides write
the same run folder. Goal: traced time <= 1.1 x untraced time.

    python benchmarks/record_trace.py                       # 20,000 records, 3 interleaved runs
    python benchmarks/record_trace.py --records 5000 --repeat 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from chainette import Chain, Step, apply, register_engine

GOAL = 1.1


class Text(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


def keep(answer: Answer) -> Answer:
    return answer


def trim(answer: Answer) -> Answer:
    return Answer(answer=answer.answer.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    register_engine("bench", backend="fake", responder=lambda r: {"answer": r.messages[-1]["content"]})
    step = Step(
        id="echo", input_model=Text, output_model=Answer, engine_name="bench", user_prompt="{{ text }}"
    )
    chain = Chain("trace bench", [step, apply(keep), apply(trim)], batch_size=args.batch_size)
    rows = [{"text": f"record {i}"} for i in range(args.records)]
    times: dict[bool, list[float]] = {False: [], True: []}
    folder = Path(tempfile.mkdtemp(prefix="chainette-trace-bench-"))
    try:
        for _ in range(args.repeat):
            for traced in (False, True):
                out = folder / f"run-{traced}"
                start = time.perf_counter()
                result = chain.run(rows, out, overwrite=True, cache="off", record_trace=traced)
                times[traced].append(time.perf_counter() - start)
                assert result.counts["records_out"] == args.records
                assert (result.trace is not None) == traced
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    ratio = on / off
    print(f"{args.records:,} records, batch size {args.batch_size}, medians of {args.repeat}:")
    print(f"  record_trace off: {off:.3f} s ({args.records / off:,.0f} records/s)")
    print(f"  record_trace on:  {on:.3f} s ({args.records / on:,.0f} records/s)")
    print(f"  ratio on / off:   {ratio:.3f} (goal <= {GOAL}) {'ok' if ratio <= GOAL else 'OVER GOAL'}")


if __name__ == "__main__":
    main()
