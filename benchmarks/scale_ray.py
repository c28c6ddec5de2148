"""The Ray executor against the local one: one chain, one stub server with a fixed latency per request.

    .venv/bin/python benchmarks/scale_ray.py [--records 1000] [--latency 0.1] [--replicas 2] [--rounds 2]
    .venv/bin/python benchmarks/scale_ray.py --latency 2 --slow-rate 0.1   # 10 % of requests 2 s late

Section (b) of ``benchmarks/scale.py`` (which calls :func:`main_section`), runnable on its own.
A one-step chain (``Question → Answer`` on an ``openai`` engine) runs over the same records on
Chainette's stub OpenAI-compatible server, started in its own process on 127.0.0.1 and answering
every request after ``--latency`` seconds (with ``--slow-rate r``: a share ``r`` of them, the
rest at once: a tail), with the ledger off so both sides send every request:

- **local**: ``executor="local"``, ``workers = replicas × workers`` chunks in flight;
- **ray**: ``executor="ray"`` with ``--replicas`` actors and ``--workers`` chunks each, the same
  number of chunks (so of requests) in flight, on a local Ray instance started once before the
  rounds (its start-up is printed apart; each run still starts and ends its actors).

Rounds alternate between the two so machine noise hits both; medians are printed, with the
ratio ray / local of requests/s: on one machine it is the cost of going through Ray (actor
start, pickling chunks and results, one more process hop), not a speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from chainette import Chain, Step, register_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_client import Answer, Question, free_port  # the same one-step shape as the HTTP benchmark

DEFAULTS: dict[str, Any] = {
    "ray_records": 1000,
    "ray_latency": 0.1,
    "ray_slow_rate": 1.0,
    "ray_replicas": 2,
    "ray_workers": 4,
    "ray_batch_size": 16,
    "ray_rounds": 2,
}
"""The options of this section, by their names in an ``argparse`` namespace (``scale.py`` may
pass a namespace without them: these are used then)."""


def start_stub(latency: float, rate: float = 1.0) -> tuple[subprocess.Popen[bytes], str]:
    """The stub server in its own process, a share ``rate`` of its answers ``latency`` seconds late."""
    port = free_port()
    code = (
        "import asyncio\n"
        "from chainette.engines.stub_server import Faults, StubServer\n"
        f"server = StubServer(port={port}, faults=Faults(rate_slow={rate!r}, slow_seconds={latency!r}))\n"
        "asyncio.run(server.serve_forever())\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=1):
                return proc, base_url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the stub server did not start")


def _chain(batch_size: int) -> Chain:
    step = Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name="stub",
        system_prompt="Answer the question briefly.",
        user_prompt="Question: {{ text }}",
    )
    return Chain("scale ray", [step], batch_size=batch_size)


def _one(chain: Chain, records: list[Question], folder: Path, **options: Any) -> float:
    """Requests/s of one run (all of its wall time: a Ray run's actors start and end in it)."""
    started = time.perf_counter()
    result = chain.run(records, folder, overwrite=True, cache="off", **options)
    elapsed = time.perf_counter() - started
    assert result.counts["records_out"] == len(records), result.counts
    sent: int = result.metadata["cache"]["sent"]
    assert sent == len(records)
    return sent / elapsed


def main_section(args: argparse.Namespace) -> dict[str, float]:
    """Run section (b) and print it; returns the medians (``local_rps``, ``ray_rps``, ``ratio``,
    ``ray_init_s``). ``args`` may carry the ``ray_*`` options of :data:`DEFAULTS`."""
    import ray

    from chainette.runtime.ray_executor import local_ray_options

    opt = {name: getattr(args, name, default) for name, default in DEFAULTS.items()}
    n, replicas, workers = opt["ray_records"], opt["ray_replicas"], opt["ray_workers"]
    chain = _chain(opt["ray_batch_size"])
    records = [Question(text=f"question {i}") for i in range(n)]
    in_flight = replicas * workers * opt["ray_batch_size"]
    rate = opt["ray_slow_rate"]
    proc, base_url = start_stub(opt["ray_latency"], rate)
    late = f"stub latency {opt['ray_latency']} s" + (f" for {rate:.0%} of requests" if rate < 1 else "")
    print(
        f"(b) Ray executor against local: {n} records, one step, {late}, "
        f"{replicas} replicas × {workers} chunks × {opt['ray_batch_size']} records (≤ {in_flight} requests in flight)"
    )
    local_rps: list[float] = []
    ray_rps: list[float] = []
    try:
        register_engine("stub", backend="openai", model="m", base_url=base_url, max_concurrency=in_flight)
        started = time.perf_counter()
        ray.init(**local_ray_options())
        ray_init = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(opt["ray_rounds"]):
                local_rps.append(_one(chain, records, Path(tmp) / "local", workers=replicas * workers))
                ray_rps.append(
                    _one(
                        chain, records, Path(tmp) / "ray", executor="ray", replicas=replicas, workers=workers
                    )
                )
                print(f"    round {k + 1}: local {local_rps[-1]:8.1f} req/s   ray {ray_rps[-1]:8.1f} req/s")
    finally:
        ray.shutdown()
        proc.kill()
        proc.wait()
    local, on_ray = statistics.median(local_rps), statistics.median(ray_rps)
    ideal = in_flight / (opt["ray_latency"] * rate)  # in flight over the mean latency
    print(f"    ray.init (local instance, once): {ray_init:.1f} s")
    print(
        f"    local: {local:8.1f} req/s   ray: {on_ray:8.1f} req/s   (latency-bound ideal {ideal:.0f} req/s)"
    )
    print(f"    ratio ray / local: {on_ray / local:.2f}x")
    return {"local_rps": local, "ray_rps": on_ray, "ratio": on_ray / local, "ray_init_s": ray_init}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This section's options (``scale.py`` may add them to its own parser)."""
    parser.add_argument("--records", dest="ray_records", type=int, default=DEFAULTS["ray_records"])
    parser.add_argument("--latency", dest="ray_latency", type=float, default=DEFAULTS["ray_latency"])
    parser.add_argument(
        "--slow-rate",
        dest="ray_slow_rate",
        type=float,
        default=DEFAULTS["ray_slow_rate"],
        help="Share of requests that are --latency late (the rest answered at once)",
    )
    parser.add_argument("--replicas", dest="ray_replicas", type=int, default=DEFAULTS["ray_replicas"])
    parser.add_argument("--workers", dest="ray_workers", type=int, default=DEFAULTS["ray_workers"])
    parser.add_argument("--batch-size", dest="ray_batch_size", type=int, default=DEFAULTS["ray_batch_size"])
    parser.add_argument("--rounds", dest="ray_rounds", type=int, default=DEFAULTS["ray_rounds"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    main_section(parser.parse_args(argv))


if __name__ == "__main__":
    main()
