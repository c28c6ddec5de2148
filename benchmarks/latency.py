"""Latency: requests/s of LLM chains when the server's answers come late (issue 24, per-record flow).

Chainette's stub OpenAI-compatible server (``chainette.engines.stub_server``) runs in a process of
its own on 127.0.0.1, answering with schema-valid JSON, late by a latency shape drawn from its
seeded fault RNG (``Faults(rate_slow=..., slow_seconds=...)``; a fresh server per measurement, so
every side sees the same draws in request order):

    =======  ===========================================================  ==================
    shape    what the server does                                         chain
    =======  ===========================================================  ==================
    none     answers at once (the client side is CPU-bound)               one step
    fixed    every request 1 s late (``rate_slow=1.0, slow_seconds=1``)   one step
    tail     10 % of requests 2 s late, the rest at once                  one step
    none3    answers at once                                              3 steps (below)
    tail3    10 % of requests 2 s late, at every step                     3 steps
    =======  ===========================================================  ==================

One step: ``Question {id, text}`` -> ``Answer {answer, confidence}`` (json_schema response format).
Three steps: ``draft`` (the one step), then a parallel pair of branches ``pro`` and ``con``
(``Answer`` -> ``Answer``) joined back, then ``final`` (``Answer`` from the question and both
branches): 4 requests per record. The 3-step shapes run ``--chain-records`` records (default a
quarter of ``--records``), so every shape sends the same number of requests.

Each side runs in a fresh child process (imports and start-up not timed), ``--concurrency``
(128) requests in flight at most, on the same prompts (the loop and Curator read the system
messages Chainette's steps send, schema instruction included) and the same sampling:

- **loop**: a hand-written asyncio loop, ``asyncio.Semaphore(128)`` around each request, every
  answer validated into ``Answer``, rows written as JSONL: the machine's own ceiling, measured in
  the same run. Its client is ``aiohttp`` (run in the Curator venv, which has it, when that venv
  is there, else here: Chainette's ``http`` extra brings it), else ``httpx.AsyncClient``
  (``--loop-client``): on this machine httpx 0.29 /
  httpcore 1.0.9 with 128 connections held 16-21 req/s against a server answering every request
  after 1 s (aiohttp: 87-110 req/s), so an httpx loop is no ceiling;
- **chainette**: ``Chain.run`` on the ``openai`` back-end (``max_concurrency=128``), ledger off
  (``cache="off"``), default ``batch_size`` and ``workers``, run folder written;
- **curator**: Bespoke Curator 0.1.31 (https://pypi.org/project/bespokelabs-curator/), NOT a
  dependency of this project: the first run creates ``benchmarks/.curator-venv`` (gitignored) with
  ``python -m venv`` and ``pip install bespokelabs-curator==0.1.31`` (its litellm pins pydantic
  2.12.5: the benchmark's models are plain pydantic v2). ``backend="openai"`` with ``base_url`` at
  the stub, ``max_concurrent_requests=128``, request and token limits far above what is sent,
  ``max_retries=0``, a fresh ``CURATOR_CACHE_DIR`` per run, telemetry off, tiktoken reading
  litellm's bundled encodings (no network). Its one structured-output probe request is sent
  before the clock starts. One-step shapes only (``--curator-shapes``; default ``tail``, where
  the issue sets a goal against it).

Every run's output is checked: as many valid rows as records, one per input id (Chainette: the
run folder's ``flattened/`` rows, the last step's fields validated as ``Answer``, no failure, as
many requests sent as expected; loop and Curator: their JSONL rows). Goals (issue 24):

- ``fixed``: Chainette >= 0.9 x (concurrency / 1 s) = 115.2 req/s at 128 in flight;
- ``tail``: Chainette >= 0.85 x Chainette on ``none`` (same run), and >= 1.8 x Curator on ``tail``;
- ``tail3``: reported against its ideal, ``min(concurrency / mean latency, rate on none3)``: 128
  slots each held 0.1 x 2 s = 0.2 s on average allow 640 req/s, and no latency can make the client
  faster than its own zero-latency rate (the end-of-run drain is not in the ideal).

Those two references leave out the schedule itself (the last slow answers drain after the rest:
2,000 requests whose 213 slow draws share 128 slots take >= 4 s at any CPU speed, <= 500 req/s).
So every side is also judged against **the bound of its own run** (``latency_bound.py``): the
stub's latency draws in request order (its fault RNG is seeded), ``--concurrency`` slots, and one
CPU spending 1 / (that side's rate on ``none`` / ``none3``, same run) per request; for 3 steps the
dependencies (draft -> pro and con -> final per record), the best of three orders. Goals:
``tail``: Chainette >= 0.85 of its bound; ``tail3``: Chainette >= 0.8 of its bound.
Beside the Curator goal, its ceilings on the same run: ``tail: loop / curator`` (a client with
the hand loop's CPU cost) and ``tail: zero-CPU bound / curator`` (the schedule bound at no CPU
cost over Curator: no client exceeds it on these draws; about 500 / 276 = 1.81 on the 2-core
machine, so 1.8 asks for 0.99 of a client that costs nothing).

Printed: a table of req/s per shape and side (median of ``--repeat`` interleaved runs, min-max),
the goals with MET / MISSED, and a last line of JSON with every figure.

    python benchmarks/latency.py                                   # 2,000 records, 2 runs per side
    python benchmarks/latency.py --shapes fixed,tail --repeat 3
    python benchmarks/latency.py --no-curator --records 200        # quick: no Curator side
    python benchmarks/latency.py --loop-client httpx               # the loop on httpx
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Only the standard library and pydantic at module level: the Curator side imports this file in
# its own venv, which has no chainette.
from latency_bound import best_rate, drawn_latencies
from pydantic import BaseModel, Field

CURATOR = "bespokelabs-curator==0.1.31"
CURATOR_VENV = Path(__file__).resolve().parent / ".curator-venv"
FIXED_GOAL = 0.9  # chainette req/s on "fixed" / (concurrency / latency)
TAIL_GOAL = 0.85  # chainette req/s on "tail" / chainette req/s on "none"
CURATOR_GOAL = 1.8  # chainette req/s on "tail" / curator req/s on "tail"
BOUND_GOALS = {"tail": 0.85, "tail3": 0.8}  # chainette req/s / the schedule bound (latency_bound.py)
PROBES = {"curator": 1}  # chat requests a side sends before its timed ones (each takes a draw)
SAMPLING = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "seed": 0}  # what Chainette sends for these
RESULT = "RESULT "  # prefix of a child's result line (Curator prints its own logs on stdout)

Result = dict[str, Any]


class Question(BaseModel):
    id: int
    text: str


class Answer(BaseModel):
    answer: str = Field(max_length=80)
    confidence: float


@dataclass(frozen=True)
class Shape:
    """A latency shape of the stub server and the chain that runs against it."""

    title: str
    rate_slow: float
    slow_seconds: float
    steps: int  # 1: one step; 3: step -> branch pair joined -> step (4 requests per record)

    @property
    def requests_per_record(self) -> int:
        return 1 if self.steps == 1 else 4

    @property
    def mean_latency(self) -> float:
        return self.rate_slow * self.slow_seconds


SHAPES = {
    "none": Shape("one step, no latency (CPU-bound)", 0.0, 0.0, 1),
    "fixed": Shape("one step, every request 1 s late", 1.0, 1.0, 1),
    "tail": Shape("one step, 10 % of requests 2 s late", 0.1, 2.0, 1),
    "none3": Shape("3 steps, no latency", 0.0, 0.0, 3),
    "tail3": Shape("3 steps, 10 % of requests 2 s late at every step", 0.1, 2.0, 3),
}

# The prompts, one per step id: (system prompt, user prompt as a Jinja template). The loop and
# Curator fill the same user prompts with str.format on the same values (``user_prompt``).
SYSTEM = "Answer the question briefly."
PROMPTS = {
    "qa": (SYSTEM, "Question: {{ text }}"),
    "draft": (SYSTEM, "Question: {{ text }}"),
    "pro": ("Argue for the answer in one line.", "Question: {{ input.text }}\nAnswer: {{ answer }}"),
    "con": ("Argue against the answer in one line.", "Question: {{ input.text }}\nAnswer: {{ answer }}"),
    "final": (
        SYSTEM,
        "Question: {{ input.text }}\nFor: {{ pro.answer }}\nAgainst: {{ con.answer }}\nFinal answer?",
    ),
}


def user_prompt(step: str, **values: str) -> str:
    template = PROMPTS[step][1]
    for name, value in values.items():
        template = template.replace("{{ " + name + " }}", value)
    return template


def last_step(shape: Shape) -> str:
    return "qa" if shape.steps == 1 else "final"


# -- Chainette ---------------------------------------------------------------------------------------


def chainette_chain(shape: Shape) -> Any:
    from chainette import Branch, Chain, SamplingParams, Step

    def step(step_id: str, input_model: type[BaseModel]) -> Step:
        system, user = PROMPTS[step_id]
        return Step(
            id=step_id,
            input_model=input_model,
            output_model=Answer,
            engine_name="bench",
            system_prompt=system,
            user_prompt=user,
            sampling=SamplingParams(temperature=0, max_tokens=64),
        )

    if shape.steps == 1:
        return Chain("latency: one step", [step("qa", Question)])
    pair = [Branch(name, [step(name, Answer)]).join(name) for name in ("pro", "con")]
    return Chain("latency: three steps", [step("draft", Question), pair, step("final", Answer)])


def system_messages() -> dict[str, str]:
    """The whole system message each step sends (prompt and schema instruction), from Chainette."""
    from chainette import Step

    found: dict[str, str] = {}
    for chain in (chainette_chain(SHAPES["none"]), chainette_chain(SHAPES["none3"])):
        for node in chain.iter_nodes():
            if isinstance(node, Step):
                assert node.fixed_system is not None
                found[node.id] = node.fixed_system
    assert set(found) == set(PROMPTS), found
    return found


def run_chainette(
    shape: Shape, src: Path, dest: Path, base_url: str, concurrency: int, max_in_flight: int | None = None
) -> Result:
    from chainette import register_engine

    register_engine("bench", backend="openai", model="m", base_url=base_url, max_concurrency=concurrency)
    chain = chainette_chain(shape)
    options = {} if max_in_flight is None else {"max_in_flight": max_in_flight}
    started = time.perf_counter()
    result = chain.run(src, output_dir=dest, cache="off", **options)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "requests": int(result.metadata["cache"]["sent"]),
        "failures": int(result.counts["failures"]),
    }


# -- the hand-written loop ---------------------------------------------------------------------------


def response_format() -> dict[str, Any]:
    schema = {"name": "Answer", "schema": Answer.model_json_schema(), "strict": False}
    return {"type": "json_schema", "json_schema": schema}


def run_loop(
    shape: Shape,
    src: Path,
    dest: Path,
    base_url: str,
    concurrency: int,
    systems: dict[str, str],
    client_kind: str,
) -> Result:
    """``client_kind``: ``aiohttp`` (in the peer venv) or ``httpx`` (what Chainette's back-end uses)."""
    questions = [Question.model_validate_json(line) for line in src.read_text().splitlines() if line]
    fmt = response_format()

    async def main() -> tuple[float, int]:
        sem = asyncio.Semaphore(concurrency)
        sent = 0
        url = base_url.rstrip("/") + "/chat/completions"
        if client_kind == "aiohttp":
            import aiohttp

            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency), timeout=aiohttp.ClientTimeout(total=120)
            )

            async def post(body: dict[str, Any]) -> Any:
                async with session.post(url, json=body) as reply:
                    reply.raise_for_status()
                    return await reply.json()

            close = session.close
        else:
            import httpx

            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            client = httpx.AsyncClient(limits=limits, timeout=120)

            async def post(body: dict[str, Any]) -> Any:
                reply = await client.post(url, json=body)
                reply.raise_for_status()
                return reply.json()

            close = client.aclose

        async def ask(step: str, user: str) -> Answer:
            nonlocal sent
            messages = [{"role": "system", "content": systems[step]}, {"role": "user", "content": user}]
            body = {"model": "m", "messages": messages, **SAMPLING, "response_format": fmt}
            async with sem:
                reply = await post(body)
                sent += 1
            return Answer.model_validate_json(reply["choices"][0]["message"]["content"])

        async def one(q: Question) -> Answer:
            if shape.steps == 1:
                return await ask("qa", user_prompt("qa", text=q.text))
            draft = await ask("draft", user_prompt("draft", text=q.text))
            said = {"input.text": q.text, "answer": draft.answer}
            pro, con = await asyncio.gather(
                ask("pro", user_prompt("pro", **said)), ask("con", user_prompt("con", **said))
            )
            values = {"input.text": q.text, "pro.answer": pro.answer, "con.answer": con.answer}
            return await ask("final", user_prompt("final", **values))

        try:
            started = time.perf_counter()
            answers = await asyncio.gather(*(one(q) for q in questions))
            with dest.open("w") as out:
                for q, a in zip(questions, answers, strict=True):
                    out.write(json.dumps({"id": q.id, **a.model_dump()}) + "\n")
            return time.perf_counter() - started, sent
        finally:
            await close()

    seconds, sent = asyncio.run(main())
    return {"seconds": seconds, "requests": sent}


