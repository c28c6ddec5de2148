"""Engine overhead: a one-step chain on the embedded llama.cpp back-end against direct llama-cpp-python calls.

Both sides send the same N chat requests to the same GGUF (default: the bundled SmolLM2-135M)
with the same messages (system prompt + the step's schema instruction, user prompt), the same
GBNF grammar (built from the output model's JSON schema exactly as the engine builds it), the
same threads and the same greedy sampling, one request at a time. Model load time is EXCLUDED
on both sides: the direct side starts its clock after ``Llama(...)`` returns, the chain side at
its ``engine_started`` event (emitted once the model is loaded). The chain's clock stops when
``Chain.run`` returns, so it includes rendering, validation, writing the run folder and closing
the engine.

Each run happens in a fresh subprocess. That matters: llama-cpp-python's CPU build uses OpenMP,
whose thread team belongs to the calling thread and outlives the call. Once one live thread has
run llama.cpp (say the main thread, for the direct side), a second thread doing the same (the
chain's worker thread) makes libgomp see more threads than CPUs and stop spin-waiting, and
decoding runs about 2x slower on 2 cores. In one process this benchmark would mostly measure that.

The direct side is plain ``llama_cpp.Llama.create_chat_completion`` with ``grammar=``, which masks
the whole vocabulary with the grammar at every token. The engine's default ``fast_grammar=True``
checks the best token first and masks only when the grammar rejects it: the same greedy output
(checked below, prompt by prompt), less work. ``--no-fast-grammar`` measures the engine without it.

Goal: chain requests/s >= 0.95 x direct requests/s, with identical outputs. This section pins the
engine to ``grammar="gbnf"`` (llama-cpp-python's grammar, one sequence at a time), the only
decoder the direct side can reproduce.

Two more sections measure the default decoder (``grammar="llguidance"``, batched):

- ``batching``: the same one-step chain over ``--batch-n`` (64) requests with ``parallel=P``
  (``--parallel``, default 64: every request in one batch) against ``parallel=1``: aggregate
  completion tokens/s, outputs checked identical request by request. Goal >= 2x. Two answer shapes (``--shapes``): ``short``
  (the overhead section's ``Answer``, about 20 tokens per answer, so that evaluating the prompts
  is a large part of the work) and ``long`` (``Explained``: an answer and a few sentences of
  explanation, about 100 tokens).
- ``schema``: schema-bound against unconstrained decoding, through the engine, at the same
  ``parallel`` with the same messages (the chain's, rendered by ``render_messages``); completion
  tokens/s. Goal >= 0.9x.

- ``forced``: fast-forward of the tokens the schema forces (``fast_forward``, default on). In one
  run, each side a fresh process, medians of ``--repeat``: schema-bound (fast-forward on) against
  free decoding, completion tokens/s, for the quickstart's ``Answer`` and ``Facts`` (nested
  object, enums, a list), goal >= 1.25; the quickstart chain (``examples/quickstart.py`` on
  ``examples/quickstart.jsonl``), wall time (model load excluded) with fast-forward off / on,
  goal >= 1.3; the share of answer tokens that were forced and the decodes saved; greedy answers
  on / off compared request by request (every difference printed; goal >= 62 of 64 equal);
  batched / one-at-a-time (fast-forward on) against the same ratio on the raw llama.cpp API
  replaying the same work (the ceiling: the same prompts, and per request the same tokens per
  decode, a chosen token plus the run it forced), goal >= 0.9 of it; the engine fed by a stream
  of records (one every ``--arrival-ms``): mean sequences per decode against mean requests
  pending (issue 24). Every side also reports its process CPU time over the timed span, and
  its decode loop's CPU time outside ``llama_decode``; ratios are given in wall and CPU time
  with the load average. On a busy machine run it with ``--threads 1``: llama.cpp's OpenMP
  threads spin-wait at each barrier, and with other processes on the cores both their wall
  and CPU time swing by 2-4x; one thread has no barrier.

    python benchmarks/engine.py                       # all sections
    python benchmarks/engine.py --sections overhead --n 5 --repeat 3
    python benchmarks/engine.py --sections batching,schema --repeat 2
    python benchmarks/engine.py --sections batching --shapes long
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from chainette import Chain, SamplingParams, Step, register_engine
from chainette.engines.llama_cpp import default_model_path

FORCED_CHILDREN = [
    "ff-free",
    "ff-on",
    "ff-off",
    "ff-alone",
    "ff-batched",
    "ff-raw-alone",
    "ff-raw-batched",
    "ff-quickstart-on",
    "ff-quickstart-off",
    "ff-quickstart-nocache",
    "ff-stream",
]

RATIO_GOAL = 0.95
BATCH_GOAL = 2.0
SCHEMA_GOAL = 0.9
SECTIONS = ("overhead", "batching", "schema", "forced")
FORCED_GOAL = 1.25
QUICKSTART_GOAL = 1.3
CEILING_GOAL = 0.9
SAME_GOAL = 62 / 64
SYSTEM_PROMPT = "Answer the question briefly."
QUESTIONS = [
    "What is the capital of France?",
    "What colour is the sky on a clear day?",
    "How many legs does a spider have?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Which planet is known as the red planet?",
    "What is the largest ocean on Earth?",
    "In which year did the Second World War end?",
    "What gas do plants absorb from the air?",
    "What is the chemical symbol for gold?",
    "Which continent is Egypt in?",
    "How many days are in a leap year?",
    "What is the tallest mountain in the world?",
    "Who painted the Mona Lisa?",
    "What is the freezing point of water in Fahrenheit?",
    "Which language is spoken in Brazil?",
    "What is the square root of 81?",
    "What is the longest river in Africa?",
    "Which animal is known as the king of the jungle?",
    "What is the main ingredient of guacamole?",
]


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    # Fields in alphabetical order: the engine's grammar orders keys alphabetically (see the report).
    answer: str = Field(max_length=60)
    category: Literal["science", "geography", "history", "culture", "other"]


class Explained(BaseModel):
    answer: str = Field(max_length=60)
    explanation: str = Field(max_length=400)


class QuickAnswer(BaseModel):
    """The quickstart's ``Answer``."""

    answer: str = Field(max_length=60, description="A short answer")
    confidence: float = Field(ge=0, le=1, description="How sure you are, between 0 and 1")


