"""A fully cached rerun against an apply-only pass over the same records, in the same run.

The LLM side is a one-step chain on the fake engine: a first run fills a fresh ledger (timed
but not compared), then a rerun into the same folder with ``resume=True`` answers every request
from the ledger (checked: zero sent). The baseline is a one-node ``apply`` chain producing the
same output model from the same JSONL input. Both write a step folder... the apply side with
``write=True``, so both sides write the same two files per record (step rows and flattened rows).

Goal: cached rerun time <= 2 x apply-only time.

    python benchmarks/cache.py                  # 100,000 requests
    python benchmarks/cache.py --n 20000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, Field

from chainette import Chain, Step, apply, register_engine

GOAL = 2.0


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str = Field(max_length=80)
    confidence: float


def answer_of(q: Question) -> Answer:
    return Answer(answer=f"about {q.text[:60]}", confidence=0.5)


def llm_chain() -> Chain:
    register_engine("bench", backend="fake", max_batch_size=64, max_concurrency=64)
    step = Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name="bench",
        system_prompt="Answer in one short sentence.",
        user_prompt="Question: {{ text }}",
    )
    return Chain("cache bench", [step])


def apply_chain() -> Chain:
    return Chain("apply bench", [apply(answer_of, id="qa", write=True)])


def timed(chain: Chain, inputs: Path, out: Path, ledger: Path, **options: object) -> tuple[float, dict]:  # type: ignore[type-arg]
    started = time.perf_counter()
    result = chain.run(inputs, out, ledger=ledger, **options)
    return time.perf_counter() - started, result.metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="Requests (records), default 100,000")
    parser.add_argument("--repeat", type=int, default=1, help="Measured pairs; medians are reported")
    parser.add_argument("--workdir", help="Where files go (default: a temp dir, removed afterwards)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="chainette-cache-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        inputs = work / "inputs.jsonl"
        with inputs.open("w") as fh:
            for i in range(args.n):
                fh.write(json.dumps({"text": f"question number {i}: what is {i} squared?"}) + "\n")
        ledger = work / "ledger.sqlite"
        print(
            f"chainette cache benchmark: {args.n:,} requests, fake engine, JSONL in and out, Python {sys.version.split()[0]}"
        )
        first, meta = timed(llm_chain(), inputs, work / "llm", ledger)
        print(f"  first run (fills the ledger)   {first:7.2f} s  sent {meta['cache']['sent']:,}")
        cached_times, apply_times = [], []
        for _ in range(args.repeat):
            seconds, meta = timed(apply_chain(), inputs, work / "apply", ledger, overwrite=True)
            apply_times.append(seconds)
            print(f"  apply-only pass                {seconds:7.2f} s  {args.n / seconds:9,.0f} records/s")
            seconds, meta = timed(llm_chain(), inputs, work / "llm", ledger, resume=True)
            cached_times.append(seconds)
            cache = meta["cache"]
            print(
                f"  cached rerun                   {seconds:7.2f} s  {args.n / seconds:9,.0f} records/s"
                f"  sent {cache['sent']:,}, from the ledger {cache['hits']:,}"
            )
            if cache["sent"] or cache["hits"] != args.n:
                raise SystemExit("the rerun was not fully cached: the benchmark measures nothing")
        cached, baseline = (
            sorted(cached_times)[len(cached_times) // 2],
            sorted(apply_times)[len(apply_times) // 2],
        )
        ratio = cached / baseline
        verdict = "GOAL MET" if ratio <= GOAL else "GOAL MISSED"
        print(
            f"\n{verdict}: cached rerun / apply-only = {cached:.2f} s / {baseline:.2f} s = {ratio:.2f} (goal <= {GOAL})"
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
