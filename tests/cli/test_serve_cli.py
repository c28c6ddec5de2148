"""``chainette serve`` as a user runs it: a real process on a free port, a real HTTP client, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHAIN = """
from pydantic import BaseModel
from chainette import Chain, Step, register_engine

register_engine("canned", backend="fake", responder=lambda request: {"answer": "42"})


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


chain = Chain(
    name="served-cli",
    steps=[Step(id="qa", input_model=Question, output_model=Answer, engine_name="canned", user_prompt="{{ text }}")],
)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(60)
def test_chainette_serve_streams_a_run_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    (tmp_path / "served.py").write_text(CHAIN)
    port = free_port()
    env = {**os.environ, "SERVE_TOKEN": "t0k3n"}
    cmd = [
        sys.executable,
        "-m",
        "chainette",
        "serve",
        "served.py:chain",
        "--port",
        str(port),
        "--token-env",
        "SERVE_TOKEN",
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.1)
        assert httpx.post(url + "/runs", json={"text": "q"}).status_code == 401
        headers = {"Authorization": "Bearer t0k3n"}
        with httpx.stream(
            "POST", url + "/runs?trace_id=cli-1", json={"text": "q"}, headers=headers
        ) as response:
            events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1]["kind"] == "output" and events[-1]["output"] == {"answer": "42"}
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Serving served-cli" in err
    assert "trace cli-1 output" in err  # each trace's ending is logged
    assert "t0k3n" not in out + err
