"""Control flow: records/s through Chainette's control-flow nodes, side by side with PenguiFlow 2.0.0.

Each section runs the same flow three ways on the same JSONL input, in the same run, each in a
fresh child process (so ``ru_maxrss`` is that side's peak RSS alone; timings exclude interpreter
start-up and imports): a hand-written Python loop (the in-run baseline), a Chainette chain, and
PenguiFlow 2.0.0 (https://pypi.org/project/penguiflow/), which is NOT a dependency of this
project: the first run creates ``benchmarks/.peers-venv`` (gitignored) with ``python -m venv``
and ``pip install penguiflow==2.0.0`` (pydantic pinned to this interpreter's version), and the
PenguiFlow side runs in that interpreter and reports its figures as JSON.

Section ``routing`` (router + join). Records ``{"id", "score", "text"}``; ``pick`` sends each to
one of three routes by ``score`` (``low`` < 34 <= ``mid`` < 67 <= ``high``); every node is a no-op
(the value goes on unchanged); after the route each record is forked to two no-op nodes
(``left``, ``right``) and the two results are joined back into one record. Chainette also runs on
a tenth of the records, and its peak RSS at N must stay within 1.2x of that (memory flat in the
number of records: until 2026-12-07 every finished record's task queued on the in-order
hand-on's lock, 331 MiB at 50,000 records against 85 MiB at 5,000).

    ==========================  =========================================  ============================
    step                        Chainette (public API)                     PenguiFlow 2.0.0
    ==========================  =========================================  ============================
    read + validate input       ``chain.run("in.jsonl")`` into ``Rec``     ``Rec.model_validate_json``
                                (stable ids: blake2b of index + line)      per line, wrapped in
                                                                           ``Message`` (uuid4 trace id)
    route by predicate          ``Router("route", {...}, by=pick)``        ``predicate_router("route",
                                                                           pick)``
    no-op route                 ``apply(low)`` / ``mid`` / ``high``        ``Node`` calling ``low`` / ...
                                                                           on the payload (and noting
                                                                           the route in ``meta``)
    fork to two no-op nodes     parallel group of ``Branch("left")``,      each route node ``.to(left,
                                ``Branch("right")``                        right)``
    join the two per record     ``.join("l")``, ``.join("r")`` (by         ``join_k("join", 2)`` (by
                                record id)                                 ``trace_id``)
    write the result            ``flattened/`` rows: input, route, left,   joined ``Message`` as JSON
                                right outputs and aliases (orjson)         (``model_dump_json``)
    ==========================  =========================================  ============================

What differs: PenguiFlow moves one message per hop through bounded asyncio queues (64 per edge),
each node invocation a task with trace bookkeeping; Chainette moves chunks of ``batch_size``
records (64) per stage and runs consecutive sync ``apply`` nodes in one stage. PenguiFlow's
nodes run with ``validate="none"`` (its own fan-out/join example does; ``join_k`` and the routers
need whole ``Message`` objects) and it keeps no record history, computes no content ids and
writes one smaller row per record; Chainette also writes ``graph.json`` and ``metadata.json``.
PenguiFlow emits results as they finish (any order); Chainette keeps input order. PenguiFlow's
driver counts the input lines before its clock starts (it must know how many results to fetch).
The hand loop does Chainette's work by hand (same ids, models, functions and rows, which are
compared with Chainette's) with no framework at all.

Section ``map_collect`` (map / collect). Parents ``{"id", "items": [10 ints]}``; ``Map("m",
apply(double), over="items")`` spawns one child per item, doubles it, and collects the ten
results back under ``m``; the hand loop does the same per parent. No PenguiFlow side (the issue
compares this construct with the hand loop); Chainette also runs on a tenth of the records, as in
``routing`` (memory flat in the number of parents).

Printed: records/s per side, chainette/penguiflow (goal >= 1), chainette/loop, peak RSS per side, the
MEMORY GOAL line of each section with a smaller run (peak RSS at N / at N/10, goal <= 1.2),
and a last line of JSON with every figure.

    python benchmarks/control_flow.py                            # 100,000 records
    python benchmarks/control_flow.py --records 20000 --repeat 3 # medians of 3 interleaved runs
    python benchmarks/control_flow.py --no-penguiflow            # no peer venv: loop and Chainette
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import zip_longest
from pathlib import Path
from typing import Any

# Only the standard library and pydantic at module level: the PenguiFlow side imports this file
# in the peer venv, which has neither chainette nor orjson.
from pydantic import BaseModel

PENGUIFLOW = "penguiflow==2.0.0"
PEERS_VENV = Path(__file__).resolve().parent / ".peers-venv"
GOAL = 1.0  # chainette records/s / penguiflow records/s

Result = dict[str, Any]


# -- section "routing": a predicate router, then two branches joined back --------------------------


class Rec(BaseModel):
    id: int
    score: int
    text: str


def pick(rec: Rec) -> str:
    return "low" if rec.score < 34 else "mid" if rec.score < 67 else "high"


def low(rec: Rec) -> Rec:
    return rec


def mid(rec: Rec) -> Rec:
    return rec


def high(rec: Rec) -> Rec:
    return rec


def left(rec: Rec) -> Rec:
    return rec


def right(rec: Rec) -> Rec:
    return rec


ROUTES: dict[str, Callable[[Rec], Rec]] = {"low": low, "mid": mid, "high": high}
BRANCHES = (("left", left, "l"), ("right", right, "r"))  # (node id, function, join alias)


def routing_input(path: Path, n: int) -> None:
    rng = random.Random(0)
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": i, "score": rng.randrange(100), "text": f"record {i}"}) + "\n")


def routing_loop(src: Path, dest: Path) -> Result:
    """Chainette's work by hand: same ids, validation, functions and flattened rows."""
    import orjson

    routes: Counter[str] = Counter()
    index = 0
    with src.open("rb") as fin, dest.open("wb") as fout:
        for line in fin:
            content = line.strip()
            if not content:
                continue
            rid = hashlib.blake2b(b"%d:%s" % (index, content), digest_size=8).hexdigest()
            rec = Rec.model_validate(orjson.loads(content))
            row: dict[str, Any] = {"_id": rid, "_index": index}
            outputs: list[tuple[str, BaseModel]] = [("input", rec)]
            route = pick(rec)
            routes[route] += 1
            routed = ROUTES[route](rec)
            outputs += [(route, routed), ("route", routed)]
            for node_id, fn, alias in BRANCHES:  # fork, then join: each branch's output, twice
                out = fn(routed)
                outputs += [(node_id, out), (alias, out)]
            for prefix, model in outputs:
                for name, value in model.model_dump(mode="json").items():
                    row[f"{prefix}.{name}"] = value
            fout.write(orjson.dumps(row) + b"\n")
            index += 1
    return {"records": index, "routes": dict(routes)}


