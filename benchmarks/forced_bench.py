"""The ``forced`` section of ``engine.py``: fast-forward of grammar-forced tokens (see its docstring)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from engine import (
    CEILING_GOAL,
    FORCED_GOAL,
    QUICKSTART_GOAL,
    SAME_GOAL,
    SHAPES,
    Question,
    run_engine_free_vs_schema,
    spawn,
)

from chainette import Step

ROOT = Path(__file__).resolve().parent.parent


def run_forced_child(
    child: str, step: Step, texts: list[str], model: Path, args: argparse.Namespace
) -> dict[str, Any]:
    stats = instrument(record=child in ("ff-alone", "ff-batched"))
    run = _run_child(child, step, texts, model, args)
    run["decode_s"], run["decode_cpu_s"] = stats["decode_s"], stats["decode_cpu_s"]
    run["loop_cpu_s"], run["prompt_cpu_s"] = stats["loop_cpu_s"], stats["prompt_cpu_s"]
    run["fed"], run["prompt_fed"] = stats["fed"], stats["prompt_fed"]
    if stats["ops"]:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(stats["ops"], f)
        run["ops_file"] = f.name
    if stats["steps"]:
        run["mean_sequences"] = stats["sequences"] / stats["steps"]
        run["mean_pending"] = stats["pending"] / stats["steps"]
    return run


def instrument(record: bool = False) -> dict[str, Any]:
    """Patch this child process to measure itself: wall and CPU time inside ``llama_decode``, the decode
    loop thread's CPU time, sequences and pending jobs at each decode, and the CPU time that went to
    prompt tokens (each decode's time shared out by the tokens it fed). ``record``: also log every
    llama.cpp call that changes the cache (each decode's tokens, positions, sequences and logits
    flags; each sequence removal and copy), in order, for :func:`run_replay`."""
    import llama_cpp

    from chainette.engines import llama_batch

    stats: dict[str, Any] = {"decode_s": 0.0, "decode_cpu_s": 0.0, "loop_cpu_s": 0.0, "prompt_cpu_s": 0.0}
    stats.update(steps=0, sequences=0, pending=0, fed=0, prompt_fed=0, ops=[])
    decode, seq_rm, seq_cp = (
        llama_cpp.llama_decode,
        llama_cpp.llama_memory_seq_rm,
        llama_cpp.llama_memory_seq_cp,
    )
    ops: list[Any] = stats["ops"]

    def timed_decode(ctx: Any, batch: Any) -> int:
        if record:
            rows = range(batch.n_tokens)
            ops.append(
                ["d", [[batch.token[i], batch.pos[i], batch.seq_id[i][0], batch.logits[i]] for i in rows]]
            )
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return int(decode(ctx, batch))
        finally:
            stats["decode_s"] += time.perf_counter() - wall
            stats["decode_cpu_s"] += time.thread_time() - cpu

    def logged_rm(memory: Any, seq: int, p0: int, p1: int) -> Any:
        ops.append(["rm", seq, p0, p1])
        return seq_rm(memory, seq, p0, p1)

    def logged_cp(memory: Any, source: int, target: int, p0: int, p1: int) -> Any:
        ops.append(["cp", source, target, p0, p1])
        return seq_cp(memory, source, target, p0, p1)

    llama_cpp.llama_decode = timed_decode
    if record:
        llama_cpp.llama_memory_seq_rm, llama_cpp.llama_memory_seq_cp = logged_rm, logged_cp
    decoder = llama_batch.BatchDecoder
    run, step, init = decoder._run, decoder._step, decoder.__init__

    def logged_init(self: Any, *a: Any, **kw: Any) -> None:
        init(self, *a, **kw)
        ops.append(["init", len(self.slots), len(self.cache.entries), self.n_batch])

    def timed_run(self: Any) -> None:
        cpu = time.thread_time()
        try:
            run(self)
        finally:
            stats["loop_cpu_s"] += time.thread_time() - cpu

    def counted_step(self: Any) -> None:
        stats["steps"] += 1
        stats["sequences"] += self.busy_sequences()
        stats["pending"] += self.load()
        prompt, cpu = self.prompt_tokens, stats["decode_cpu_s"]
        step(self)
        fed = int(self.batch.n_tokens)
        stats["fed"] += fed
        stats["prompt_fed"] += self.prompt_tokens - prompt
        stats["prompt_cpu_s"] += (stats["decode_cpu_s"] - cpu) * (self.prompt_tokens - prompt) / max(1, fed)

    decoder._run, decoder._step = timed_run, counted_step  # type: ignore[method-assign]
    if record:
        decoder.__init__ = logged_init  # type: ignore[method-assign]
    return stats


def _run_child(
    child: str, step: Step, texts: list[str], model: Path, args: argparse.Namespace
) -> dict[str, Any]:
    if child == "ff-stream":
        return run_stream(step, texts, model, args)
    if child == "ff-free":
        return run_engine_free_vs_schema(step, texts, model, args, schema=False)
    if child in ("ff-on", "ff-off"):
        return run_engine_free_vs_schema(step, texts, model, args, schema=True, fast_forward=child == "ff-on")
    if child in ("ff-alone", "ff-batched"):
        parallel = 1 if child == "ff-alone" else args.parallel
        return run_engine_free_vs_schema(step, texts, model, args, schema=True, parallel=parallel)
    if child in ("ff-raw-alone", "ff-raw-batched"):
        work = json.loads(Path(args.counts).read_text())[child.removeprefix("ff-raw-")]
        return {**run_replay(model, args, work["ops"]), "tokens": work["tokens"], "requests": len(texts)}
    return run_quickstart(
        args, fast_forward=child != "ff-quickstart-off", prompt_cache=child != "ff-quickstart-nocache"
    )


def run_stream(step: Step, texts: list[str], model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The engine fed by a stream of records: request ``i`` arrives ``i * arrival_ms`` after the first."""
    import anyio

    from chainette.engines.base import ChatRequest
    from chainette.engines.llama_cpp import LlamaCppEngine
    from chainette.runtime.records import Record
    from chainette.runtime.step_runner import render_messages

    requests = [
        ChatRequest(
            messages=tuple(
                render_messages(step, Record(str(i), i, Question(text=t), {"input": Question(text=t)}))
            ),
            json_schema=step.json_schema,
            sampling=step.sampling,
        )
        for i, t in enumerate(texts)
    ]

    async def main() -> dict[str, Any]:
        engine = LlamaCppEngine(str(model), n_ctx=args.n_ctx, n_threads=args.threads, parallel=args.parallel)
        load_started = time.perf_counter()
        await engine.start()
        load_s = time.perf_counter() - load_started
        tokens: list[int] = [0] * len(requests)

        async def one(i: int) -> None:
            await anyio.sleep(i * args.arrival_ms / 1000)
            tokens[i] = (await engine.generate([requests[i]]))[0].completion_tokens

        started, cpu_started = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for i in range(len(requests)):
                tg.start_soon(one, i)
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        counters = engine.counters()
        await engine.close()
        return {
            "counters": counters,
            "seconds": seconds,
            "cpu_s": cpu_s,
            "load_s": load_s,
            "tokens": sum(tokens),
            "requests": len(requests),
        }

    return anyio.run(main)


def run_quickstart(args: argparse.Namespace, fast_forward: bool, prompt_cache: bool = True) -> dict[str, Any]:
    """The quickstart chain on its inputs, its engine with ``fast_forward`` and ``prompt_cache`` on or off."""
    from chainette import register_engine
    from chainette.engines.llama_cpp import LlamaCppEngine

    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    assert spec is not None and spec.loader is not None
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    register_engine(
        "local",
        backend="llama_cpp",
        n_ctx=2048,
        n_threads=args.threads,
        fast_forward=fast_forward,
        prompt_cache=prompt_cache,
    )
    counters: dict[str, int] = {}
    close = LlamaCppEngine.close

    async def closing(self: LlamaCppEngine) -> None:
        counters.update(self.counters())
        await close(self)

    LlamaCppEngine.close = closing  # type: ignore[method-assign]
    lines = (ROOT / "examples" / "quickstart.jsonl").read_text().splitlines()
    inputs = [quickstart.Question(**json.loads(line)) for line in lines if line.strip()]
    marks: dict[str, float] = {}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "engine_started":
            marks["load_s"] = marks.get("load_s", 0.0) + data["seconds"]
            marks.setdefault("cpu_started", time.process_time())  # CPU time from the model loaded on

    with tempfile.TemporaryDirectory(prefix="chainette-quickstart-") as workdir:
        started = time.perf_counter()
        result = quickstart.chain.run(
            inputs, output_dir=Path(workdir) / "run", on_event=on_event, cache="off"
        )
        seconds = time.perf_counter() - started - marks.get("load_s", 0.0)
        cpu_s = time.process_time() - marks.get("cpu_started", 0.0)
        outputs = [json.dumps(row, sort_keys=True, default=str) for row in result.flattened()]
    return {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "load_s": marks.get("load_s", 0.0),
        "tokens": counters.get("generated_tokens", 0),
        "requests": len(inputs),
        "counters": counters,
        "outputs": outputs,
    }


def run_replay(model: Path, args: argparse.Namespace, ops: list[Any]) -> dict[str, Any]:
    """An engine run's llama.cpp work replayed on the raw API: the same decodes (tokens, positions,
    sequences, logits rows) and cache removals and copies, in the same order, on a context of the
    same shape, with nothing else in between: the kernels' ceiling for that run."""
    import llama_cpp

    from chainette.engines.llama_batch import BatchDecoder

    (_, parallel, cached, n_batch), *work = ops
    load_started = time.perf_counter()
    decoder = BatchDecoder(
        str(model),
        parallel=parallel,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        n_batch=n_batch,
        prompt_cache=cached,
    )
    load_s = time.perf_counter() - load_started
    started, cpu_started = time.perf_counter(), time.process_time()
    replay(work, llama_cpp, decoder.ctx, decoder.batch, decoder.memory)
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    decoder.close()
    return {"seconds": seconds, "cpu_s": cpu_s, "load_s": load_s}


def replay(ops: list[Any], api: Any, ctx: Any, batch: Any, memory: Any) -> None:
    """Make the calls ``ops`` logged (:func:`instrument`) through ``api`` (the ``llama_cpp`` module)."""
    for op in ops:
        if op[0] == "rm":
            api.llama_memory_seq_rm(memory, *op[1:])
        elif op[0] == "cp":
            api.llama_memory_seq_cp(memory, *op[1:])
        else:
            for i, (token, pos, seq, logits) in enumerate(op[1]):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0], batch.logits[i] = seq, logits
            batch.n_tokens = len(op[1])
            if api.llama_decode(ctx, batch) != 0:
                raise RuntimeError("the replayed decode failed")


