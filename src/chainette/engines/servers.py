"""Local inference servers started by ``chainette warmup`` and stopped by ``chainette kill``.

An engine definition may carry a ``serve:`` section saying how to run it as an
OpenAI-compatible server on this machine::

    engines:
      - name: small
        backend: llama_cpp          # runs in-process when no server is warmed up
        n_ctx: 2048
        serve: {kind: llama_cpp}    # python -m llama_cpp.server ... on 127.0.0.1
      - name: qwen
        backend: vllm
        model: Qwen/Qwen2.5-7B-Instruct
        serve: {kind: vllm, args: ["--max-model-len", "8192"]}   # vllm serve ... on 127.0.0.1

``warmup`` starts the server detached (own session, output to a log file), waits until
``/v1/models`` answers, and records ``{name, pid, port, base_url, cmdline, ...}`` in
``servers.json`` (:mod:`.server_state`: the state folder, masked credentials, which records
still run). While that process is alive, :func:`.registry.get_engine_config` makes the engine of
that name an ``openai`` engine pointing at it (:func:`running_engine_config`), so ``chainette
run`` and ``Chain.run`` use the server. ``kill`` signals only recorded PIDs whose live command
line still equals the recorded one (a reused PID is never touched). POSIX only.

This module imports :mod:`.registry`; the registry never imports it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._errors import EngineConfigError, EngineError
from .registry import EngineConfig, _describe_validation, running_engine_config
from .server_state import (
    KIND_DIALECT,
    STATE_ENV,
    ServerRecord,
    is_running,
    list_servers,
    process_cmdline,
    read_state,
    state_file,
    write_state,
)

__all__ = [
    "STATE_ENV",
    "ServeSpec",
    "ServerRecord",
    "kill_server",
    "list_servers",
    "running_engine_config",
    "server_command",
    "state_file",
    "warmup",
]

_LLAMA_FLAGS = ("n_ctx", "n_threads", "n_gpu_layers", "chat_format")
_VLLM_FLAGS = ("dtype", "gpu_memory_utilization", "max_model_len", "tensor_parallel_size")


class ServeSpec(BaseModel):
    """How to run an engine as a local server (the ``serve:`` section of an engine definition)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["llama_cpp", "vllm"] | None = None
    """``llama_cpp`` (``python -m llama_cpp.server``) or ``vllm`` (``vllm serve``); default: from the backend."""
    model: str | None = None
    """What the server loads (GGUF path / model id); default: the engine's ``model``."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """Port on 127.0.0.1; default: a free one."""
    args: list[str] = Field(default_factory=list)
    """Extra command-line arguments for the server."""
    startup_timeout: float = Field(default=600.0, gt=0)
    """Seconds to wait for the server to answer before giving up."""
    client: dict[str, Any] = Field(default_factory=dict)
    """Options of the ``openai`` engine that talks to it (``max_concurrency``, ``timeout``, ``dialect``...)."""


def serve_spec(config: EngineConfig, where: str = "") -> ServeSpec:
    """The validated ``serve:`` section of ``config`` (errors name the field)."""
    where = where or f"engine {config.name!r}"
    raw = config.options.get("serve")
    if not isinstance(raw, dict):
        raise EngineConfigError(
            f"{where} has no 'serve:' section, so chainette cannot start it as a server. Add e.g. "
            "serve: {kind: llama_cpp} (or kind: vllm) to its definition."
        )
    try:
        spec = ServeSpec.model_validate(raw)
    except ValidationError as exc:
        raise EngineConfigError(_describe_validation(exc, f"{where}: serve")) from exc
    if spec.kind is None:
        if config.backend not in KIND_DIALECT:
            raise EngineConfigError(f"{where}: field 'serve.kind' is required (llama_cpp or vllm).")
        spec.kind = config.backend  # type: ignore[assignment]
    return spec


def server_command(config: EngineConfig, spec: ServeSpec, port: int) -> list[str]:
    """The command line that serves ``config`` on ``127.0.0.1:port``."""
    options = config.backend_options if config.backend == spec.kind else {}
    model = spec.model or config.model
    if spec.kind == "llama_cpp":
        if model in (None, "", "smollm2", "default"):
            from .llama_cpp import default_model_path

            model = str(default_model_path())
        threads = options.get("n_threads") or max(1, os.cpu_count() or 1)
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", config.name]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--interrupt_requests", "False"]
        cmd += ["--n_threads", str(threads)]
        for flag in _LLAMA_FLAGS:
            if flag != "n_threads" and options.get(flag) is not None:
                cmd += [f"--{flag}", str(options[flag])]
    else:
        if not model:
            raise EngineConfigError(
                f"engine {config.name!r}: vllm needs a model (set model: or serve.model)."
            )
        cmd = ["vllm", "serve", str(model), "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--served-model-name", config.name]
        for flag in _VLLM_FLAGS:
            if options.get(flag) is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(options[flag])]
    return cmd + list(spec.args)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def warmup(config: EngineConfig, *, port: int | None = None, timeout: float | None = None) -> ServerRecord:
    """Start ``config`` as a local server, wait until it answers, and record it.

    Returns the record; an already running server of that name is returned as is.
    """
    spec = serve_spec(config)
    records = read_state()
    current = records.get(config.name)
    if current is not None and is_running(current):
        return current
    port = port or spec.port or _free_port()
    cmd = server_command(config, spec, port)
    logs = state_file().parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{config.name}-{port}.log"
    pid = _spawn(cmd, log)
    record = ServerRecord(
        name=config.name,
        kind=str(spec.kind),
        pid=pid,
        port=port,
        base_url=f"http://127.0.0.1:{port}/v1",
        model=config.name,
        cmdline=_exec_cmdline(pid) or cmd,
        started_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        log=str(log),
        client=dict(spec.client),
    )
    deadline = time.monotonic() + (timeout or spec.startup_timeout)
    try:
        while not _ready(record.base_url):
            if not is_running(record):
                raise EngineError(
                    f"Server {config.name!r} exited during startup: {_tail(log)}\nFull log: {log}"
                )
            if time.monotonic() > deadline:
                raise EngineError(
                    f"Server {config.name!r} did not answer on {record.base_url} within "
                    f"{timeout or spec.startup_timeout:g} s; stopped it. Its log: {log}"
                )
            time.sleep(0.25)
    except BaseException:  # failed or interrupted: the process we just spawned must not outlive us
        _stop(record, grace=5.0, spawned=True)
        raise
    records = read_state()
    records[config.name] = record
    write_state(records)
    return record


def _spawn(cmd: list[str], log: Path) -> int:
    """Start ``cmd`` in a new session (so it outlives us and can be signalled as a group)."""
    if not hasattr(os, "posix_spawnp"):
        raise EngineError("chainette warmup needs a POSIX system (Linux or macOS).")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, fd, 1),
            (os.POSIX_SPAWN_DUP2, fd, 2),
        ]
        try:
            return os.posix_spawnp(cmd[0], cmd, dict(os.environ), file_actions=actions, setsid=True)
        except FileNotFoundError as exc:
            raise EngineError(f"Cannot start {cmd[0]!r}: not found on PATH. Is it installed?") from exc
    finally:
        os.close(fd)


def _exec_cmdline(pid: int, wait: float = 10.0) -> list[str] | None:
    """The command line of the freshly spawned ``pid`` once it has exec'd (the one kill will check)."""
    ours = process_cmdline(os.getpid())
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        cmdline = process_cmdline(pid)
        if cmdline is not None and cmdline != ours:
            return cmdline
        time.sleep(0.01)
    return None


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def kill_server(name: str, *, grace: float = 10.0) -> Literal["stopped", "stale", "unknown"]:
    """Stop the server ``name`` that ``warmup`` started and forget it.

    Returns ``"stopped"``, ``"stale"`` (recorded, but its process is gone or is no longer ours:
    nothing was signalled) or ``"unknown"`` (no such record).
    """
    records = read_state()
    record = records.get(name)
    if record is None:
        return "unknown"
    outcome: Literal["stopped", "stale"] = "stopped" if is_running(record) else "stale"
    if outcome == "stopped":
        _stop(record, grace=grace)
    records = read_state()
    records.pop(name, None)
    write_state(records)
    return outcome


def _stop(record: ServerRecord, *, grace: float = 10.0, spawned: bool = False) -> None:
    """SIGTERM the recorded process group, SIGKILL after ``grace`` seconds; only while it is still ours.

    ``spawned``: we started this PID moments ago in this process, so it is ours even if its
    command line could not be read yet.
    """

    def ours() -> bool:
        return process_cmdline(record.pid) is not None if spawned else is_running(record)

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not ours():
            break
        _signal(record.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(record.pid)
            if not ours():
                break
            time.sleep(0.1)
    _reap(record.pid)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        if os.getpgid(pid) == pid:  # the session leader we spawned: its workers go too
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect the exit status when the server is our own child (warmup called in-process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
