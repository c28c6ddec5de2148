"""Scale: a large Parquet input against the same rows as JSONL, and (``scale_ray.py``) the Ray executor.

Section ``parquet``: N rows (default 1,000,000; ``{"id": int, "text": str}``) written once as
Parquet (row groups of ``--row-group`` rows, default 10,000) and once as JSONL, each run through the same one-step chain
(``Question`` → ``Answer`` on the fake engine, ledger off so neither run answers the other's
requests), every run in a fresh subprocess. Printed: rows/s of each and parquet/jsonl (goal >= 0.9:
reading Parquet through pyarrow costs no more than parsing JSONL lines), and the peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of the N-row Parquet run against a 10,000-row
one (goal <= 1.2: the reader streams, memory does not grow with the file). The two files have
row groups of the same size, so the ratio measures growth with the number of rows; what a
larger row group costs (pyarrow decodes a column chunk's pages into buffers its allocator keeps)
is the same at any length: ``--row-group 100000`` shows it. Each run's output is
checked: N flattened rows, no failures. Imports and start-up are not timed.

Section ``ray``: ``benchmarks/scale_ray.py`` (``main_section(args)``), when that file exists.

    python benchmarks/scale.py                         # section parquet, 1,000,000 rows
    python benchmarks/scale.py --rows 50000            # a quick check
    python benchmarks/scale.py --sections parquet,ray --repeat 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

HERE = Path(__file__).resolve().parent
SMALL_ROWS = 10_000
RATIO_GOAL = 0.9
RSS_GOAL = 1.2
ROW_GROUP = 10_000
WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper")


class Question(BaseModel):
    id: int
    text: str


class Answer(BaseModel):
    answer: str
    confidence: float


# -- inputs ------------------------------------------------------------------------------------


def rows_of(n: int, start: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(start)
    return [
        {"id": i, "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16)))}
        for i in range(start, start + n)
    ]


def make_inputs(folder: Path, n: int, row_group: int = ROW_GROUP) -> tuple[Path, Path]:
    """``in-N.parquet`` and ``in-N.jsonl``, the same rows, written a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet, jsonl = folder / f"in-{n}.parquet", folder / f"in-{n}.jsonl"
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    with pq.ParquetWriter(parquet, schema) as writer, jsonl.open("wb") as fh:
        for start in range(0, n, row_group):
            rows = rows_of(min(row_group, n - start), start)
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            fh.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return parquet, jsonl


# -- one run, in a child process ---------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    if args.make:  # in a child too: Linux children start with their parent's ru_maxrss, so it stays small
        make_inputs(Path(args.output), args.rows, args.row_group)
        return
    from chainette import Chain, Step, register_engine

    register_engine("fake", backend="fake")
    step = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="fake", user_prompt="{{ text }}"
    )
    chain = Chain(name="scale", steps=[step])
    import pyarrow.parquet  # noqa: F401 - imports stay outside the timed region, both sides

    started = time.perf_counter()
    result = chain.run(args.input, output_dir=args.output, cache="off")
    elapsed = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "rows": result.counts["records_out"],
                "failures": result.counts["failures"],
                "seconds": elapsed,
                "peak_rss_mib": peak_kib / 1024,
            }
        )
    )