def routing_chainette(src: Path, dest: Path, batch_size: int) -> Result:
    from chainette import Branch, Chain, Router, apply

    chain = Chain(
        "control flow: routing",
        [
            Router("route", {name: apply(fn) for name, fn in ROUTES.items()}, by=pick),
            [Branch(node_id, [apply(fn)]).join(alias) for node_id, fn, alias in BRANCHES],
        ],
        batch_size=batch_size,
    )
    result = chain.run(src, output_dir=dest)
    return {"records": int(result.counts["records_out"]), "failures": int(result.counts["failures"])}


def routing_penguiflow(src: Path, dest: Path) -> Result:
    from penguiflow import Headers, Message, Node, NodePolicy, create, join_k, predicate_router

    def noop(name: str, fn: Callable[[Rec], Rec], *, note_route: bool = False) -> Node:
        """A node calling the same function as the other sides; the message goes on with its result."""

        async def run(msg: Message, ctx: Any) -> Message:
            payload = fn(msg.payload)
            if payload is not msg.payload:  # never, for these no-ops: no copy is made
                msg = msg.model_copy(update={"payload": payload})
            if note_route:
                msg.meta["route"] = name  # for the output check
            return msg

        return Node(run, name=name, policy=NodePolicy(validate="none"))

    router = predicate_router("route", lambda msg: pick(msg.payload))
    routes = [noop(name, fn, note_route=True) for name, fn in ROUTES.items()]
    branches = [noop(node_id, fn) for node_id, fn, _ in BRANCHES]
    join = join_k("join", 2)
    flow = create(
        router.to(*routes),
        *(route.to(*branches) for route in routes),
        *(branch.to(join) for branch in branches),
        join.to(),
    )
    headers = Headers(tenant="bench")
    with src.open("rb") as fh:
        total = sum(1 for line in fh if line.strip())

    async def produce() -> None:
        with src.open("rb") as fh:
            for line in fh:
                if line.strip():
                    await flow.emit(Message(payload=Rec.model_validate_json(line), headers=headers))

    async def consume() -> Counter[str]:
        routes_taken: Counter[str] = Counter()
        with dest.open("w") as out:
            for _ in range(total):
                msg = await flow.fetch()
                routes_taken[msg.meta["route"]] += 1
                out.write(msg.model_dump_json() + "\n")
        return routes_taken

    async def main() -> Counter[str]:
        flow.run()
        try:
            _, taken = await asyncio.gather(produce(), consume())
        finally:
            await flow.stop()
        return taken

    taken = asyncio.run(main())
    return {"records": sum(taken.values()), "routes": dict(taken)}