# -- Bespoke Curator (runs in its own venv) ----------------------------------------------------------


def run_curator(src: Path, dest: Path, base_url: str, concurrency: int, systems: dict[str, str]) -> Result:
    litellm = importlib.util.find_spec("litellm")
    assert litellm is not None and litellm.origin is not None
    # tiktoken would download its encodings; litellm ships them (and points tiktoken there itself
    # when its default_encoding module is imported): the same files, no network
    os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(litellm.origin).parent / "litellm_core_utils" / "tokenizers")
    os.environ["CURATOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="curator-cache-", dir=dest.parent)
    from bespokelabs import curator

    class QA(curator.LLM):  # type: ignore[misc, name-defined]
        response_format = Answer

        def prompt(self, row: dict[str, Any]) -> list[dict[str, str]]:
            user = user_prompt("qa", text=row["text"])
            return [{"role": "system", "content": systems["qa"]}, {"role": "user", "content": user}]

        def parse(self, row: dict[str, Any], response: Answer) -> dict[str, Any]:
            return {"id": row["id"], **response.model_dump()}

    rows = [json.loads(line) for line in src.read_text().splitlines() if line]
    llm = QA(
        model_name="m",
        backend="openai",
        generation_params=dict(SAMPLING),
        backend_params={
            "base_url": base_url,
            "api_key": "unused",
            "max_concurrent_requests": concurrency,
            "max_requests_per_minute": 100_000_000,
            "max_tokens_per_minute": 100_000_000_000,
            "max_retries": 0,
        },
    )
    # Curator asks a server at a base_url whether it does structured output once per call, with
    # one request (late like any other): asked here, before the clock, and the answer kept
    processor = llm._request_processor
    supported = processor.check_structured_output_support()
    processor.check_structured_output_support = lambda: supported
    started = time.perf_counter()
    response = llm(rows)
    seconds = time.perf_counter() - started
    with dest.open("w") as out:
        for row in response.dataset:
            out.write(json.dumps(row) + "\n")
    return {"seconds": seconds, "requests": len(rows)}


# -- children: the stub server, and one side of one shape, each in a fresh process -------------------


def serve(args: argparse.Namespace) -> None:
    from chainette.engines.stub_server import Faults, StubServer

    faults = Faults(rate_slow=args.rate_slow, slow_seconds=args.slow_seconds)
    asyncio.run(StubServer(port=args.port, faults=faults).serve_forever())


def child(args: argparse.Namespace) -> None:
    shape = SHAPES[args.shape]
    src, dest = Path(args.input), Path(args.output)
    systems: dict[str, str] = json.loads(Path(args.systems).read_text())
    if args.child == "chainette":
        import chainette.runtime.executor  # noqa: F401 - imports stay outside the timed region

        out = run_chainette(shape, src, dest, args.base_url, args.concurrency, args.max_in_flight)
    elif args.child == "curator":
        out = run_curator(src, dest, args.base_url, args.concurrency, systems)
    else:
        __import__(args.loop_client)  # imports stay outside the timed region
        out = run_loop(shape, src, dest, args.base_url, args.concurrency, systems, args.loop_client)
    print(RESULT + json.dumps(out), flush=True)


# -- parent: peer venv, orchestration, checks, report ------------------------------------------------


def curator_python(venv: Path) -> Path:
    """The Curator venv's interpreter, with Curator 0.1.31 installed (created on first use)."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('bespokelabs-curator'))"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "0.1.31":
        return python
    print(f"  creating {venv} with {CURATOR} (once, a few minutes; delete the folder to redo it)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", CURATOR]
    if subprocess.run(install).returncode != 0:
        raise SystemExit(f"could not install {CURATOR} into {venv}; run with --no-curator to skip it")
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_stub(shape: Shape) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--port", str(port)]
    cmd += ["--rate-slow", str(shape.rate_slow), "--slow-seconds", str(shape.slow_seconds)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=1):
                return proc, base_url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the stub server did not start")


def read_rows(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    return [json.loads(line) for file in files for line in file.read_text().splitlines() if line.strip()]


def check(side: str, shape: Shape, dest: Path, records: int, out: Result) -> tuple[int, list[str]]:
    """(valid rows, problems): a valid row is one per input id whose answer validates as ``Answer``."""
    problems: list[str] = []
    if side == "chainette":
        step = last_step(shape)
        rows = [
            {
                "id": r.get("input.id"),
                "answer": r.get(f"{step}.answer"),
                "confidence": r.get(f"{step}.confidence"),
            }
            for r in read_rows(dest / "flattened")
        ]
        if out.get("failures"):
            problems.append(f"{out['failures']} failures")
    else:
        rows = read_rows(dest)
    ids: set[int] = set()
    for row in rows:
        try:
            Answer.model_validate({"answer": row["answer"], "confidence": row["confidence"]})
        except (KeyError, ValueError):
            continue
        if isinstance(row["id"], int) and 0 <= row["id"] < records:
            ids.add(row["id"])
    if len(ids) != records or len(rows) != records:
        problems.append(f"{len(ids)} valid rows of distinct ids among {len(rows)} (expected {records})")
    expected = records * shape.requests_per_record
    if out["requests"] != expected:
        problems.append(f"{out['requests']} requests sent (expected {expected})")
    return len(ids), problems


def measure(side: str, name: str, records: int, work: Path, python: Path, args: argparse.Namespace) -> Result:
    shape = SHAPES[name]
    src = work / f"in-{records}.jsonl"
    dest = work / f"{name}-{side}" if side == "chainette" else work / f"{name}-{side}.jsonl"
    if dest.is_dir():
        shutil.rmtree(dest)
    dest.unlink(missing_ok=True)
    proc, base_url = start_stub(shape)
    cmd = [str(python), str(Path(__file__).resolve()), "--child", side, "--shape", name]
    cmd += ["--input", str(src), "--output", str(dest), "--base-url", base_url]
    cmd += ["--concurrency", str(args.concurrency), "--systems", str(work / "systems.json")]
    cmd += ["--loop-client", args.loop_client]
    if args.max_in_flight is not None:
        cmd += ["--max-in-flight", str(args.max_in_flight)]
    env = dict(os.environ)
    if python != Path(sys.executable):
        env.pop("PYTHONPATH", None)  # the peer sees its own venv only
        env["TELEMETRY_ENABLED"] = "false"
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    try:
        child_proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    finally:
        proc.kill()
        proc.wait()
    results = [line for line in child_proc.stdout.splitlines() if line.startswith(RESULT)]
    if child_proc.returncode != 0 or not results:
        sys.stderr.write(child_proc.stdout[-5000:] + child_proc.stderr[-5000:])
        raise SystemExit(f"{side} side of shape {name!r} failed with exit code {child_proc.returncode}")
    out: Result = json.loads(results[-1][len(RESULT) :])
    out["valid_rows"], out["problems"] = check(side, shape, dest, records, out)
    out["records"] = records
    out["req_per_s"] = out["requests"] / out["seconds"]
    verdict = "CORRECT" if not out["problems"] else "INCORRECT: " + "; ".join(out["problems"])
    print(
        f"  {name:<6} {side:<10} {out['requests']:>6,} requests {out['seconds']:7.2f} s "
        f"{out['req_per_s']:8.1f} req/s  {out['valid_rows']:,} valid rows  {verdict}",
        flush=True,
    )
    return out


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  ".join(cells).rstrip())


def goals(
    rates: dict[str, dict[str, float]], requests: dict[str, int], concurrency: int
) -> list[dict[str, Any]]:
    """Each goal of the issue (and each side's figure against the same ideal) that this run can judge.

    ``requests``: how many each shape sends; fewer than ``concurrency`` are all in flight at once."""
    found: list[dict[str, Any]] = []

    def add(label: str, value: float, reference: float, goal: float | None, how: str) -> None:
        ratio = value / reference
        verdict = "" if goal is None else ("MET" if ratio >= goal else "MISSED")
        found.append(
            {"goal": label, "ratio": round(ratio, 3), "target": goal, "verdict": verdict, "how": how}
        )

    fixed = SHAPES["fixed"]
    if "fixed" in rates:
        ideal = min(concurrency, requests["fixed"]) / fixed.slow_seconds
        for side, rate in rates["fixed"].items():
            goal = FIXED_GOAL if side == "chainette" else None
            add(f"fixed: {side} / ideal", rate, ideal, goal, f"{rate:.1f} / {ideal:.0f} req/s")
    if "tail" in rates and "none" in rates:
        for side, rate in rates["tail"].items():
            if side in rates["none"]:
                goal = TAIL_GOAL if side == "chainette" else None
                none = rates["none"][side]
                add(f"tail: {side} / its none", rate, none, goal, f"{rate:.1f} / {none:.1f} req/s")
    if "tail" in rates and {"chainette", "curator"} <= set(rates["tail"]):
        mine, peer = rates["tail"]["chainette"], rates["tail"]["curator"]
        add("tail: chainette / curator", mine, peer, CURATOR_GOAL, f"{mine:.1f} / {peer:.1f} req/s")
        # the ceilings of that ratio on this run: a client with the hand loop's CPU cost, and one
        # with none at all (the schedule bound of the draws alone: the slow answers' drain)
        if "loop" in rates["tail"]:
            loop = rates["tail"]["loop"]
            add("tail: loop / curator", loop, peer, None, f"{loop:.1f} / {peer:.1f} req/s")
        tail = SHAPES["tail"]
        drawn = drawn_latencies(
            requests["tail"], tail.rate_slow, tail.slow_seconds, skip=PROBES.get("chainette", 0)
        )
        free, _ = best_rate(drawn, records=requests["tail"], steps=1, concurrency=concurrency)
        how = f"{free:.1f} / {peer:.1f} req/s: no client exceeds this ratio on these draws"
        add("tail: zero-CPU bound / curator", free, peer, None, how)
    for name, sides in rates.items():  # the hand loop is the machine's own ceiling, measured alongside
        if {"chainette", "loop"} <= set(sides):
            mine, loop = sides["chainette"], sides["loop"]
            add(f"{name}: chainette / loop", mine, loop, None, f"{mine:.1f} / {loop:.1f} req/s")
    found += bound_goals(rates, requests, concurrency)
    if "tail3" in rates and "none3" in rates:
        tail3 = SHAPES["tail3"]
        bound = min(concurrency, requests["tail3"]) / tail3.mean_latency
        for side, rate in rates["tail3"].items():
            if side in rates["none3"]:
                ideal = min(bound, rates["none3"][side])
                how = f"{rate:.1f} / min({bound:.0f}, none3 {rates['none3'][side]:.1f}) req/s"
                add(f"tail3: {side} / ideal", rate, ideal, None, how)
    return found


def bound_goals(
    rates: dict[str, dict[str, float]], requests: dict[str, int], concurrency: int
) -> list[dict[str, Any]]:
    """Each side's rate on each latency shape against the schedule bound of its own draws.

    The bound (``latency_bound.best_rate``): the server's latency draws in request order, ``concurrency``
    slots, one CPU spending 1 / (the side's rate on the zero-latency twin of the shape) per request
    (0 when the twin did not run for that side: the bound of the latencies alone)."""
    found: list[dict[str, Any]] = []
    for name, sides in rates.items():
        shape = SHAPES[name]
        if shape.rate_slow == 0:
            continue
        twin = "none" if shape.steps == 1 else "none3"
        sent = requests[name]
        for side, rate in sides.items():
            zero = rates.get(twin, {}).get(side)
            cost = 1 / zero if zero else 0.0
            drawn = drawn_latencies(sent, shape.rate_slow, shape.slow_seconds, skip=PROBES.get(side, 0))
            records = sent // shape.requests_per_record
            bound, policy = best_rate(
                drawn, records=records, steps=shape.steps, concurrency=concurrency, cost=cost
            )
            goal = BOUND_GOALS.get(name) if side == "chainette" else None
            spent = (
                f"{1000 * cost:.2f} ms/request ({twin} {zero:.0f} req/s)" if zero else f"no {twin} run: 0 ms"
            )
            ratio = rate / bound
            found.append(
                {
                    "goal": f"{name}: {side} / bound",
                    "ratio": round(ratio, 3),
                    "target": goal,
                    "verdict": "" if goal is None else ("MET" if ratio >= goal else "MISSED"),
                    "how": f"{rate:.1f} / {bound:.1f} req/s; CPU {spent}; {policy}",
                    "bound": round(bound, 1),
                }
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000, help="Records of the one-step shapes (2,000)")
    parser.add_argument(
        "--chain-records",
        type=int,
        help="Records of the 3-step shapes (default records / 4: as many requests)",
    )
    parser.add_argument("--concurrency", type=int, default=128, help="Requests in flight at most (128)")
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help=f"Comma-separated, of: {', '.join(SHAPES)}"
    )
    parser.add_argument("--repeat", type=int, default=2, help="Runs per side and shape, interleaved (2)")
    parser.add_argument("--no-curator", action="store_true", help="No Curator side (no peer venv)")
    parser.add_argument(
        "--curator-shapes", default="tail", help="One-step shapes Curator runs on (default tail)"
    )
    parser.add_argument("--curator-venv", type=Path, default=CURATOR_VENV, help=f"Default {CURATOR_VENV}")
    parser.add_argument(
        "--loop-client",
        choices=["auto", "aiohttp", "httpx"],
        default="auto",
        help="The hand loop's HTTP client: aiohttp runs in the Curator venv when there, else in this "
        "interpreter; auto: aiohttp when either has it, else httpx",
    )
    parser.add_argument(
        "--max-in-flight", type=int, help="Chainette's max_in_flight (default: its own default)"
    )
    parser.add_argument("--workdir", help="Where inputs and outputs go (default: a temp dir, removed after)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate-slow", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--slow-seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["loop", "chainette", "curator"], help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=list(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--systems", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    if args.child:
        child(args)
        return
    names = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    peer_shapes = set() if args.no_curator else {s for s in args.curator_shapes.split(",") if s}
    if any(s not in SHAPES or SHAPES[s].steps != 1 for s in peer_shapes):
        parser.error("--curator-shapes takes one-step shapes: none, fixed, tail")
    chain_records = args.chain_records or max(1, args.records // 4)

    started = time.perf_counter()
    print(
        f"chainette latency benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"concurrency {args.concurrency}, {args.records:,} records (3-step shapes: {chain_records:,}), "
        f"{args.repeat} interleaved run(s) per side, peer {'(none)' if not peer_shapes else CURATOR}",
        flush=True,
    )
    peer = curator_python(args.curator_venv) if peer_shapes & set(names) else None
    venv_python = args.curator_venv / "bin" / "python"
    here_aiohttp = importlib.util.find_spec("aiohttp") is not None  # the [http] extra brings it
    if args.loop_client == "auto":
        args.loop_client = "aiohttp" if venv_python.exists() or here_aiohttp else "httpx"
    if args.loop_client == "aiohttp" and not venv_python.exists():
        venv_python = Path(sys.executable) if here_aiohttp else curator_python(args.curator_venv)
    loop_python = venv_python if args.loop_client == "aiohttp" else Path(sys.executable)
    print(f"hand loop: asyncio + {args.loop_client} ({loop_python})", flush=True)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="chainette-latency-"))
    root.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, str], list[Result]] = {}
    try:
        (root / "systems.json").write_text(json.dumps(system_messages()))
        for n in {args.records, chain_records}:
            with (root / f"in-{n}.jsonl").open("w") as fh:
                for i in range(n):
                    fh.write(json.dumps({"id": i, "text": f"What is fact number {i}?"}) + "\n")
        for _ in range(args.repeat):
            for name in names:
                records = args.records if SHAPES[name].steps == 1 else chain_records
                sides = {"loop": loop_python, "chainette": Path(sys.executable)}
                if peer is not None and name in peer_shapes:
                    sides["curator"] = peer
                for side, python in sides.items():
                    runs.setdefault((name, side), []).append(measure(side, name, records, root, python, args))
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)

    rates: dict[str, dict[str, float]] = {}
    table = [("shape", "side", "requests", "req/s (median)", "min-max", "valid rows")]
    for (name, side), results in runs.items():
        per_s = [r["req_per_s"] for r in results]
        rates.setdefault(name, {})[side] = statistics.median(per_s)
        valid = "all" if all(not r["problems"] for r in results) else "NO"
        table.append(
            (
                name,
                side,
                f"{results[0]['requests']:,}",
                f"{rates[name][side]:.1f}",
                f"{min(per_s):.1f}-{max(per_s):.1f}",
                valid,
            )
        )
    print(f"\nrequests/s, median of {args.repeat} run(s) per side, {args.concurrency} in flight:")
    print_table(table)
    sent = {name: results[0]["requests"] for (name, _), results in runs.items()}
    judged = goals(rates, sent, args.concurrency)
    print("\nratios (goals of issue 24; the rest are the same ratio for the other sides, for reference):")
    print_table(
        [("ratio", "value", "goal", "verdict", "from")]
        + [
            (
                g["goal"],
                f"{g['ratio']:.3f}",
                f">= {g['target']}" if g["target"] else "-",
                g["verdict"] or "-",
                g["how"],
            )
            for g in judged
        ]
    )
    correct = all(not r["problems"] for results in runs.values() for r in results)
    print(f"\noutputs: {'CORRECT' if correct else 'INCORRECT'} (every run, every side)")
    print(f"total benchmark time: {time.perf_counter() - started:.1f} s")
    summary = {
        "benchmark": "latency",
        "records": args.records,
        "chain_records": chain_records,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "loop_client": args.loop_client,
        "req_per_s": {
            name: {side: [round(r["req_per_s"], 1) for r in runs[(name, side)]] for side in rates[name]}
            for name in rates
        },
        "median_req_per_s": {
            name: {s: round(v, 1) for s, v in sides.items()} for name, sides in rates.items()
        },
        "goals": judged,
        "correct": correct,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