class Place(BaseModel):
    city: str = Field(max_length=30)
    country: str = Field(max_length=30)


class Facts(BaseModel):
    """Nested object, enums and a list."""

    answer: str = Field(max_length=40)
    kind: Literal["person", "place", "thing", "number", "other"]
    where: Place
    tags: list[Literal["science", "geography", "history", "culture", "other"]] = Field(
        min_length=1, max_length=2
    )


SHAPES: dict[str, tuple[type[BaseModel], str, int | None]] = {
    # output model, system prompt, max_tokens (None: --max-tokens)
    "short": (Answer, SYSTEM_PROMPT, None),
    "long": (Explained, "Answer the question, then explain the answer in two or three sentences.", 256),
    "quick": (QuickAnswer, SYSTEM_PROMPT, None),
    "nested": (Facts, SYSTEM_PROMPT, 128),
}


def questions(n: int) -> list[str]:
    return [
        QUESTIONS[i % len(QUESTIONS)] + (f" (#{i // len(QUESTIONS) + 1})" if i >= len(QUESTIONS) else "")
        for i in range(n)
    ]


def make_step(max_tokens: int, shape: str = "short") -> Step:
    output_model, system_prompt, shape_max_tokens = SHAPES[shape]
    return Step(
        id="qa",
        input_model=Question,
        output_model=output_model,
        engine_name="bench",
        system_prompt=system_prompt,
        user_prompt="Question: {{ text }}",
        sampling=SamplingParams(temperature=0, max_tokens=shape_max_tokens or max_tokens, seed=0),
    )


def direct_messages(step: Step, text: str) -> list[dict[str, str]]:
    """What the chain sends, written out by hand (checked against the chain's renderer below)."""
    return [
        {"role": "system", "content": f"{SYSTEM_PROMPT}\n\n{step.schema_instruction}"},
        {"role": "user", "content": f"Question: {text}"},
    ]


