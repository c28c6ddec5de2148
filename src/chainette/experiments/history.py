"""Run history: experiment run folders found, read back and compared (``chainette runs``).

An experiment run is a folder with ``experiment.json`` (see :mod:`.record`). ``list_runs`` finds
them under a root (newest first; the nested ``experiment/`` runs of turns and judges are part of
their run, never runs of their own); with ``plain=True`` also the folders of plain runs
(``chainette run``: ``metadata.json`` and no ``experiment.json``), whose :attr:`RunRecord.kind`
is ``"run"``. ``load_run`` reads one experiment run, ``compare_runs`` says what changed
between two. ``experiment.json``'s ``rerun`` entry (the ``path.py:name`` target, the overrides,
the engines file) is what ``chainette runs rerun`` needs to build the experiment again.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._errors import ExperimentError
from ..io.layout import EXPERIMENT, METADATA
from .experiment import Experiment
from .stored import StoredFileError, check_experiment, read_json_file
from .suite import Suite, load_suite

__all__ = [
    "CaseChange",
    "RunComparison",
    "RunRecord",
    "compare_runs",
    "flatten_config",
    "list_runs",
    "load_run",
    "restrict",
    "scan_runs",
]

FAILED = ("fail", "error")


@dataclass
class RunRecord:
    """One experiment run folder, as ``experiment.json`` (``data``) and ``metadata.json`` keep it."""

    path: Path
    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    kind: str = "experiment"
    """``"experiment"`` (``experiment.json``), or ``"run"``: a plain run folder (``chainette run``),
    whose ``data`` is empty and whose counts, cost and time come from ``metadata.json``."""

    @property
    def id(self) -> str:
        """The folder's name."""
        return self.path.name

    @property
    def experiment(self) -> str:
        """The experiment's name (for a plain run: its chain's)."""
        return str(self.data.get("experiment") or self.metadata.get("chain") or "?")

    @property
    def started_at(self) -> str:
        """ISO time the run started (the file's time when ``experiment.json`` lacks it)."""
        started = (self.data.get("run") or {}).get("started_at") or self.metadata.get("started_at")
        if started:
            return str(started)
        file = self.path / (EXPERIMENT if self.kind == "experiment" else METADATA)
        return datetime.fromtimestamp(file.stat().st_mtime, UTC).isoformat()

    @property
    def totals(self) -> dict[str, Any]:
        return dict(self.data.get("totals") or {})

    @property
    def pass_rate(self) -> float | None:
        rate = self.totals.get("pass_rate")
        return None if rate is None else float(rate)

    @property
    def cost_usd(self) -> float | None:
        cost = (self.totals if self.kind == "experiment" else self.metadata).get("cost") or {}
        return _number(cost.get("usd"))

    @property
    def duration_s(self) -> float | None:
        return _number((self.totals if self.kind == "experiment" else self.metadata).get("duration_s"))

    @property
    def size(self) -> int | None:
        """Cases of an experiment run; records read by a plain run."""
        if self.kind == "experiment":
            return int(self.totals.get("cases", len(self.cases)))
        return _number_int((self.metadata.get("counts") or {}).get("records_in"))

    @property
    def config(self) -> dict[str, Any] | None:
        config = self.data.get("config")
        return dict(config) if isinstance(config, dict) else None

    @property
    def cases(self) -> list[dict[str, Any]]:
        return list(self.data.get("cases") or [])

    def summary(self) -> dict[str, Any]:
        """The run in a line of plain JSON values (``runs list --json``, both sides of ``runs compare --json``)."""
        if self.kind != "experiment":
            return {
                "id": self.id,
                "kind": self.kind,
                "path": str(self.path),
                "started_at": self.started_at,
                "chain": self.metadata.get("chain"),
                "status": self.metadata.get("status"),
                "records": self.size,
                "cost_usd": self.cost_usd,
                "duration_s": self.duration_s,
            }
        return {
            "id": self.id,
            "kind": self.kind,
            "path": str(self.path),
            "started_at": self.started_at,
            "experiment": self.experiment,
            "suite": (self.data.get("suite") or {}).get("path"),
            "pass_rate": self.pass_rate,
            "cases": self.totals.get("cases", len(self.cases)),
            "cost_usd": self.cost_usd,
            "duration_s": self.duration_s,
        }

    def case(self, case_id: str) -> dict[str, Any] | None:
        return next((c for c in self.cases if c.get("id") == case_id), None)

    def failed_ids(self) -> list[str]:
        """Ids of the cases whose status was ``fail`` or ``error``, in suite order."""
        return [str(c["id"]) for c in self.cases if c.get("status") in FAILED]


