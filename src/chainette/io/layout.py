"""The names a run folder uses, and how a folder is recognised as one Chainette wrote.

One place for both, so the writer, the id check and the ownership check never disagree::

    <run>/
    ├── .chainette-run.json   marker: run id, chain, the folders this run created
    ├── .chainette-run.lock   held (flock) by the process writing the run
    ├── .chainette-reserve    disk space held for the final metadata.json (while the run writes)
    ├── graph.json
    ├── metadata.json
    ├── failures.jsonl
    ├── flattened/            000.jsonl, 001.jsonl, ...
    ├── <node_id>/            000.jsonl, ...
    ├── experiment.json       an experiment's results (written after the run, see ``experiments/``)
    └── experiment/           an experiment's further runs (later turns, judges): run folders each

A folder is Chainette's only when it holds the marker *and* every entry in it is one the
marker accounts for. Anything else (a file the user added, a folder of another tool that happens
to hold a ``metadata.json``) means the folder is not ours to delete.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EXPERIMENT",
    "EXPERIMENT_RUNS",
    "FAILURES",
    "FLATTENED",
    "GRAPH",
    "LOCK",
    "MARKER",
    "METADATA",
    "RESERVE",
    "RESERVED_NAMES",
    "Ownership",
    "clear_run_folder",
    "inspect_folder",
    "is_reserved",
    "write_marker",
]

MARKER = ".chainette-run.json"
LOCK = ".chainette-run.lock"
RESERVE = ".chainette-reserve"
GRAPH = "graph.json"
METADATA = "metadata.json"
FAILURES = "failures.jsonl"
FLATTENED = "flattened"
EXPERIMENT = "experiment.json"
EXPERIMENT_RUNS = "experiment"
"""An experiment's nested run folders (``experiment/turn-2/``, ``experiment/judge-<name>/``):
each is a run folder of its own, owned and cleared by the same rules."""

_FILES = frozenset({MARKER, LOCK, RESERVE, GRAPH, METADATA, FAILURES, EXPERIMENT})
_TEMP = frozenset(f"{name}.tmp" for name in (MARKER, GRAPH, METADATA, EXPERIMENT))
RESERVED_NAMES = frozenset({"input", FLATTENED, "failures", "metadata", "graph", EXPERIMENT_RUNS})
"""Node ids that would collide with a run folder's own entries (or with ``{{ input.x }}``).
Compared case-insensitively: ``Flattened/`` and ``flattened/`` are one folder on macOS and Windows."""

_PART = re.compile(r"^\d{3,}\.(jsonl|csv|parquet)$")


def is_reserved(name: str) -> bool:
    """Whether ``name`` may not be a node id (a folder of the run, or ``input``)."""
    return name.lower() in RESERVED_NAMES


@dataclass
class Ownership:
    """What :func:`inspect_folder` found."""

    owned: bool
    """The folder holds our marker and nothing the marker does not account for."""
    reason: str = ""
    """Why it is not ours (when ``owned`` is false)."""
    marker: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    """The run's ``metadata.json`` (or ``graph.json`` when that is missing), if readable."""


def write_marker(
    folder: Path, run_id: str, chain: str, folders: list[str], files: list[str] | None = None
) -> None:
    """Write (atomically) the marker that lets a later run recognise this folder as its own
    (``files``: the files its ``Sink`` nodes write in it)."""
    data: dict[str, Any] = {
        "tool": "chainette",
        "run_id": run_id,
        "chain": chain,
        "folders": sorted(set(folders)),
    }
    if files:
        data["files"] = sorted(set(files))
    _write_json(folder / MARKER, data)


def inspect_folder(folder: Path) -> Ownership:
    """Decide whether the existing, non-empty ``folder`` is a run folder Chainette wrote."""
    marker = _read_json(folder / MARKER)
    if marker is None or marker.get("tool") != "chainette" or not isinstance(marker.get("run_id"), str):
        return Ownership(False, f"it has no Chainette run marker ({MARKER})")
    previous = _read_json(folder / METADATA) or _read_json(folder / GRAPH) or {}
    if previous.get("run_id") not in (None, marker["run_id"]):
        return Ownership(
            False,
            f"its metadata.json names run {previous.get('run_id')!r} but its marker names {marker['run_id']!r}",
        )
    folders = {FLATTENED, *(f for f in marker.get("folders", []) if isinstance(f, str))}
    files = _sink_files(marker)
    foreign: list[str] = []
    for entry in _entries(folder):
        if entry.name in files and entry.is_file(follow_symlinks=False):
            continue
        if entry.name in _FILES or entry.name in _TEMP:
            if entry.is_dir(follow_symlinks=False):
                foreign.append(entry.name + "/")
        elif entry.name in folders and entry.is_dir(follow_symlinks=False):
            foreign.extend(
                f"{entry.name}/{inner.name}"
                for inner in _entries(entry.path)
                if not (_PART.match(inner.name) and inner.is_file(follow_symlinks=False))
            )
        elif entry.name == EXPERIMENT_RUNS and entry.is_dir(follow_symlinks=False):
            foreign.extend(f"{entry.name}/{name}" for name in _foreign_nested(Path(entry.path)))
        else:
            foreign.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return Ownership(False, f"it holds entries that no Chainette run wrote: {shown}", marker, previous)
    return Ownership(True, "", marker, previous)


def clear_run_folder(folder: Path, ownership: Ownership) -> None:
    """Remove what the run in ``folder`` wrote, and nothing else (the lock file stays: it is held)."""
    assert ownership.owned and ownership.marker is not None
    folders = {FLATTENED, *ownership.marker.get("folders", [])}
    files = _sink_files(ownership.marker)
    for entry in _entries(folder):
        if entry.name in files and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
        elif entry.name in folders and entry.is_dir(follow_symlinks=False):
            for inner in _entries(entry.path):
                if _PART.match(inner.name):
                    os.unlink(inner.path)
            os.rmdir(entry.path)  # fails, rather than deleting, if something appeared meanwhile
        elif entry.name == EXPERIMENT_RUNS and entry.is_dir(follow_symlinks=False):
            for inner in _entries(entry.path):
                nested = Path(inner.path)
                clear_run_folder(nested, inspect_folder(nested))
                (nested / LOCK).unlink(missing_ok=True)
                os.rmdir(nested)
            os.rmdir(entry.path)
        elif entry.name != LOCK and (entry.name in _FILES or entry.name in _TEMP):
            os.unlink(entry.path)


def _sink_files(marker: dict[str, Any]) -> set[str]:
    """The files a run's sinks wrote in its folder (plain names: never a path out of it)."""
    names = marker.get("files", [])
    return (
        {n for n in (names if isinstance(names, list) else []) if isinstance(n, str) and n == Path(n).name}
        - _FILES
        - {LOCK}
    )


def _foreign_nested(folder: Path) -> list[str]:
    """Entries of ``experiment/`` that are not run folders Chainette wrote (empty: all are)."""
    foreign: list[str] = []
    for inner in _entries(folder):
        if not inner.is_dir(follow_symlinks=False):
            foreign.append(inner.name)
        elif not inspect_folder(Path(inner.path)).owned:
            foreign.append(inner.name + "/")
    return foreign


def _entries(folder: str | Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _write_json(target: Path, data: Any) -> None:
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A whole-file artefact, or None when missing or unreadable (a crash can leave either)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
