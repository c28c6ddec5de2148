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
    env = this_env(SERVE_TOKEN="t0k3n")
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


def this_env(**more: str) -> dict[str, str]:
    """The environment, with the chainette this test imported first on the path (the process runs elsewhere)."""
    import chainette

    src = str(Path(chainette.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), **more}


def start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """``chainette serve served.py:chain ARGS`` on a free port, once /health answers."""
    (tmp_path / "served.py").write_text(CHAIN)
    port = free_port()
    cmd = [sys.executable, "-m", "chainette", "serve", "served.py:chain", "--port", str(port), *args]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=this_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.1)


@pytest.mark.timeout(60)
def test_a_websocket_token_in_the_query_is_not_logged(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    proc, url = start(tmp_path, "--token-env", "SERVE_TOKEN", env={"SERVE_TOKEN": "t0k3n-in-query"})
    try:
        with connect(url.replace("http", "ws") + "/ws?token=t0k3n-in-query") as ws:
            ws.send(json.dumps({"input": {"text": "q"}, "trace_id": "ws-1"}))
            while json.loads(ws.recv(timeout=20))["kind"] != "output":
                pass
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert '"WebSocket /ws?token=[redacted]" [accepted]' in err  # uvicorn's line, without the token
    assert "trace ws-1 output" in err
    assert "t0k3n-in-query" not in out + err


@pytest.mark.timeout(60)
def test_record_to_a_folder_it_cannot_write_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "served.py").write_text(CHAIN)
    (tmp_path / "a-file").write_text("not a folder")
    target = tmp_path / "a-file" / "run"
    cmd = [
        sys.executable,
        "-m",
        "chainette",
        "serve",
        "served.py:chain",
        "--port",
        "0",
        "--record-to",
        str(target),
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=this_env(), capture_output=True, text=True, timeout=50)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(target) in errors[0] and "choose another folder" in errors[0]
