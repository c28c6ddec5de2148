"""Models and helpers shared by the tests (a plain module, so there is one copy of each class)."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import anyio
from pydantic import BaseModel, Field

import chainette
from chainette.engines.fake import FakeEngine


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str = Field(max_length=80)
    confidence: float


class Translation(BaseModel):
    translated: str = Field(max_length=80)


class Summary(BaseModel):
    summary: str = Field(max_length=120)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


class RecordingEngine(FakeEngine):
    """A fake back-end that remembers its instances and accepts any option (e.g. an api_key)."""

    instances: ClassVar[list[RecordingEngine]] = []

    def __init__(self, model: str | None = None, *, api_key: str | None = None, **options: Any) -> None:
        super().__init__(model, **options)
        self.api_key = api_key
        RecordingEngine.instances.append(self)


class ExplodingEngine(FakeEngine):
    """A back-end whose generate() raises: the whole batch fails with the cause kept."""

    async def generate(self, requests: Any) -> Any:
        raise TimeoutError("no answer within 30 s")


class FlakyEngine(FakeEngine):
    """A fake back-end whose ``generate()`` raises for the first ``raise_first`` calls (of all
    instances together), then answers; ``call_times`` holds when each call came."""

    raise_first: ClassVar[int] = 0
    call_times: ClassVar[list[float]] = []

    async def generate(self, requests: Any) -> Any:
        FlakyEngine.call_times.append(time.monotonic())
        if len(FlakyEngine.call_times) <= FlakyEngine.raise_first:
            raise ConnectionError("connection reset by peer")
        return await super().generate(requests)


class SleepyEngine(FakeEngine):
    """A fake back-end that takes ``seconds`` over each call holding a request whose last message
    contains "slow" (an await, so it is cancellable, as a real engine's call is); the others
    are answered at once."""

    def __init__(self, model: str | None = None, *, seconds: float = 5.0, **options: Any) -> None:
        super().__init__(model, **options)
        self.seconds = seconds

    async def generate(self, requests: Any) -> Any:
        if any("slow" in r.messages[-1]["content"] for r in requests):
            await anyio.sleep(self.seconds)
        return await super().generate(requests)


class CountingEngine(FakeEngine):
    """A fake back-end that logs the step of every request any instance receives."""

    sent: ClassVar[list[str]] = []

    async def generate(self, requests: Any) -> Any:
        CountingEngine.sent.extend(r.tag.split("/")[0] for r in requests)
        return await super().generate(requests)


def join_chain(engine: str, *, max_tokens: int = 96) -> Any:
    """qa → [fr, es] joined → summary: a multi-step chain with a join, on one engine."""
    from chainette import Branch, Chain, SamplingParams, Step

    sampling = SamplingParams(temperature=0, max_tokens=max_tokens)

    def translate(lang: str) -> Any:
        return Branch(
            lang,
            [
                Step(
                    id=f"to_{lang}",
                    input_model=Answer,
                    output_model=Translation,
                    engine_name=engine,
                    system_prompt=f"Translate the text into {lang}.",
                    user_prompt="{{ answer }}",
                    sampling=sampling,
                )
            ],
        ).join(lang)

    qa = Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name=engine,
        system_prompt="Answer the question briefly.",
        user_prompt="Question: {{ text }}",
        sampling=sampling,
    )
    summary = Step(
        id="summary",
        input_model=Answer,
        output_model=Summary,
        engine_name=engine,
        user_prompt="Q: {{ input.text }}\nA: {{ qa.answer }}\nFrench: {{ french.translated }}\n"
        "Spanish: {{ spanish.translated }}\nWrite a one-line summary.",
        sampling=sampling,
    )
    return Chain("http join", [qa, [translate("french"), translate("spanish")], summary])


def assert_every_record_accounted_for(
    run_dir: Path, n: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each input is in flattened/ or failures.jsonl exactly once; the counts in metadata.json agree."""
    flat = read_jsonl(run_dir / "flattened")
    failures = read_jsonl(run_dir / "failures.jsonl")
    ids = [r["_id"] for r in flat] + [r["_id"] for r in failures]
    assert len(ids) == len(set(ids)) == n, "a record was lost or duplicated"
    counts = json.loads((run_dir / "metadata.json").read_text())["counts"]
    assert counts["records_in"] == n == counts["records_out"] + counts["failures"]
    assert all(f["message"] for f in failures)
    return flat, failures


def assert_secret_nowhere(folder: Path, secret: str) -> None:
    """No file under ``folder`` contains ``secret``."""
    leaks = [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == [], f"the secret leaked into {leaks}"


def qa_step(engine: str = "fake", *, prompt: str = "{{ text }}", **options: Any) -> Any:
    """The usual first step of a test chain: ``qa``, Question → Answer on ``engine``."""
    from chainette import Step

    return Step(
        id="qa", input_model=Question, output_model=Answer, engine_name=engine, user_prompt=prompt, **options
    )


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_module(path: Path, name: str | None = None) -> ModuleType:
    """Import a Python file by path (a chain script a test wrote, an example). With ``name`` the
    module is also registered in ``sys.modules`` under it (pydantic resolves the models'
    annotations through it)."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if name is not None:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` afresh (an example registers its engine on import)."""
    return load_module(EXAMPLES / f"{name}.py", f"examples_{name}")


def ledger_keys(path: Path) -> set[str]:
    """The keys a ledger file holds, read-only (while another process may be writing it)."""
    if not path.exists():
        return set()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        try:
            return {k for (k,) in db.execute("SELECT key FROM completions")}
        except sqlite3.OperationalError:  # the table is not created yet
            return set()


def echo(request: Any) -> dict[str, Any]:
    """A fake engine's responder: the user message back as an ``Answer`` (``"re: <message>"``)."""
    return {"answer": "re: " + request.messages[-1]["content"], "confidence": 1.0}


def with_llama_engine(body: Any, **options: Any) -> Any:
    """Run ``await body(engine)`` on a started embedded engine (n_ctx 1024, 2 threads, ``options``), closed after."""
    import anyio

    from chainette.engines.llama_cpp import LlamaCppEngine

    async def main() -> Any:
        engine = LlamaCppEngine(**{"n_ctx": 1024, "n_threads": 2, **options})
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.close()

    return anyio.run(main)


def decoding(decoder: Any, request: Any) -> tuple[int, list[int]]:
    """The sequence decoding ``request`` in an embedded engine's batch decoder, and its tokens so far."""
    (slot,) = [s for s in decoder.slots if s.job is not None and s.job.request is request]
    return slot.seq, list(slot.tokens)


async def seconds_until_freed(decoder: Any, seq: int, tokens: list[int], within: float = 2.0) -> float:
    """Seconds until no sequence holds ``tokens`` (a dropped job's prompt and output) and, unless
    another running job was moved into it, llama.cpp itself holds no cells for sequence ``seq``."""
    started = anyio.current_time()
    while anyio.current_time() - started < within:
        gone = all(slot.tokens[: len(tokens)] != tokens for slot in decoder.slots)
        slot = decoder.slots[seq]
        if gone and (slot.job is not None or decoder.cached_cells(seq) == len(slot.tokens) == 0):
            return anyio.current_time() - started
        await anyio.sleep(0.005)
    raise AssertionError(f"sequence {seq} still holds the dropped job's cells after {within} s")


def start_ray(num_cpus: int = 2) -> Any:
    """A local Ray instance for one test module, as a Ray run would start it (``num_cpus`` CPUs, a
    small object store, the workers importing what this process imports); stop it with
    ``ray.shutdown()``."""
    import ray

    from chainette.runtime.ray_executor import local_ray_options

    ray.init(**local_ray_options(num_cpus))
    return ray


def ray_worker_pids() -> list[int]:
    """Process ids of the Ray executor's workers (``ray::ChainWorker``) under this process."""
    import psutil

    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "ChainWorker" in " ".join(proc.cmdline()):
                out.append(proc.pid)
        except psutil.Error:
            continue
    return out


def cli_with_memory_cap(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``chainette ARGS`` in a child capped at 3 GB of address space: a reader that tries to read
    ``/dev/zero`` whole fails fast with MemoryError there instead of eating the machine's memory."""
    src = Path(chainette.__file__).parents[1]
    command = " ".join(f"'{a}'" for a in args)
    return subprocess.run(
        ["bash", "-c", f"ulimit -v 3000000; exec '{sys.executable}' -m chainette {command}"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(src), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