def _sides(
    args: argparse.Namespace, names: list[str], repeat: int | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Each side ``repeat`` times in fresh processes, the order rotated between rounds."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for k in range(repeat or args.repeat):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            runs[name].append(spawn(name, args, quiet=True))
    return runs


def _tps(runs: list[dict[str, Any]]) -> float:
    return statistics.median(r["tokens"] / r["seconds"] for r in runs)


def _cps(runs: list[dict[str, Any]]) -> float:
    """Median completion tokens per second of the process's CPU time (steadier than wall time under load)."""
    return statistics.median(r["tokens"] / r["cpu_s"] for r in runs)


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def _overhead(runs: list[dict[str, Any]]) -> str:
    """Share of the decode loop thread's CPU time spent outside llama_decode (median)."""
    share = statistics.median(
        (r["loop_cpu_s"] - r["decode_cpu_s"]) / max(r["loop_cpu_s"], 1e-9) for r in runs
    )
    return f"{share:.1%}"


def _spread(runs: list[dict[str, Any]]) -> str:
    values = sorted(r["tokens"] / r["seconds"] for r in runs)
    return f"{values[0]:.1f}-{values[-1]:.1f}"


def _parsed(text: str) -> Any:
    try:
        return json.loads(text, strict=False)
    except ValueError:
        return None


def forced_section(args: argparse.Namespace) -> bool:
    met = True
    print(
        f"\n[forced] fast-forward of grammar-forced tokens: {args.batch_n} requests, parallel={args.parallel}, "
        f"{args.threads} threads, medians of {args.repeat} fresh-process runs per side (spread min-max)"
    )
    for shape in ("quick", "nested"):
        shaped = argparse.Namespace(**{**vars(args), "shape": shape})
        model = SHAPES[shape][0]
        runs = _sides(shaped, ["ff-free", "ff-on"])
        off = _sides(shaped, ["ff-off"], repeat=1)["ff-off"]
        free, on = runs["ff-free"], runs["ff-on"]
        ratio = _tps(on) / _tps(free)
        cpu_ratio = _cps(on) / _cps(free)
        counters_on, counters_off = on[0]["counters"], off[0]["counters"]
        share = counters_on["forced_tokens"] / max(1, counters_on["generated_tokens"])
        print(
            f"  {model.__name__}: free {_tps(free):.1f} tok/s ({_spread(free)}), schema-bound with fast-forward "
            f"{_tps(on):.1f} tok/s ({_spread(on)}), without {off[0]['tokens'] / off[0]['seconds']:.1f} tok/s (1 run)"
        )
        print(
            f"    forced: {counters_on['forced_tokens']} of {counters_on['generated_tokens']} answer tokens "
            f"({share:.0%}); decodes {counters_on['decodes']} with fast-forward, {counters_off['decodes']} without "
            f"({counters_off['decodes'] - counters_on['decodes']} saved); passes over the weights "
            f"{counters_on['passes']} / {counters_off['passes']}"
        )
        print(
            f"    CPU time: free {_cps(free):.1f} tok per CPU-s, schema-bound {_cps(on):.1f}, without fast-forward "
            f"{off[0]['tokens'] / off[0]['cpu_s']:.1f} (1 run); decode loop outside llama_decode: {_overhead(on)} "
            f"of its CPU; {_load()}"
        )
        print(
            f"    GOAL {'MET' if ratio >= FORCED_GOAL else 'MISSED'}: schema-bound / free = {ratio:.2f} wall, "
            f"{cpu_ratio:.2f} CPU time (goal >= {FORCED_GOAL})"
        )
        same = 0
        for i, (a, b) in enumerate(zip(on[0]["outputs"], off[0]["outputs"], strict=True)):
            if (_parsed(a) == _parsed(b) and _parsed(a) is not None) or a == b:
                same += 1
            else:
                print(f"    differs #{i}: on {a!r}\n               off {b!r}")
        n = len(on[0]["outputs"])
        print(
            f"    {'ANSWERS MATCH' if same >= SAME_GOAL * n else 'ANSWERS DIFFER'}: {same}/{n} parsed outputs equal "
            f"with fast-forward on and off (goal >= {SAME_GOAL * n:.0f}); cut at max_tokens: on {on[0]['length']}, off {off[0]['length']}"
        )
        met = met and ratio >= FORCED_GOAL and same >= SAME_GOAL * n

    runs = _sides(args, ["ff-quickstart-off", "ff-quickstart-on"])
    off_s = statistics.median(r["seconds"] for r in runs["ff-quickstart-off"])
    on_s = statistics.median(r["seconds"] for r in runs["ff-quickstart-on"])
    c_on, c_off = runs["ff-quickstart-on"][0]["counters"], runs["ff-quickstart-off"][0]["counters"]
    equal = runs["ff-quickstart-on"][0]["outputs"] == runs["ff-quickstart-off"][0]["outputs"]
    print(
        f"  quickstart chain: {off_s:.2f} s without fast-forward, {on_s:.2f} s with (medians; spreads "
        f"{min(r['seconds'] for r in runs['ff-quickstart-off']):.2f}-{max(r['seconds'] for r in runs['ff-quickstart-off']):.2f} / "
        f"{min(r['seconds'] for r in runs['ff-quickstart-on']):.2f}-{max(r['seconds'] for r in runs['ff-quickstart-on']):.2f}); "
        f"forced {c_on['forced_tokens']} of {c_on['generated_tokens']} tokens, decodes {c_on['decodes']} vs {c_off['decodes']}; "
        f"rows {'identical' if equal else 'DIFFER'}"
    )
    off_cpu = statistics.median(r["cpu_s"] for r in runs["ff-quickstart-off"])
    on_cpu = statistics.median(r["cpu_s"] for r in runs["ff-quickstart-on"])
    nocache = spawn("ff-quickstart-nocache", args, quiet=True)
    for label, run in (
        ("on", runs["ff-quickstart-on"][0]),
        ("off", runs["ff-quickstart-off"][0]),
        ("on, no prompt cache", nocache),
    ):
        print(
            f"    prompt evaluation, fast-forward {label}: {run['prompt_cpu_s']:.2f} of {run['decode_cpu_s']:.2f} decode "
            f"CPU-s ({run['prompt_cpu_s'] / max(run['decode_cpu_s'], 1e-9):.0%}, shared out by tokens fed); prompt tokens "
            f"{run['prompt_fed']} of {run['fed']} fed; prompt cache hits {run['counters']['prompt_cache_hits']}, "
            f"copies from another sequence {run['counters']['prefix_copies']}; CPU {run['cpu_s']:.2f} s"
        )
    print(
        f"    GOAL {'MET' if off_s / on_s >= QUICKSTART_GOAL else 'MISSED'}: off / on = {off_s / on_s:.2f} wall, "
        f"{off_cpu / on_cpu:.2f} CPU time ({off_cpu:.2f} / {on_cpu:.2f} CPU-s) (goal >= {QUICKSTART_GOAL}); {_load()}"
    )
    met = met and off_s / on_s >= QUICKSTART_GOAL
    met = _ceiling(args) and met
    _stream_line(args)
    return met


def _stream_line(args: argparse.Namespace) -> None:
    """Issue 24: the engine fed by a stream of records, not all at once."""
    shaped = argparse.Namespace(**{**vars(args), "shape": "quick"})
    run = spawn("ff-stream", shaped, quiet=True)
    print(
        f"  stream of records (QuickAnswer, {args.batch_n} requests, one every {args.arrival_ms:.0f} ms, "
        f"parallel={args.parallel}): {run['mean_sequences']:.2f} sequences per decode on average against "
        f"{run['mean_pending']:.2f} requests pending (running or waiting) = "
        f"{run['mean_sequences'] / run['mean_pending']:.2f}; {run['counters']['decodes']} decodes; {_load()}"
    )


def _ceiling(args: argparse.Namespace) -> bool:
    shaped = argparse.Namespace(
        **{**vars(args), "shape": "quick", "batch_n": min(args.batch_n, args.parallel)}
    )
    # the raw sides replay the llama.cpp calls of a first run of each engine side; then every side
    # runs in each round, interleaved, so that the engine and the raw API see the same machine
    first = {side: spawn(side, shaped, quiet=True) for side in ("ff-alone", "ff-batched")}
    work = {
        side.removeprefix("ff-"): {
            "ops": json.loads(Path(run["ops_file"]).read_text()),
            "tokens": run["tokens"],
        }
        for side, run in first.items()
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(work, f)
    sides = ["ff-alone", "ff-batched", "ff-raw-alone", "ff-raw-batched"]
    engine = raw = _sides(argparse.Namespace(**{**vars(shaped), "counts": f.name}), sides)
    Path(f.name).unlink()
    for run in [*first.values(), *engine["ff-alone"], *engine["ff-batched"]]:
        Path(run["ops_file"]).unlink(missing_ok=True)
    decodes = {side: sum(op[0] == "d" for op in w["ops"]) for side, w in work.items()}
    mismatched = sum(
        a != b
        for run in [first["ff-batched"], *engine["ff-batched"]]
        for a, b in zip(run["outputs"], engine["ff-alone"][0]["outputs"], strict=True)
    )
    ratio = _tps(engine["ff-batched"]) / _tps(engine["ff-alone"])
    ceiling = _tps(raw["ff-raw-batched"]) / _tps(raw["ff-raw-alone"])
    cpu_ratio = _cps(engine["ff-batched"]) / _cps(engine["ff-alone"])
    cpu_ceiling = _cps(raw["ff-raw-batched"]) / _cps(raw["ff-raw-alone"])
    print(
        f"  batching (QuickAnswer, fast-forward on): one-at-a-time {_tps(engine['ff-alone']):.1f} tok/s "
        f"({_spread(engine['ff-alone'])}), batched {_tps(engine['ff-batched']):.1f} ({_spread(engine['ff-batched'])}): {ratio:.2f}"
    )
    print(
        f"    raw llama.cpp API replaying the engine's own calls ({decodes['alone']} / {decodes['batched']} decodes, the same "
        f"tokens, positions, logits rows, cache copies and removals): one-at-a-time {_tps(raw['ff-raw-alone']):.1f} "
        f"({_spread(raw['ff-raw-alone'])}), batched {_tps(raw['ff-raw-batched']):.1f} ({_spread(raw['ff-raw-batched'])}): {ceiling:.2f}"
    )
    print(
        f"    CPU time: engine {cpu_ratio:.2f} (alone {_cps(engine['ff-alone']):.1f}, batched "
        f"{_cps(engine['ff-batched']):.1f} tok per CPU-s), raw {cpu_ceiling:.2f} (alone {_cps(raw['ff-raw-alone']):.1f}, "
        f"batched {_cps(raw['ff-raw-batched']):.1f}): {cpu_ratio / cpu_ceiling:.2f} of the ceiling; decode loop outside "
        f"llama_decode: {_overhead(engine['ff-alone'])} alone, {_overhead(engine['ff-batched'])} batched; {_load()}"
    )
    print(
        f"    GOAL {'MET' if ratio / ceiling >= CEILING_GOAL else 'MISSED'}: {ratio:.2f} / {ceiling:.2f} = "
        f"{ratio / ceiling:.2f} of the ceiling (goal >= {CEILING_GOAL}); batched answers identical to "
        f"one-at-a-time: {'yes' if not mismatched else f'NO ({mismatched} differ)'}"
    )
    return ratio / ceiling >= CEILING_GOAL and not mismatched