def routing_verify(work: Path, n: int, sides: dict[str, Result], sample_every: int) -> list[str]:
    """Chainette's rows equal the loop's; PenguiFlow joined every record once, routed like ``pick``."""
    lines: list[str] = []
    loop = sides["loop"]
    rows, compared, differ = compare_rows(work / "chainette" / "flattened", work / "loop.jsonl", sample_every)
    ok = rows == n == loop["records"] and not differ and not sides["chainette"].get("failures")
    lines.append(
        f"{'CORRECT' if ok else 'INCORRECT'}: chainette: {rows:,} flattened rows (expected {n:,}); "
        f"{compared:,} compared with the hand loop's, {differ} differ"
    )
    if "penguiflow" in sides:
        ids: set[int] = set()
        bad = 0
        with (work / "penguiflow.jsonl").open() as fh:
            for line in fh:
                msg = json.loads(line)
                first, second = msg["payload"]
                ids.add(first["id"])
                bad += first != second or msg["meta"]["route"] != pick(Rec.model_validate(first))
        taken = sides["penguiflow"]["routes"]
        ok = len(ids) == n and not bad and taken == loop["routes"]
        lines.append(
            f"{'CORRECT' if ok else 'INCORRECT'}: penguiflow: {len(ids):,} distinct records joined "
            f"(expected {n:,}), {bad} wrongly joined or routed; routes {taken} (loop: {loop['routes']})"
        )
    return lines


# -- section "map_collect": each parent's list spawned into children, one apply each, collected -----


class Parent(BaseModel):
    id: int
    items: list[int]


class Item(BaseModel):
    value: int


def double(item: Item) -> Item:
    return Item(value=item.value * 2)


CHILDREN = 10


def map_input(path: Path, n: int) -> None:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": i, "items": [i * CHILDREN + k for k in range(CHILDREN)]}) + "\n")


