"""The ``forced`` section of ``engine.py``: fast-forward of grammar-forced tokens (see its docstring)."""

from __future__ import annotations

import argparse
import importlib.util
import json
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
    if child == "ff-free":
        return run_engine_free_vs_schema(step, texts, model, args, schema=False)
    if child in ("ff-on", "ff-off"):
        return run_engine_free_vs_schema(step, texts, model, args, schema=True, fast_forward=child == "ff-on")
    if child in ("ff-alone", "ff-batched"):
        parallel = 1 if child == "ff-alone" else args.parallel
        return run_engine_free_vs_schema(step, texts, model, args, schema=True, parallel=parallel)
    if child in ("ff-raw-alone", "ff-raw-batched"):
        completion = json.loads(Path(args.counts).read_text())
        return run_raw(step, texts, model, args, completion, batched=child == "ff-raw-batched")
    return run_quickstart(args, fast_forward=child == "ff-quickstart-on")


def run_quickstart(args: argparse.Namespace, fast_forward: bool) -> dict[str, Any]:
    """The quickstart chain on its inputs, its engine with ``fast_forward`` on or off."""
    from chainette import register_engine
    from chainette.engines.llama_cpp import LlamaCppEngine

    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    assert spec is not None and spec.loader is not None
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    register_engine(
        "local", backend="llama_cpp", n_ctx=2048, n_threads=args.threads, fast_forward=fast_forward
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

    with tempfile.TemporaryDirectory(prefix="chainette-quickstart-") as workdir:
        started = time.perf_counter()
        result = quickstart.chain.run(
            inputs, output_dir=Path(workdir) / "run", on_event=on_event, cache="off"
        )
        seconds = time.perf_counter() - started - marks.get("load_s", 0.0)
        outputs = [json.dumps(row, sort_keys=True, default=str) for row in result.flattened()]
    return {
        "seconds": seconds,
        "load_s": marks.get("load_s", 0.0),
        "tokens": counters.get("generated_tokens", 0),
        "requests": len(inputs),
        "counters": counters,
        "outputs": outputs,
    }


def run_raw(
    step: Step, texts: list[str], model: Path, args: argparse.Namespace, completion: list[int], batched: bool
) -> dict[str, Any]:
    """The same prompts and completion token counts on the raw llama.cpp API: no grammar, no Python
    per token beyond the batch, every completion token a decode of its own (the kernels' ceiling)."""
    import llama_cpp

    from chainette.engines.llama_batch import PROMPT_CHUNK, BatchDecoder
    from chainette.runtime.records import Record
    from chainette.runtime.step_runner import render_messages

    parallel = len(texts) if batched else 1
    load_started = time.perf_counter()
    decoder = BatchDecoder(str(model), parallel=parallel, n_ctx=args.n_ctx, n_threads=args.threads)
    load_s = time.perf_counter() - load_started
    prompts = []
    for i, text in enumerate(texts):
        value = Question(text=text)
        prompts.append(
            decoder.prompter(render_messages(step, Record(str(i), i, value, {"input": value}))).tokens
        )
    ctx, batch, memory = decoder.ctx, decoder.batch, decoder.memory
    cells = [0] * parallel

    def decode(items: list[tuple[int, list[int], bool]]) -> None:
        batch.n_tokens = 0
        for seq, tokens, logits in items:
            for k, token in enumerate(tokens):
                i = batch.n_tokens
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, cells[seq], 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = logits and k == len(tokens) - 1
                batch.n_tokens = i + 1
                cells[seq] += 1
        assert llama_cpp.llama_decode(ctx, batch) == 0

    def feed(seq: int, tokens: list[int]) -> None:
        for start in range(0, len(tokens), PROMPT_CHUNK):
            decode([(seq, tokens[start : start + PROMPT_CHUNK], True)])

    started = time.perf_counter()
    shared = len(_common_prefix_all(prompts))
    if not batched:
        cached: list[int] = []
        for prompt, n in zip(prompts, completion, strict=True):
            keep = min(len(_common_prefix_all([cached, prompt])), len(prompt) - 1)
            llama_cpp.llama_memory_seq_rm(memory, 0, keep, -1)
            cells[0] = keep
            feed(0, prompt[keep:])
            for _ in range(n - 1):
                decode([(0, prompt[-1:], True)])
            cached = list(prompt)
    else:
        feed(0, prompts[0][:shared])  # the shared system prompt once, then copied
        for seq in range(1, parallel):
            llama_cpp.llama_memory_seq_cp(memory, 0, seq, -1, -1)
            cells[seq] = shared
        rest = [prompt[shared:] for prompt in prompts]
        chunk = min(PROMPT_CHUNK, decoder.n_batch // parallel)
        while any(rest):
            decode([(seq, r[:chunk], len(r) <= chunk) for seq, r in enumerate(rest) if r])
            rest = [r[chunk:] for r in rest]
        left = [n - 1 for n in completion]
        while any(n > 0 for n in left):
            decode([(seq, prompts[seq][-1:], True) for seq, n in enumerate(left) if n > 0])
            left = [max(0, n - 1) for n in left]
    seconds = time.perf_counter() - started
    decoder.close()
    return {"seconds": seconds, "load_s": load_s, "tokens": sum(completion), "requests": len(texts)}


def _common_prefix_all(sequences: list[list[int]]) -> list[int]:
    first = sequences[0]
    n = min(len(s) for s in sequences)
    i = 0
    while i < n and all(s[i] == first[i] for s in sequences):
        i += 1
    return first[:i]


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
            f"    GOAL {'MET' if ratio >= FORCED_GOAL else 'MISSED'}: schema-bound / free = {ratio:.2f} (goal >= {FORCED_GOAL})"
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
    print(
        f"    GOAL {'MET' if off_s / on_s >= QUICKSTART_GOAL else 'MISSED'}: off / on = {off_s / on_s:.2f} (goal >= {QUICKSTART_GOAL})"
    )
    met = met and off_s / on_s >= QUICKSTART_GOAL
    return _ceiling(args) and met


def _ceiling(args: argparse.Namespace) -> bool:
    shaped = argparse.Namespace(
        **{**vars(args), "shape": "quick", "batch_n": min(args.batch_n, args.parallel)}
    )
    # the completion token counts for the raw side come from a first batched run; then every side
    # runs in each round, interleaved, so that the engine and the raw API see the same machine
    first = spawn("ff-batched", shaped, quiet=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(first["completion_tokens"], f)
    sides = ["ff-alone", "ff-batched", "ff-raw-alone", "ff-raw-batched"]
    engine = raw = _sides(argparse.Namespace(**{**vars(shaped), "counts": f.name}), sides)
    Path(f.name).unlink()
    mismatched = sum(
        a != b
        for run in [first, *engine["ff-batched"]]
        for a, b in zip(run["outputs"], engine["ff-alone"][0]["outputs"], strict=True)
    )
    ratio = _tps(engine["ff-batched"]) / _tps(engine["ff-alone"])
    ceiling = _tps(raw["ff-raw-batched"]) / _tps(raw["ff-raw-alone"])
    print(
        f"  batching (QuickAnswer, fast-forward on): one-at-a-time {_tps(engine['ff-alone']):.1f} tok/s "
        f"({_spread(engine['ff-alone'])}), batched {_tps(engine['ff-batched']):.1f} ({_spread(engine['ff-batched'])}): {ratio:.2f}"
    )
    print(
        f"    raw llama.cpp API, same prompt and completion token counts: one-at-a-time {_tps(raw['ff-raw-alone']):.1f} "
        f"({_spread(raw['ff-raw-alone'])}), batched {_tps(raw['ff-raw-batched']):.1f} ({_spread(raw['ff-raw-batched'])}): {ceiling:.2f}"
    )
    print(
        f"    GOAL {'MET' if ratio / ceiling >= CEILING_GOAL else 'MISSED'}: {ratio:.2f} / {ceiling:.2f} = "
        f"{ratio / ceiling:.2f} of the ceiling (goal >= {CEILING_GOAL}); batched answers identical to "
        f"one-at-a-time: {'yes' if not mismatched else f'NO ({mismatched} differ)'}"
    )
    return ratio / ceiling >= CEILING_GOAL and not mismatched