@dataclass
class CaseChange:
    """A case whose status or output differs between run A and run B."""

    id: str
    status_a: str | None
    status_b: str | None
    output_a: Any = None
    output_b: Any = None
    duration_a: float | None = None
    """The case's seconds in run A (first node start to last node finish), when recorded."""
    duration_b: float | None = None
    cost_a: float | None = None
    """The case's dollars in run A, when recorded (and priced)."""
    cost_b: float | None = None

    @property
    def duration_delta(self) -> float | None:
        return _delta(self.duration_a, self.duration_b)

    @property
    def cost_delta(self) -> float | None:
        return _delta(self.cost_a, self.cost_b)


@dataclass
class RunComparison:
    """What changed from run ``a`` to run ``b`` (deltas are B minus A; None when either lacks it)."""

    a: RunRecord
    b: RunRecord
    pass_rate_delta: float | None
    changed: list[CaseChange]
    only_a: list[str]
    only_b: list[str]
    cost_delta: float | None
    duration_delta: float | None
    config_diff: dict[str, tuple[Any, Any]]
    """Dotted key → (value in A, value in B); a key missing on one side has ``None`` there."""

    def as_dict(self) -> dict[str, Any]:
        """The comparison as plain JSON values (what ``chainette runs compare --json`` prints)."""
        return {
            "a": self.a.summary(),
            "b": self.b.summary(),
            "pass_rate_delta": self.pass_rate_delta,
            "cost_delta": self.cost_delta,
            "duration_delta": self.duration_delta,
            "changed": [
                {
                    "id": c.id,
                    "status_a": c.status_a,
                    "status_b": c.status_b,
                    "output_a": c.output_a,
                    "output_b": c.output_b,
                    "duration_delta": c.duration_delta,
                    "cost_delta": c.cost_delta,
                }
                for c in self.changed
            ],
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "config_diff": {key: {"a": va, "b": vb} for key, (va, vb) in self.config_diff.items()},
        }


def list_runs(root: str | Path = "runs", *, plain: bool = False) -> list[RunRecord]:
    """Every experiment run folder under ``root``, newest first (folders that cannot be read are
    left out: :func:`scan_runs` names them); ``plain``: plain run folders too (``kind="run"``).

    Example:
        >>> [run.id for run in list_runs("runs")]  # doctest: +SKIP
        ['calc-2', 'calc-1']
    """
    return scan_runs(root, plain=plain)[0]


def scan_runs(
    root: str | Path = "runs", *, plain: bool = False
) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
    """Every experiment run folder under ``root``, newest first, and the folders whose
    ``experiment.json`` cannot be read, each with the reason: one damaged folder does not hide
    the others. ``plain``: the folders of plain runs too (``metadata.json``, no
    ``experiment.json``; ``kind="run"``)."""
    base = Path(root)
    if not base.is_dir():
        return [], []
    found: list[RunRecord] = []
    damaged: list[tuple[Path, str]] = []
    for folder, dirs, files in os.walk(base):
        if EXPERIMENT in files:
            dirs[:] = []  # a run folder holds no other runs (its experiment/ ones belong to it)
            try:
                found.append(_read(Path(folder)))
            except ExperimentError as exc:
                damaged.append((Path(folder), str(exc)))
        elif METADATA in files:
            dirs[:] = []  # nor does a plain run's folder
            if plain:
                meta = _read_metadata(Path(folder))
                if meta is None:
                    damaged.append((Path(folder), f"{METADATA} cannot be read"))
                else:
                    found.append(RunRecord(Path(folder), {}, meta, kind="run"))
        dirs.sort()
    found.sort(key=lambda r: r.started_at, reverse=True)
    return found, damaged