def map_loop(src: Path, dest: Path) -> Result:
    """Chainette's map by hand: same ids, child models, function and flattened rows."""
    import orjson

    index = children = 0
    with src.open("rb") as fin, dest.open("wb") as fout:
        for line in fin:
            content = line.strip()
            if not content:
                continue
            rid = hashlib.blake2b(b"%d:%s" % (index, content), digest_size=8).hexdigest()
            parent = Parent.model_validate(orjson.loads(content))
            items = [double(Item(value=v)).model_dump(mode="json") for v in parent.items]
            children += len(items)
            row = {
                "_id": rid,
                "_index": index,
                "input.id": parent.id,
                "input.items": parent.items,
                "m.items": items,
                "m.total": len(items),
                "m.failed": [],
                "m.filtered": 0,
                "m.skipped": 0,
                "m.errors": {},
            }
            fout.write(orjson.dumps(row) + b"\n")
            index += 1
    return {"records": index, "children": children}


def map_chainette(src: Path, dest: Path, batch_size: int) -> Result:
    from chainette import Chain, Map, apply

    chain = Chain(
        "control flow: map",
        [Map("m", apply(double), over="items", input_model=Parent)],
        batch_size=batch_size,
    )
    result = chain.run(src, output_dir=dest)
    return {"records": int(result.counts["records_out"]), "failures": int(result.counts["failures"])}


def map_verify(work: Path, n: int, sides: dict[str, Result], sample_every: int) -> list[str]:
    rows, compared, differ = compare_rows(work / "chainette" / "flattened", work / "loop.jsonl", sample_every)
    ok = rows == n and differ == 0
    return [
        f"{'CORRECT' if ok else 'INCORRECT'}: chainette: {rows:,} rows (expected {n:,}), {compared:,} compared "
        f"with the loop's, {differ} differ"
    ]


# -- sections ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One control-flow construct, measured three ways on the same input."""

    title: str
    make_input: Callable[[Path, int], None]
    loop: Callable[[Path, Path], Result]
    chainette: Callable[[Path, Path, int], Result]
    penguiflow: Callable[[Path, Path], Result] | None
    verify: Callable[[Path, int, dict[str, Result], int], list[str]]
    """``(workdir, n, {side: child result}, sample_every) -> verdict lines`` (CORRECT / INCORRECT);
    the sides wrote ``loop.jsonl``, ``chainette/`` (a run folder) and ``penguiflow.jsonl`` there."""
    rss_scale: int | None = None
    """Also run Chainette on ``n / rss_scale`` records and compare peak RSS (memory must not grow
    with the number of records: goal <= RSS_GOAL)."""


SECTIONS: dict[str, Section] = {
    "routing": Section(
        title="Router (3 routes by predicate) + 2 joined branches, no-op nodes",
        make_input=routing_input,
        loop=routing_loop,
        chainette=routing_chainette,
        penguiflow=routing_penguiflow,
        verify=routing_verify,
        rss_scale=10,  # records finish faster than they are handed on in order: memory must stay flat
    ),
    "map_collect": Section(
        title=f"Map: each parent's list of {CHILDREN} items spawned into children, one apply each, collected",
        make_input=map_input,
        loop=map_loop,
        chainette=map_chainette,
        penguiflow=None,  # the issue compares map/collect with the hand loop and with itself at 1/10 the size
        verify=map_verify,
        rss_scale=10,
    ),
}
RSS_GOAL = 1.2


# -- children: one side of one section, in a fresh process ------------------------------------------


def child(args: argparse.Namespace) -> None:
    section = SECTIONS[args.section]
    src, dest = Path(args.input), Path(args.output)
    run: Callable[[], Result]
    if args.child == "penguiflow":
        import penguiflow  # noqa: F401 - imports stay outside the timed region, every side

        assert section.penguiflow is not None
        run = partial(section.penguiflow, src, dest)
    elif args.child == "chainette":
        import chainette.runtime.executor  # noqa: F401

        run = partial(section.chainette, src, dest, args.batch_size)
    else:
        import orjson  # noqa: F401

        run = partial(section.loop, src, dest)
    started = time.perf_counter()
    out = run()
    out["seconds"] = time.perf_counter() - started
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(out))


# -- parent: peer venv, orchestration, report --------------------------------------------------------