def run_direct(step: Step, texts: list[str], model: Path, threads: int, n_ctx: int) -> dict[str, Any]:
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

    load_started = time.perf_counter()
    llm = Llama(model_path=str(model), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - load_started
    # The engine builds its grammar from the schema dumped with sorted keys; so does this side.
    grammar = LlamaGrammar.from_json_schema(json.dumps(step.json_schema, sort_keys=True), verbose=False)
    sampling = step.sampling
    outputs: list[dict[str, Any] | None] = []
    tokens = 0
    started = time.perf_counter()
    for text in texts:
        result: Any = llm.create_chat_completion(
            messages=direct_messages(step, text),  # type: ignore[arg-type]
            grammar=grammar,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            stop=None,
        )
        choice = result["choices"][0]
        tokens += result["usage"]["completion_tokens"]
        try:
            answer = Answer.model_validate(json.loads(choice["message"]["content"] or "", strict=False))
            outputs.append(answer.model_dump(mode="json") if choice["finish_reason"] != "length" else None)
        except ValueError:
            outputs.append(None)
    seconds = time.perf_counter() - started
    llm.close()
    return {
        "seconds": seconds,
        "load_s": load_s,
        "outputs": outputs,
        "tokens": tokens,
        "requests": len(texts),
    }


def run_chain(step: Step, texts: list[str], workdir: Path) -> dict[str, Any]:
    chain = Chain(name="engine-bench", steps=[step])
    marks: dict[str, float] = {}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "engine_started":
            marks["loaded"] = time.perf_counter()
            marks["load_s"] = data["seconds"]
        elif kind == "node_progress":
            marks["last_progress"] = time.perf_counter()
        elif kind == "engine_released":
            marks["released"] = time.perf_counter()

    out = workdir / "chain-run"
    shutil.rmtree(out, ignore_errors=True)
    # cache off: this measures the engine path, not the ledger (a rerun would be served from it)
    result = chain.run([Question(text=t) for t in texts], output_dir=out, on_event=on_event, cache="off")
    seconds = time.perf_counter() - marks["loaded"]
    by_index: dict[int, dict[str, Any]] = {}
    for row in result.flattened():
        by_index[row["_index"]] = {k.removeprefix("qa."): v for k, v in row.items() if k.startswith("qa.")}
    stats = result.metadata["nodes"]["qa"]
    return {
        "seconds": seconds,
        "load_s": marks["load_s"],
        "outputs": [by_index.get(i) for i in range(len(texts))],
        "tokens": stats["completion_tokens"],
        "requests": stats["requests"],
        "failures": result.counts["failures"],
        "close_s": marks["released"] - marks["last_progress"],
    }


def check_rendering(step: Step, texts: list[str]) -> bool:
    from chainette.runtime.records import Record
    from chainette.runtime.step_runner import render_messages

    for i, text in enumerate(texts):
        value = Question(text=text)
        if render_messages(step, Record(str(i), i, value, {"input": value})) != direct_messages(step, text):
            return False
    return True


def register_bench_engine(model: Path, args: argparse.Namespace, parallel: int | None = None) -> None:
    if parallel is None:  # the overhead section: the decoder the direct side reproduces
        options: dict[str, Any] = {"grammar": "gbnf", "fast_grammar": not args.no_fast_grammar}
    else:
        options = {"grammar": "llguidance", "parallel": parallel}
    register_engine(
        "bench", backend="llama_cpp", model=str(model), n_ctx=args.n_ctx, n_threads=args.threads, **options
    )


def run_engine_free_vs_schema(
    step: Step,
    texts: list[str],
    model: Path,
    args: argparse.Namespace,
    schema: bool,
    fast_forward: bool = True,
    parallel: int | None = None,
) -> dict[str, Any]:
    """Every request in flight at once through the engine (as the step runner sends them)."""
    import anyio

    from chainette.engines.base import ChatRequest
    from chainette.engines.llama_cpp import LlamaCppEngine
    from chainette.runtime.records import Record
    from chainette.runtime.step_runner import render_messages

    requests = []
    for i, text in enumerate(texts):
        value = Question(text=text)
        messages = tuple(render_messages(step, Record(str(i), i, value, {"input": value})))
        requests.append(
            ChatRequest(
                messages=messages, json_schema=step.json_schema if schema else None, sampling=step.sampling
            )
        )

    async def main() -> dict[str, Any]:
        engine = LlamaCppEngine(
            str(model),
            n_ctx=args.n_ctx,
            n_threads=args.threads,
            parallel=parallel or args.parallel,
            fast_forward=fast_forward,
        )
        load_started = time.perf_counter()
        await engine.start()
        load_s = time.perf_counter() - load_started
        completions: list[Any] = [None] * len(requests)

        async def one(i: int) -> None:
            completions[i] = (await engine.generate([requests[i]]))[0]

        started, cpu_started = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for i in range(len(requests)):
                tg.start_soon(one, i)
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        counters = engine.counters()
        prompt_tokens = [c.prompt_tokens for c in completions]
        await engine.close()
        return {
            "counters": counters,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": [c.completion_tokens for c in completions],
            "seconds": seconds,
            "cpu_s": cpu_s,
            "load_s": load_s,
            "tokens": sum(c.completion_tokens for c in completions),
            "requests": len(requests),
            "length": sum(c.finish_reason == "length" for c in completions),
            "outputs": [c.text for c in completions],
        }

    return anyio.run(main)


def child(args: argparse.Namespace) -> None:
    model = Path(args.model) if args.model else default_model_path()
    parallel = args.parallel if args.child in ("batched", "free", "schema") else None
    register_bench_engine(model, args, 1 if args.child == "one-at-a-time" else parallel)
    step, texts = (
        make_step(args.max_tokens, args.shape),
        questions(args.batch_n if args.child != "direct" and args.child != "chain" else args.n),
    )
    if args.child in ("free", "schema"):
        run = run_engine_free_vs_schema(step, texts, model, args, schema=args.child == "schema")
    elif args.child.startswith("ff-"):
        from forced_bench import run_forced_child

        run = run_forced_child(args.child, step, texts, model, args)
    elif args.child == "direct":
        run = run_direct(step, texts, model, args.threads, args.n_ctx)
    else:
        with tempfile.TemporaryDirectory(prefix="chainette-engine-") as workdir:
            run = run_chain(step, texts, Path(workdir))
    print(json.dumps(run))


def in_process(side: str, args: argparse.Namespace) -> dict[str, Any]:
    model = Path(args.model) if args.model else default_model_path()
    step, texts = make_step(args.max_tokens), questions(args.n)
    if side == "direct":
        run = run_direct(step, texts, model, args.threads, args.n_ctx)
    else:
        with tempfile.TemporaryDirectory(prefix="chainette-engine-") as workdir:
            run = run_chain(step, texts, Path(workdir))
    report(side, run, args.n)
    return run


def report(side: str, run: dict[str, Any], n: int) -> None:
    print(
        f"  {side:<6} {run['seconds']:7.2f} s  {n / run['seconds']:6.3f} req/s  "
        f"{run['tokens']:5d} completion tokens  {run['requests']} requests  "
        f"(model load {run['load_s']:.2f} s, excluded"
        + (f"; engine close {run['close_s']:.2f} s, included)" if "close_s" in run else ")"),
        flush=True,
    )


def spawn(side: str, args: argparse.Namespace, quiet: bool = False) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--n",
        str(args.n),
        "--max-tokens",
        str(args.max_tokens),
    ]
    cmd += ["--threads", str(args.threads), "--n-ctx", str(args.n_ctx), "--parallel", str(args.parallel)]
    cmd += ["--batch-n", str(args.batch_n), "--shape", args.shape]
    if args.model:
        cmd += ["--model", args.model]
    if args.no_fast_grammar:
        cmd.append("--no-fast-grammar")
    if getattr(args, "counts", None):
        cmd += ["--counts", args.counts]
    cmd += ["--arrival-ms", str(args.arrival_ms)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{side} run failed with exit code {proc.returncode}")
    run: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if quiet:
        cpu = f", CPU {run['cpu_s']:.2f} s" if "cpu_s" in run else ""
        print(
            f"  {side:<14}{run['seconds']:8.2f} s{cpu} {run['tokens'] / run['seconds']:8.1f} completion tok/s "
            f"({run['tokens']} tokens, {run['requests']} requests, model load {run['load_s']:.2f} s excluded)",
            flush=True,
        )
    else:
        report(side, run, args.n)
    return run


def paired(
    args: argparse.Namespace, base: str, other: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``--repeat`` runs of each side in fresh processes, alternating which goes first."""
    runs: dict[str, list[dict[str, Any]]] = {base: [], other: []}
    for k in range(args.repeat):
        for side in (base, other) if k % 2 == 0 else (other, base):
            runs[side].append(spawn(side, args, quiet=True))
    return runs[base], runs[other]


def names(text: str) -> list[str]:
    """The items of a comma-separated option."""
    return [name.strip() for name in text.split(",") if name.strip()]


def tokens_per_s(runs: list[dict[str, Any]]) -> float:
    return statistics.median(r["tokens"] / r["seconds"] for r in runs)


def batching_section(args: argparse.Namespace) -> bool:
    met = True
    for shape in names(args.shapes):
        met = batching_shape(argparse.Namespace(**{**vars(args), "shape": shape})) and met
    return met


def batching_shape(args: argparse.Namespace) -> bool:
    model, _, max_tokens = SHAPES[args.shape]
    print(
        f"\n[batching, {args.shape}: {model.__name__}, max_tokens {max_tokens or args.max_tokens}] one-step chain, "
        f"{args.batch_n} requests, llguidance grammar, parallel={args.parallel} against parallel=1 "
        "(each run a fresh process, model load excluded)"
    )
    alone, together = paired(args, "one-at-a-time", "batched")
    ratio = tokens_per_s(together) / tokens_per_s(alone)
    reference = alone[0]["outputs"]
    mismatched = {
        i for run in alone[1:] + together for i, o in enumerate(run["outputs"]) if o != reference[i]
    }
    failures = sum(r["failures"] for r in alone + together)
    print(
        f"  one-at-a-time {tokens_per_s(alone):8.1f} tok/s   batched {tokens_per_s(together):8.1f} tok/s (medians); "
        f"{alone[0]['tokens'] / alone[0]['requests']:.0f} completion tokens per request sent"
    )
    print(f"  batched / one-at-a-time completion tokens/s = {ratio:.2f}")
    print(f"  GOAL {'MET' if ratio >= BATCH_GOAL else 'MISSED'}: {ratio:.2f} (goal >= {BATCH_GOAL})")
    print(
        f"  {'OUTPUTS MATCH' if not mismatched else 'OUTPUTS DIFFER'}: "
        f"{args.batch_n - len(mismatched)}/{args.batch_n} requests identical in every run; failures {failures}"
    )
    return ratio >= BATCH_GOAL and not mismatched


def schema_section(args: argparse.Namespace) -> bool:
    print(
        f"\n[schema] {args.batch_n} requests through the engine at parallel={args.parallel}: "
        "schema-bound (llguidance) against unconstrained, same messages"
    )
    free, bound = paired(args, "free", "schema")
    ratio = tokens_per_s(bound) / tokens_per_s(free)
    valid = sum(1 for text in bound[0]["outputs"] if _valid(text))
    print(
        f"  unconstrained {tokens_per_s(free):8.1f} tok/s   schema-bound {tokens_per_s(bound):8.1f} tok/s (medians)"
    )
    print(f"  schema-bound / unconstrained completion tokens/s = {ratio:.2f}")
    print(f"  GOAL {'MET' if ratio >= SCHEMA_GOAL else 'MISSED'}: {ratio:.2f} (goal >= {SCHEMA_GOAL})")
    print(
        f"  schema-bound outputs that validate as Answer: {valid}/{args.batch_n} (cut at max_tokens: {bound[0]['length']})"
    )
    return ratio >= SCHEMA_GOAL


def _valid(text: str) -> bool:
    try:
        Answer.model_validate_json(text)
    except ValueError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="Prompts per side (default 20)")
    parser.add_argument("--max-tokens", type=int, default=96, help="max_tokens per request (default 96)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads (both sides)"
    )
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--model", help="GGUF path (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="Runs per side, alternating; medians are reported"
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="Run both sides in this process, direct first (shows the OpenMP slowdown described above)",
    )
    parser.add_argument(
        "--no-fast-grammar",
        action="store_true",
        help="Engine with fast_grammar=False: llama-cpp-python's own grammar sampling on both sides",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"Comma-separated, from {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--parallel", type=int, default=64, help="Sequences decoded together (batching, schema)"
    )
    parser.add_argument(
        "--batch-n", type=int, default=64, help="Requests in the batching and schema sections"
    )
    parser.add_argument(
        "--shapes",
        default=",".join(SHAPES),
        help=f"Answer shapes of the batching section, from {', '.join(SHAPES)} (default: all)",
    )
    parser.add_argument("--shape", choices=list(SHAPES), default="short", help=argparse.SUPPRESS)
    parser.add_argument("--counts", help=argparse.SUPPRESS)
    parser.add_argument(
        "--arrival-ms",
        type=float,
        default=100.0,
        help="forced section, stream line: one request arriving every this many ms (default 100)",
    )
    parser.add_argument(
        "--child",
        choices=["direct", "chain", "one-at-a-time", "batched", "free", "schema", *FORCED_CHILDREN],
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sections = names(args.sections)
    unknown = set(sections) - set(SECTIONS)
    bad_shapes = set(names(args.shapes)) - set(SHAPES)
    if bad_shapes:
        parser.error(f"unknown shape(s) {', '.join(sorted(bad_shapes))}; choose from {', '.join(SHAPES)}")
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    total_started = time.perf_counter()
    if "overhead" in sections:
        overhead_section(args)
    if "batching" in sections:
        batching_section(args)
    if "schema" in sections:
        schema_section(args)
    if "forced" in sections:
        from forced_bench import forced_section

        forced_section(args)
    print(f"\ntotal benchmark time: {time.perf_counter() - total_started:.1f} s")
    sys.stdout.flush()


def overhead_section(args: argparse.Namespace) -> None:
    model = Path(args.model) if args.model else default_model_path()
    register_bench_engine(model, args)
    step = make_step(args.max_tokens)
    texts = questions(args.n)
    print(
        f"chainette engine benchmark: {args.n} prompts, model {model.name}, {args.threads} threads, "
        f"n_ctx {args.n_ctx}, max_tokens {args.max_tokens}, greedy; model load excluded on both sides; "
        + ("both sides in this process" if args.same_process else "each run in a fresh process")
    )
    rendering_ok = check_rendering(step, texts)
    print(f"  messages identical to the chain's render_messages: {'yes' if rendering_ok else 'NO'}")

    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "chain": []}
    for k in range(args.repeat):
        # alternate which side goes first, so neither always gets the warmer machine
        for side in ("direct", "chain") if k % 2 == 0 else ("chain", "direct"):
            runs[side].append(spawn(side, args) if not args.same_process else in_process(side, args))
    directs, chains = runs["direct"], runs["chain"]

    direct_s = statistics.median(r["seconds"] for r in directs)
    chain_s = statistics.median(r["seconds"] for r in chains)
    ratio = direct_s / chain_s  # = (n / chain_s) / (n / direct_s)
    reference = directs[0]["outputs"]
    mismatched = [
        i for run in chains + directs[1:] for i, o in enumerate(run["outputs"]) if o != reference[i]
    ]
    invalid = sum(o is None for o in reference)
    print()
    print(f"{'side':<8}{'seconds':>9}{'req/s':>9}")
    print(f"{'direct':<8}{direct_s:>9.2f}{args.n / direct_s:>9.3f}")
    print(f"{'chain':<8}{chain_s:>9.2f}{args.n / chain_s:>9.3f}")
    print(f"chain / direct throughput = {ratio:.3f} (medians of {args.repeat} run(s) per side)")
    print()
    print(
        f"GOAL {'MET' if ratio >= RATIO_GOAL else 'MISSED'}: chain/direct = {ratio:.3f} (goal >= {RATIO_GOAL})"
    )
    extra = sum(r["requests"] - args.n for r in chains)
    same = not mismatched and rendering_ok and not extra and not any(r["failures"] for r in chains)
    print(
        f"{'OUTPUTS MATCH' if same else 'OUTPUTS DIFFER'}: {args.n - len(set(mismatched))}/{args.n} prompts "
        f"identical across every run; direct outputs not valid Answer: {invalid}; chain re-asks: {extra}; "
        f"chain failures: {sum(r['failures'] for r in chains)}"
    )
    if reference:
        print(f"sample output: {texts[0]!r} -> {json.dumps(reference[0])}")


if __name__ == "__main__":
    main()