def spawn(src: Path, dest: Path, label: str) -> dict[str, Any]:
    shutil.rmtree(dest, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", "--input", str(src), "--output", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{label} failed with exit code {proc.returncode}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["rows_per_s"] = out["rows"] / out["seconds"]
    shutil.rmtree(dest, ignore_errors=True)
    print(
        f"  {label:<18} {out['rows']:>9,} rows {out['seconds']:8.2f} s {out['rows_per_s']:>9,.0f} rows/s"
        f"  peak RSS {out['peak_rss_mib']:6.1f} MiB",
        flush=True,
    )
    return out


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def parquet_section(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    small_rows = min(SMALL_ROWS, args.rows)
    started = time.perf_counter()
    for n in (args.rows, small_rows):
        make = [sys.executable, __file__, "--child", "--make", "--rows", str(n), "--output", str(workdir)]
        make += ["--row-group", str(args.row_group)]
        subprocess.run(make, check=True)
    big_pq, big_jsonl = workdir / f"in-{args.rows}.parquet", workdir / f"in-{args.rows}.jsonl"
    small_pq = workdir / f"in-{small_rows}.parquet"
    mib = big_pq.stat().st_size / 2**20, big_jsonl.stat().st_size / 2**20
    print(
        f"[parquet] {args.rows:,} rows (row groups of {args.row_group:,}), one fake-engine step, ledger off; "
        "inputs ready in "
        f"{time.perf_counter() - started:.1f} s (Parquet {mib[0]:.0f} MiB, JSONL {mib[1]:.0f} MiB)"
    )
    small = spawn(small_pq, workdir / "run-small", f"parquet {small_rows:,}")
    parquets: list[dict[str, Any]] = []
    jsonls: list[dict[str, Any]] = []
    for _ in range(args.repeat):  # interleaved, so a noisy minute hurts both sides alike
        parquets.append(spawn(big_pq, workdir / "run-parquet", f"parquet {args.rows:,}"))
        jsonls.append(spawn(big_jsonl, workdir / "run-jsonl", f"jsonl {args.rows:,}"))
    parquet, jsonl = median_run(parquets), median_run(jsonls)
    ratio = parquet["rows_per_s"] / jsonl["rows_per_s"]
    growth = parquet["peak_rss_mib"] / small["peak_rss_mib"]
    correct = all(r["rows"] == args.rows and r["failures"] == 0 for r in [*parquets, *jsonls]) and (
        small["rows"] == small_rows
    )
    print(
        f"\nGOAL {'MET' if ratio >= RATIO_GOAL else 'MISSED'}: throughput parquet/jsonl = "
        f"{parquet['rows_per_s']:,.0f} / {jsonl['rows_per_s']:,.0f} rows/s = {ratio:.3f} (goal >= {RATIO_GOAL}; "
        f"medians of {args.repeat})"
    )
    print(
        f"GOAL {'MET' if growth <= RSS_GOAL else 'MISSED'}: memory: peak RSS at {args.rows:,} rows / at "
        f"{small_rows:,} rows = {parquet['peak_rss_mib']:.1f} / {small['peak_rss_mib']:.1f} MiB = {growth:.3f} "
        f"(goal <= {RSS_GOAL})"
    )
    print(
        f"{'CORRECT' if correct else 'INCORRECT'}: every run wrote all its rows to flattened/ and no failure"
    )
    return {
        "rows": args.rows,
        "parquet_rows_per_s": parquet["rows_per_s"],
        "jsonl_rows_per_s": jsonl["rows_per_s"],
        "throughput_ratio": ratio,
        "peak_rss_mib": {
            "small": small["peak_rss_mib"],
            "big": parquet["peak_rss_mib"],
            "jsonl": jsonl["peak_rss_mib"],
        },
        "rss_ratio": growth,
        "correct": correct,
    }


def ray_section(args: argparse.Namespace) -> Any:
    """``scale_ray.main_section(args)``, when ``benchmarks/scale_ray.py`` exists."""
    path = HERE / "scale_ray.py"
    if not path.exists():
        print("\n[ray] benchmarks/scale_ray.py is not there: section skipped.")
        return None
    spec = importlib.util.spec_from_file_location("scale_ray", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_ray"] = module
    spec.loader.exec_module(module)
    return module.main_section(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="parquet", help="parquet, ray, or both: parquet,ray")
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="N, rows of the big input (default 1,000,000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="Big runs per side, interleaved; medians reported"
    )
    parser.add_argument(
        "--workdir", help="Where inputs and runs go (default: a temp dir, removed afterwards)"
    )
    parser.add_argument(
        "--row-group", type=int, default=ROW_GROUP, help=f"Rows per Parquet row group (default {ROW_GROUP:,})"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()  # scale_ray.py may read options of its own
    if args.child:
        child(args)
        return
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - {"parquet", "ray"}
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose parquet, ray")
    total = time.perf_counter()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="chainette-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"chainette scale benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, workdir {workdir}"
    )
    results: dict[str, Any] = {}
    try:
        if "parquet" in sections:
            results["parquet"] = parquet_section(args, workdir)
        if "ray" in sections:
            results["ray"] = ray_section(args)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results))
    print(f"\ntotal benchmark time: {time.perf_counter() - total:.1f} s")


if __name__ == "__main__":
    main()
