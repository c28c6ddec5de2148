"""Chainette's ``openai`` back-end against a hand-written asyncio loop, same server, same concurrency.

    .venv/bin/python benchmarks/http_client.py [--requests 2000] [--concurrency 32] [--rounds 3]

Starts Chainette's stub OpenAI-compatible server (schema-valid JSON, instantly) in a separate
process on 127.0.0.1, so what is measured is the client side: HTTP, JSON, validation and, for
Chainette, rendering, the runtime and writing the run folder. Rounds alternate between the two
so machine noise hits both. Prints requests/s and the ratio against the 0.95x goal.

Baseline: ``openai.AsyncOpenAI`` when it imports, else raw ``httpx``; each answer is parsed and
validated into the output model, as any real loop must.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from chainette import Chain, SamplingParams, Step, register_engine

SYSTEM = "Answer the question briefly."


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str = Field(max_length=80)
    confidence: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "chainette.engines.stub_server", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=1):
                return proc, base_url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("stub server did not start")


def chainette_run(base_url: str, questions: list[Question], concurrency: int) -> float:
    register_engine("bench", backend="openai", model="m", base_url=base_url, max_concurrency=concurrency)
    step = Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name="bench",
        system_prompt=SYSTEM,
        user_prompt="Question: {{ text }}",
        sampling=SamplingParams(temperature=0, max_tokens=64),
    )
    chain = Chain("bench", [step], batch_size=max(64, concurrency))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        # cache off: every round must really send its requests (the ledger would answer repeats)
        result = chain.run(questions, output_dir=Path(tmp) / "run", cache="off")
        elapsed = time.perf_counter() - started
    assert result.counts["records_out"] == len(questions), result.counts
    return len(questions) / elapsed


def hand_written(base_url: str, questions: list[Question], concurrency: int, client_kind: str) -> float:
    """``client_kind``: ``openai`` (``openai.AsyncOpenAI``) or ``httpx`` (raw ``httpx.AsyncClient``)."""
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "Answer", "schema": Answer.model_json_schema()},
    }

    def messages(q: Question) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question: {q.text}"}]

    async def main() -> float:
        sem = asyncio.Semaphore(concurrency)
        if client_kind == "openai":
            from openai import AsyncOpenAI

            client: Any = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)

            async def ask(q: Question) -> Answer:
                async with sem:
                    reply = await client.chat.completions.create(
                        model="m",
                        messages=messages(q),
                        temperature=0,
                        max_tokens=64,
                        response_format=response_format,
                    )
                return Answer.model_validate_json(reply.choices[0].message.content or "")

            close = client.close
        else:
            import httpx

            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            client = httpx.AsyncClient(base_url=base_url, limits=limits)

            async def ask(q: Question) -> Answer:
                body = {"model": "m", "messages": messages(q), "temperature": 0, "max_tokens": 64}
                async with sem:
                    reply = await client.post(
                        "/chat/completions", json={**body, "response_format": response_format}
                    )
                return Answer.model_validate_json(reply.json()["choices"][0]["message"]["content"])

            close = client.aclose
        started = time.perf_counter()
        answers = await asyncio.gather(*(ask(q) for q in questions))
        elapsed = time.perf_counter() - started
        await close()
        assert len(answers) == len(questions)
        return len(questions) / elapsed

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    questions = [Question(text=f"What is fact number {i}?") for i in range(args.requests)]
    try:
        import openai  # noqa: F401

        kinds = ["openai", "httpx"]
    except ImportError:
        kinds = ["httpx"]
    proc, base_url = start_server()
    rates: dict[str, list[float]] = {"chainette": [], **{k: [] for k in kinds}}
    try:
        chainette_run(base_url, questions[:200], args.concurrency)  # warm up every path
        for kind in kinds:
            hand_written(base_url, questions[:200], args.concurrency, kind)
        for _ in range(args.rounds):
            rates["chainette"].append(chainette_run(base_url, questions, args.concurrency))
            for kind in kinds:
                rates[kind].append(hand_written(base_url, questions, args.concurrency, kind))
    finally:
        proc.terminate()
        proc.wait()
    best = {k: max(v) for k, v in rates.items()}
    labels = {
        "chainette": "chainette, openai backend (run folder written)",
        "openai": "hand-written asyncio + openai.AsyncOpenAI",
        "httpx": "hand-written asyncio + raw httpx",
    }
    print(
        f"{args.requests} requests, concurrency {args.concurrency}, best of {args.rounds} rounds, stub server"
    )
    for key, rate in best.items():
        print(f"  {labels[key]:<48} {rate:8.1f} req/s   rounds {json.dumps([round(r) for r in rates[key]])}")
    for kind in kinds:
        ratio = best["chainette"] / best[kind]
        print(f"  ratio vs {kind:<6} {ratio:.2f}x (goal >= 0.95x): {'met' if ratio >= 0.95 else 'NOT met'}")


if __name__ == "__main__":
    main()
