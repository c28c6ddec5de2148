"""``servers.json``: the servers ``chainette warmup`` started, and which of them still run.

Read by :func:`.registry.get_engine_config` (a name with a running server becomes an ``openai``
engine pointing at it) and written by :mod:`.servers` (``warmup`` / ``kill``). It knows nothing
of engine definitions, so both can import it without importing each other.

The file lives in the state folder: ``./.chainette``, or ``$CHAINETTE_STATE_DIR``. Credentials
are masked before it is written (``--api-key ***`` in the command line, secret ``client``
options). A record counts as running only while its PID is alive with the recorded command line
(a reused PID is never taken for ours). POSIX only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from .._errors import EngineConfigError
from .secrets import MASK, scrub, scrub_argv

__all__ = [
    "KIND_DIALECT",
    "STATE_ENV",
    "ServerRecord",
    "client_engine_options",
    "is_running",
    "list_servers",
    "process_cmdline",
    "read_state",
    "running_server",
    "state_file",
    "write_state",
]

STATE_ENV = "CHAINETTE_STATE_DIR"
KIND_DIALECT = {"llama_cpp": "json_object", "vllm": "auto"}
"""Server kind → the structured-output dialect the ``openai`` engine speaks to it."""


class ServerRecord(BaseModel):
    """One started server, as kept in ``servers.json``."""

    name: str
    kind: str
    pid: int
    port: int
    base_url: str
    model: str
    """The model name the server answers to (the engine's name)."""
    cmdline: list[str]
    started_at: str
    log: str
    client: dict[str, Any] = Field(default_factory=dict)


def state_file() -> Path:
    folder = os.environ.get(STATE_ENV) or Path.cwd() / ".chainette"
    return Path(folder) / "servers.json"


def read_state() -> dict[str, ServerRecord]:
    path = state_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: ServerRecord.model_validate(rec) for name, rec in data.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, ValidationError) as exc:
        raise EngineConfigError(
            f"{path}: unreadable server state ({exc}). Delete the file if no server runs."
        ) from exc


def write_state(records: dict[str, ServerRecord]) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    kept = {k: _public(r).model_dump() for k, r in records.items()}
    tmp.write_text(json.dumps(kept, indent=2), encoding="utf-8")
    tmp.replace(path)


def _public(record: ServerRecord) -> ServerRecord:
    """The record as written to ``servers.json``: credentials masked (:mod:`.secrets`)."""
    return record.model_copy(
        update={
            "cmdline": scrub_argv(record.cmdline),
            "client": scrub(record.client),
            "base_url": scrub(record.base_url),
        }
    )


def process_cmdline(pid: int) -> list[str] | None:
    """The live command line of ``pid``, or None when it is gone (zombies count as gone)."""
    proc = Path(f"/proc/{pid}")
    if proc.exists() or sys.platform.startswith("linux"):
        try:
            if "\nState:\tZ" in (proc / "status").read_text():
                return None
            raw = (proc / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        return raw.decode(errors="replace").split("\0")[:-1] or None
    out = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=False)
    return out.stdout.strip().split() or None


def is_running(record: ServerRecord) -> bool:
    """Is the recorded process alive and still the one we started (same command line, compared as
    recorded: with credentials masked)?"""
    live = process_cmdline(record.pid)
    return live is not None and (live == record.cmdline or scrub_argv(live) == record.cmdline)


def list_servers(*, alive_only: bool = True) -> list[ServerRecord]:
    """Servers recorded by ``warmup`` (by default only those still running)."""
    records = read_state().values()
    return [r for r in records if not alive_only or is_running(r)]


def running_server(name: str) -> ServerRecord | None:
    """The record of the server ``name`` if ``warmup`` started it and it still runs."""
    if not state_file().exists():
        return None
    record = read_state().get(name)
    return record if record is not None and is_running(record) else None


def client_engine_options(record: ServerRecord, registered: Mapping[str, Any] | None) -> dict[str, Any]:
    """Options of the ``openai`` engine that talks to the server of ``record``.

    The client options are taken as recorded, unless a credential was masked in ``servers.json``;
    then from ``registered`` (the options of the engine's definition in this process, if any),
    whose ``serve.client`` holds the real value.
    """
    if MASK not in json.dumps(record.client):
        client = dict(record.client)
    else:
        serve = (registered or {}).get("serve")
        if not (isinstance(serve, dict) and isinstance(serve.get("client"), dict)):
            raise EngineConfigError(
                f"The server {record.name!r} started by chainette warmup needs client options holding a "
                "credential, which servers.json does not keep. Register the engine definition in this "
                "process too (--engines engines.yml, or register_engine(...)), or pass the key by name "
                "(client: {api_key_env: VAR})."
            )
        client = dict(serve["client"])
    return {"dialect": KIND_DIALECT.get(record.kind, "auto"), **client, "base_url": record.base_url}
