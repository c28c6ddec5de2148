"""Serving: what the service costs per request, its messages/s against PenguiFlow 2.0.0, and how fast
a cancel closes the in-flight connection. Every figure is a ratio (or a time) measured in this run.

Section ``overhead``: the stub server (``chainette.engines.stub_server``, in this process, every
answer delayed by ``--latency`` seconds) answers N requests sent one after another, first by
calling the ``openai`` engine directly (``engine.generate([request])``: the baseline), then as N
traces of a one-step chain through :class:`ChainService` (``submit`` → ``result``, ledger off, so
every trace sends). Printed: p50 and p99 latency of each, and service/direct per percentile
(1.00 = no overhead).

Section ``fanout``: N messages through a fan-out/join flow: each message is forked to two no-op
nodes (``left``, ``right``) and the two results are joined back into one message, per message.
Chainette: a served chain ``[[Branch("left", [apply(left)]).join("l"), Branch("right",
[apply(right)]).join("r")]]``, every message a trace (``submit`` as fast as the service takes
them, results awaited in submission order). PenguiFlow 2.0.0 (not a dependency: the first run
creates ``benchmarks/.peers-venv``, see ``control_flow.py``): ``fork.to(left, right)``,
``left.to(join)``, ``right.to(join)``, ``join_k("join", 2)``, every message ``flow.emit``-ed and
``flow.fetch``-ed concurrently. Each side runs in a fresh child process. Printed: messages/s per
side and chainette/penguiflow (goal: > 1, ahead).

Section ``cancel``: a trace whose step streams from the stub server (50 SSE chunks,
``--chunk-delay`` apart) is cancelled once its first piece has arrived; printed: the time from
``cancel()`` to the stub server seeing the connection closed (goal: under 50 ms), median and
worst of ``--cancels``. Both clocks are ``time.monotonic()`` in this process (the stub runs in a
thread of it).

    python benchmarks/service.py                                # every section
    python benchmarks/service.py --sections overhead --requests 400 --latency 0.02
    python benchmarks/service.py --sections fanout --messages 20000 --no-penguiflow
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_flow import PEERS_VENV, peer_python  # the peer venv, shared with control_flow

FANOUT_GOAL = 1.0
CANCEL_GOAL_MS = 50.0


class Msg(BaseModel):
    id: int
    text: str


def left(msg: Msg) -> Msg:
    return msg


def right(msg: Msg) -> Msg:
    return msg


# -- section "overhead" -------------------------------------------------------------------------


class Question(BaseModel):
    text: str


class Reply(BaseModel):
    answer: str


def stub_chain(name: str) -> Any:
    """One step, ``Question`` → ``Reply``, on the engine ``stub`` (registered by the caller)."""
    from chainette import Chain, Step

    step = Step(
        id="qa", input_model=Question, output_model=Reply, engine_name="stub", user_prompt="{{ text }}"
    )
    return Chain(name=name, steps=[step])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def overhead(args: argparse.Namespace) -> dict[str, Any]:
    from chainette import ChainService, register_engine
    from chainette.engines.base import ChatRequest
    from chainette.engines.registry import create_engine, get_engine_config
    from chainette.engines.stub_server import Faults, StubServer

    n = args.requests
    with StubServer(faults=Faults(rate_slow=1.0, slow_seconds=args.latency)) as stub:
        register_engine("stub", backend="openai", model="stub", base_url=stub.base_url, max_retries=0)
        chain = stub_chain("overhead")
        step = chain.items[0]
        engine = create_engine(get_engine_config("stub"))
        await engine.start()
        direct: list[float] = []
        served: list[float] = []
        try:
            # interleaved halves, so a noisy moment of the machine hits both sides
            async with ChainService(chain, cache="off") as service:
                for k in range(n):
                    text = f"question {k}"
                    request = ChatRequest(
                        messages=({"role": "user", "content": text},),
                        json_schema=step.json_schema,
                        sampling=step.sampling,
                    )
                    started = time.perf_counter()
                    [completion] = await engine.generate([request])
                    direct.append(time.perf_counter() - started)
                    assert completion.finish_reason == "stop", completion
                    started = time.perf_counter()
                    trace = await service.submit({"text": text + " (served)"})
                    await trace.result()
                    served.append(time.perf_counter() - started)
        finally:
            await engine.close()
    out: dict[str, Any] = {"requests": n, "latency_s": args.latency}
    for name, values in (("direct", direct), ("service", served)):
        out[name] = {"p50_ms": percentile(values, 0.5) * 1e3, "p99_ms": percentile(values, 0.99) * 1e3}
    out["ratio_p50"] = out["service"]["p50_ms"] / out["direct"]["p50_ms"]
    out["ratio_p99"] = out["service"]["p99_ms"] / out["direct"]["p99_ms"]
    print(f"\n[overhead] {n} sequential requests, stub latency {args.latency * 1e3:.0f} ms")
    for name in ("direct", "service"):
        print(f"  {name:<8} p50 {out[name]['p50_ms']:7.2f} ms   p99 {out[name]['p99_ms']:7.2f} ms")
    print(f"  service/direct: p50 {out['ratio_p50']:.3f}   p99 {out['ratio_p99']:.3f}")
    return out


# -- section "fanout" (each side in a child process) --------------------------------------------


async def fanout_chainette(n: int) -> dict[str, Any]:
    from chainette import Branch, Chain, ChainService, apply

    chain = Chain(
        name="fanout",
        steps=[[Branch("left", [apply(left)]).join("l"), Branch("right", [apply(right)]).join("r")]],
    )
    joined = 0
    async with ChainService(chain, cache="off", capacity=n, concurrency=1024, warm=False) as service:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        started = time.perf_counter()

        async def produce() -> None:
            for k in range(n):
                await queue.put(await service.submit(Msg(id=k, text=f"message {k}")))

        async def consume() -> int:
            done = 0
            for _ in range(n):
                trace = await queue.get()
                out = await trace.result()
                done += out.id >= 0
            return done

        _, joined = await asyncio.gather(produce(), consume())
        seconds = time.perf_counter() - started
    return {"messages": joined, "seconds": seconds}


async def fanout_penguiflow(n: int) -> dict[str, Any]:
    from penguiflow import Headers, Message, Node, NodePolicy, create, join_k

    def noop(name: str, fn: Any) -> Node:
        async def run(msg: Message, ctx: Any) -> Message:
            payload = fn(msg.payload)
            return msg if payload is msg.payload else msg.model_copy(update={"payload": payload})

        return Node(run, name=name, policy=NodePolicy(validate="none"))

    async def fork_run(msg: Message, ctx: Any) -> Message:
        return msg

    fork = Node(fork_run, name="fork", policy=NodePolicy(validate="none"))
    lnode, rnode = noop("left", left), noop("right", right)
    join = join_k("join", 2)
    flow = create(fork.to(lnode, rnode), lnode.to(join), rnode.to(join), join.to())
    headers = Headers(tenant="bench")
    flow.run()
    started = time.perf_counter()

    async def produce() -> None:
        for k in range(n):
            await flow.emit(Message(payload=Msg(id=k, text=f"message {k}"), headers=headers))

    async def consume() -> int:
        done = 0
        for _ in range(n):
            await flow.fetch()
            done += 1
        return done

    try:
        _, joined = await asyncio.gather(produce(), consume())
    finally:
        seconds = time.perf_counter() - started
        await flow.stop()
    return {"messages": joined, "seconds": seconds}


def spawn(side: str, n: int, python: Path) -> dict[str, Any]:
    env = dict(os.environ)
    if side == "penguiflow":
        env.pop("PYTHONPATH", None)
    cmd = [str(python), str(Path(__file__).resolve()), "--child", side, "--messages", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{side} side failed with exit code {proc.returncode}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["messages_per_s"] = out["messages"] / out["seconds"]
    print(
        f"  {side:<11} {out['messages']:>8,} messages {out['seconds']:7.2f} s {out['messages_per_s']:>9,.0f} msg/s"
    )
    return out


def fanout(args: argparse.Namespace) -> dict[str, Any]:
    n = args.messages
    print(
        f"\n[fanout] {n:,} messages through fork -> (left, right) -> join, {args.repeat} interleaved run(s)"
    )
    sides = {"chainette": Path(sys.executable)}
    if not args.no_penguiflow:
        sides["penguiflow"] = peer_python(PEERS_VENV)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for _ in range(args.repeat):
        for side, python in sides.items():
            runs[side].append(spawn(side, n, python))
    out: dict[str, Any] = {"messages": n}
    for side, values in runs.items():
        out[side] = sorted(values, key=lambda r: r["seconds"])[len(values) // 2]
        assert out[side]["messages"] == n, f"{side} joined {out[side]['messages']} of {n}"
    if "penguiflow" in out:
        ratio = out["chainette"]["messages_per_s"] / out["penguiflow"]["messages_per_s"]
        out["ratio"] = ratio
        verdict = "ahead: goal met" if ratio > FANOUT_GOAL else "behind: goal missed"
        print(f"  chainette/penguiflow (medians): {ratio:.2f} ({verdict})")
    return out


# -- section "cancel" ---------------------------------------------------------------------------


async def cancel(args: argparse.Namespace) -> dict[str, Any]:
    from chainette import ChainService, register_engine
    from chainette.engines.stub_server import StubServer

    stub_server = StubServer(stream_chunks=50, stream_delay=args.chunk_delay)
    times: list[float] = []
    with stub_server as stub:
        register_engine("stub", backend="openai", model="stub", base_url=stub.base_url, max_retries=0)
        chain = stub_chain("cancel")
        async with ChainService(chain, cache="off") as service:
            for k in range(args.cancels):
                before = len(stub.disconnects)
                trace = await service.submit({"text": f"long answer {k}"})
                async for event in trace.events():
                    if event.kind == "chunk":
                        break
                started = time.monotonic()
                trace.cancel()
                while len(stub.disconnects) == before:  # noqa: ASYNC110 - polling is the measurement
                    await asyncio.sleep(0.0005)
                times.append(stub.disconnects[-1].at - started)
    out = {"cancels": len(times), "median_ms": statistics.median(times) * 1e3, "max_ms": max(times) * 1e3}
    verdict = "goal met" if out["median_ms"] < CANCEL_GOAL_MS else "goal missed"
    print(
        f"\n[cancel] cancel -> connection closed at the stub: median {out['median_ms']:.1f} ms, "
        f"max {out['max_ms']:.1f} ms over {len(times)} ({verdict}: < {CANCEL_GOAL_MS:.0f} ms)"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="overhead,fanout,cancel")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-penguiflow", action="store_true")
    parser.add_argument("--cancels", type=int, default=20)
    parser.add_argument("--chunk-delay", type=float, default=0.01)
    parser.add_argument("--child", choices=["chainette", "penguiflow"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "chainette":
        print(json.dumps(asyncio.run(fanout_chainette(args.messages))))
        return
    if args.child == "penguiflow":
        print(json.dumps(asyncio.run(fanout_penguiflow(args.messages))))
        return
    results: dict[str, Any] = {}
    sections = args.sections.split(",")
    if "overhead" in sections:
        results["overhead"] = asyncio.run(overhead(args))
    if "fanout" in sections:
        results["fanout"] = fanout(args)
    if "cancel" in sections:
        results["cancel"] = asyncio.run(cancel(args))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