def peer_python(venv: Path) -> Path:
    """The peer venv's interpreter, with PenguiFlow 2.0.0 installed (created on first use)."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import penguiflow, pydantic; print(penguiflow.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "2.0.0":
        return python
    import pydantic

    print(f"  creating {venv} with {PENGUIFLOW} (once; delete the folder to redo it)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pin = f"pydantic=={pydantic.VERSION}"  # the same validation engine on both sides
    install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PENGUIFLOW, pin]
    if subprocess.run(install).returncode != 0:
        raise SystemExit(f"could not install {PENGUIFLOW} into {venv}; run with --no-penguiflow to skip it")
    return python


def spawn(side: str, section: str, src: Path, dest: Path, python: Path, batch_size: int) -> Result:
    if dest.is_dir():
        shutil.rmtree(dest)
    dest.unlink(missing_ok=True)
    cmd = [str(python), str(Path(__file__).resolve()), "--child", side, "--section", section]
    cmd += ["--input", str(src), "--output", str(dest), "--batch-size", str(batch_size)]
    env = dict(os.environ)
    if side == "penguiflow":
        env.pop("PYTHONPATH", None)  # the peer sees its own venv only
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{side} side of section {section!r} failed with exit code {proc.returncode}")
    out: Result = json.loads(proc.stdout.strip().splitlines()[-1])
    out["records_per_s"] = out["records"] / out["seconds"]
    print(
        f"  {side:<11} {out['records']:>9,} records {out['seconds']:8.2f} s "
        f"{out['records_per_s']:>10,.0f} records/s  peak RSS {out['peak_rss_mib']:6.1f} MiB",
        flush=True,
    )
    return out


def iter_lines(path: Path) -> Any:
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as fh:
            for line in fh:
                if line.strip():
                    yield line


def compare_rows(chain_dir: Path, loop_file: Path, sample_every: int) -> tuple[int, int, int]:
    """(chain rows, rows compared with the loop's, how many differ), row by row in input order."""
    rows = compared = differ = 0
    for k, (a, b) in enumerate(zip_longest(iter_lines(chain_dir), iter_lines(loop_file))):
        rows += a is not None
        if k % sample_every == 0:
            compared += 1
            differ += a is None or b is None or json.loads(a) != json.loads(b)
    return rows, compared, differ


def median_run(runs: list[Result]) -> Result:
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  ".join(cells))


def run_section(name: str, args: argparse.Namespace, work: Path, peer: Path | None) -> Result:
    section = SECTIONS[name]
    n = args.records
    print(f"\n[{name}] {section.title}: {n:,} records, {args.repeat} interleaved run(s) per side")
    src = work / "in.jsonl"
    section.make_input(src, n)
    sides = {"loop": Path(sys.executable), "chainette": Path(sys.executable)}
    if peer is not None and section.penguiflow is not None:
        sides["penguiflow"] = peer
    outputs = {
        "loop": work / "loop.jsonl",
        "chainette": work / "chainette",
        "penguiflow": work / "penguiflow.jsonl",
    }
    runs: dict[str, list[Result]] = {side: [] for side in sides}
    for _ in range(args.repeat):
        for side, python in sides.items():
            runs[side].append(spawn(side, name, src, outputs[side], python, args.batch_size))
    medians = {side: median_run(r) for side, r in runs.items()}
    checks = section.verify(work, n, medians, args.sample_every)

    chain, loop = medians["chainette"], medians["loop"]
    peer_rps = medians["penguiflow"]["records_per_s"] if "penguiflow" in medians else None
    table = [("side", "seconds", "records/s", "chainette/side", "peak RSS MiB")]
    for side, m in medians.items():
        ratio = "" if side == "chainette" else f"{chain['records_per_s'] / m['records_per_s']:.2f}"
        table.append(
            (side, f"{m['seconds']:.2f}", f"{m['records_per_s']:,.0f}", ratio, f"{m['peak_rss_mib']:.1f}")
        )
    print(f"\nmedians of {args.repeat} run(s), batch_size={args.batch_size}:")
    print_table(table)
    vs_loop = chain["records_per_s"] / loop["records_per_s"]
    print(f"chainette/loop = {vs_loop:.3f} (the in-run baseline: the same work with no framework)")
    vs_peer = None
    if peer_rps is not None:
        vs_peer = chain["records_per_s"] / peer_rps
        print(
            f"GOAL {'MET' if vs_peer >= GOAL else 'MISSED'}: chainette/penguiflow = "
            f"{chain['records_per_s']:,.0f} / {peer_rps:,.0f} records/s = {vs_peer:.2f} (goal >= {GOAL})"
        )
    print("\n".join(checks))
    rss_ratio = small_rss = None
    if section.rss_scale:
        small_n = max(1, n // section.rss_scale)
        small_src = work / "in-small.jsonl"
        section.make_input(small_src, small_n)
        small = median_run(
            [
                spawn(
                    "chainette",
                    name,
                    small_src,
                    work / "chainette-small",
                    Path(sys.executable),
                    args.batch_size,
                )
                for _ in range(args.repeat)
            ]
        )
        small_rss = small["peak_rss_mib"]
        rss_ratio = chain["peak_rss_mib"] / small_rss
        print(
            f"MEMORY GOAL {'MET' if rss_ratio <= RSS_GOAL else 'MISSED'}: chainette peak RSS at {n:,} records / "
            f"at {small_n:,} = {chain['peak_rss_mib']:.1f} / {small['peak_rss_mib']:.1f} MiB = {rss_ratio:.2f} "
            f"(goal <= {RSS_GOAL})"
        )
    return {
        "records": n,
        "repeat": args.repeat,
        "batch_size": args.batch_size,
        "records_per_s": {side: round(m["records_per_s"], 1) for side, m in medians.items()},
        "peak_rss_mib": {side: round(m["peak_rss_mib"], 1) for side, m in medians.items()},
        "chainette_vs_loop": round(vs_loop, 4),
        "chainette_vs_penguiflow": None if vs_peer is None else round(vs_peer, 4),
        "correct": all(line.startswith("CORRECT") for line in checks),
        "peak_rss_mib_tenth": None if small_rss is None else round(small_rss, 1),
        "peak_rss_ratio_vs_tenth": None if rss_ratio is None else round(rss_ratio, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="N, records per run (default 100,000)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="Runs per side, interleaved; medians are reported"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"Comma-separated, of: {', '.join(SECTIONS)} (default all)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="Chainette's batch_size (default 64)")
    parser.add_argument("--no-penguiflow", action="store_true", help="Measure the loop and Chainette only")
    parser.add_argument(
        "--peers-venv", type=Path, default=PEERS_VENV, help=f"Peer venv (default {PEERS_VENV})"
    )
    parser.add_argument(
        "--workdir", help="Where inputs and outputs go (default: a temp dir, removed afterwards)"
    )
    parser.add_argument("--sample-every", type=int, default=1, help="Compare every k-th row (default: all)")
    parser.add_argument("--child", choices=["loop", "chainette", "penguiflow"], help=argparse.SUPPRESS)
    parser.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    names = [s for s in args.sections.split(",") if s]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")

    started = time.perf_counter()
    print(
        f"chainette control-flow benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"peer {'(none)' if args.no_penguiflow else PENGUIFLOW}"
    )
    peer = None if args.no_penguiflow else peer_python(args.peers_venv)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="chainette-control-flow-"))
    summary: dict[str, Any] = {"benchmark": "control_flow", "sections": {}}
    try:
        for name in names:
            work = root / name
            work.mkdir(parents=True, exist_ok=True)
            summary["sections"][name] = run_section(name, args, work, peer)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\ntotal benchmark time: {time.perf_counter() - started:.1f} s")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
