"""``Step(samples=n)`` streams its samples: memory does not grow with n, and Ctrl-C stops it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import Answer, Question, qa_step, read_jsonl

from chainette import Chain, apply, register_engine

CHAIN = """
import resource, sys
from pydantic import BaseModel
from chainette import Chain, Step, register_engine

class Q(BaseModel):
    text: str

class A(BaseModel):
    answer: str

register_engine("fake", backend="fake")

def build(samples):
    return Chain("samples", [Step(id="qa", input_model=Q, output_model=A, engine_name="fake",
                                  user_prompt="{{ text }}", samples=samples)])

chain = build(10_000_000)

if __name__ == "__main__":
    result = build(int(sys.argv[2])).run([Q(text="a"), Q(text="b")], sys.argv[1], cache="off")
    print(result.metadata["counts"]["records_out"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_kb(tmp_path: Path, samples: int) -> int:
    script = tmp_path / "samples_chain.py"
    script.write_text(CHAIN)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / f"run-{samples}"), str(samples)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    assert int(out[0]) == 2 * samples  # every sample came out
    return int(out[1])


def test_memory_is_flat_in_the_sample_count(tmp_path: Path) -> None:
    small = peak_rss_kb(tmp_path, 2_000)
    large = peak_rss_kb(tmp_path, 40_000)  # 20x the samples
    assert large <= 1.2 * small, f"peak RSS {small} kB at 2,000 samples, {large} kB at 40,000"


def test_ctrl_c_stops_a_run_with_millions_of_samples(tmp_path: Path) -> None:
    script = tmp_path / "samples_chain.py"
    script.write_text(CHAIN)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "a"}\n{"text": "b"}\n')
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chainette", "run", f"{script}:chain", "-i", str(inputs), "-o", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in (run / "qa").glob("*.jsonl")):  # samples are being written
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no sample was written within 60 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=30)
    waited = time.monotonic() - sent
    assert waited < 3, f"the run took {waited:.1f} s to stop after Ctrl-C"
    assert proc.returncode == 130, err
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "interrupted"


def test_samples_flow_downstream_in_passes_and_all_arrive(run_dir: Path) -> None:
    """The step after a sampled step sees the samples in several chunks, none lost or repeated."""
    register_engine("fake", backend="fake")
    sizes: list[int] = []

    def same(answer: Answer) -> Answer:
        return answer

    def on_event(kind: str, data: dict[str, object]) -> None:
        if kind == "node_progress" and data["node"] == "qa":
            sizes.append(int(str(data["done"])))

    chain = Chain(
        "c",
        [
            qa_step("fake", samples=700),
            apply(same, id="after"),
        ],
        batch_size=3,
    )
    result = chain.run([Question(text=t) for t in "abc"], run_dir, on_event=on_event)
    rows = read_jsonl(run_dir / "flattened")
    seen = [r["_id"] for r in rows]
    assert len(seen) == 2100 == len(set(seen)) == result.metadata["counts"]["records_out"]
    assert len(set(sizes)) >= 2100 // 256  # progress moved pass by pass, not once at the end