def load_run(run: str | Path, root: str | Path = "runs") -> RunRecord:
    """The run at folder ``run``, or named ``run`` under ``root``.

    Raises:
        ExperimentError: neither holds ``experiment.json`` (the message lists the runs under root).
    """
    candidates = [Path(run), Path(root) / run]
    for folder in candidates:
        if _exists(folder / EXPERIMENT):
            return _read(folder)
    for folder in candidates:
        if _exists(folder / METADATA):
            raise ExperimentError(
                f"{folder} is a plain run (made by `chainette run`), not an experiment run: it has no "
                f"{EXPERIMENT}, which this command reads. See it with `chainette report {folder}`; "
                "`chainette runs show / compare / rerun` take the runs of `chainette experiment run`."
            )
    names = [r.id for r in list_runs(root)][:10]
    listing = f" Runs under {root}: {', '.join(names)}." if names else f" {root} holds no experiment runs."
    raise ExperimentError(
        f"No experiment run {str(run)!r}: neither {candidates[0]} nor {candidates[1]} has {EXPERIMENT}."
        f"{listing} Give a run folder, or its name with --root."
    )


def compare_runs(a: RunRecord, b: RunRecord) -> RunComparison:
    """Pass-rate, cost and duration deltas, changed cases and config differences from ``a`` to ``b``."""
    cases_a = {str(c["id"]): c for c in a.cases}
    cases_b = {str(c["id"]): c for c in b.cases}
    changed = []
    for case_id, ca in cases_a.items():
        cb = cases_b.get(case_id)
        if cb is None:
            continue
        if ca.get("status") != cb.get("status") or _canon(ca.get("output")) != _canon(cb.get("output")):
            changed.append(
                CaseChange(
                    case_id,
                    ca.get("status"),
                    cb.get("status"),
                    ca.get("output"),
                    cb.get("output"),
                    _number(ca.get("duration_s")),
                    _number(cb.get("duration_s")),
                    _number((ca.get("cost") or {}).get("usd")),
                    _number((cb.get("cost") or {}).get("usd")),
                )
            )
    config_a = flatten_config(a.config or {})
    config_b = flatten_config(b.config or {})
    diff = {
        key: (config_a.get(key), config_b.get(key))
        for key in sorted(set(config_a) | set(config_b))
        if _canon(config_a.get(key)) != _canon(config_b.get(key))
    }
    return RunComparison(
        a,
        b,
        _delta(a.pass_rate, b.pass_rate),
        changed,
        [k for k in cases_a if k not in cases_b],
        [k for k in cases_b if k not in cases_a],
        _delta(a.cost_usd, b.cost_usd),
        _delta(a.duration_s, b.duration_s),
        diff,
    )


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists are values, as overrides write them).

    Example:
        >>> flatten_config({"engine": "x", "sampling": {"temperature": 0.2}})
        {'engine': 'x', 'sampling.temperature': 0.2}
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def restrict(experiment: Experiment, case_ids: list[str]) -> Experiment:
    """A copy of ``experiment`` whose suite holds only ``case_ids`` (in the suite's order).

    Raises:
        ExperimentError: an id is no longer in the suite.
    """
    suite = load_suite(experiment.suite)
    wanted = set(case_ids)
    missing = wanted - {c.id for c in suite}
    if missing:
        raise ExperimentError(
            f"Experiment {experiment.name!r}: the suite no longer has case(s) {', '.join(sorted(missing))}."
        )
    subset = Suite([c for c in suite if c.id in wanted], path=suite.path, sha256=suite.sha256)
    return Experiment(
        experiment.name, experiment.chain_factory, subset, experiment.assessors, experiment.config
    )


def _exists(path: Path) -> bool:
    """Whether ``path`` is there as anything but a folder (a FIFO or device is then refused by
    :func:`_read`, with the reason, instead of being taken for a missing file)."""
    try:
        return not stat.S_ISDIR(path.stat().st_mode)
    except OSError:
        return False


def _read(folder: Path) -> RunRecord:
    file = folder / EXPERIMENT
    try:
        data = read_json_file(file)
        check_experiment(data)
    except (OSError, StoredFileError) as exc:
        raise ExperimentError(
            f"{file} cannot be read: {exc}. It was changed by hand or damaged: restore it, or move the "
            "folder out of the runs' root."
        ) from exc
    return RunRecord(folder, data, _read_metadata(folder) or {})


def _read_metadata(folder: Path) -> dict[str, Any] | None:
    try:
        meta = read_json_file(folder / METADATA)
    except (OSError, StoredFileError):
        return None
    return meta if isinstance(meta, dict) else None


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _number_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 6)
