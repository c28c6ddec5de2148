"""What an experiment keeps: per-case results, totals, and ``experiment.json`` in the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..engines.secrets import scrub_strings
from ..io.layout import EXPERIMENT
from ..runtime.result import RunResult
from .assess import Assessment

__all__ = ["CaseResult", "ExperimentResult", "git_info", "totals", "write_experiment_json"]

Status = Literal["pass", "fail", "error", "unscored"]


@dataclass
class CaseResult:
    """One case's outcome. ``status``: ``pass`` / ``fail`` (the assessors' verdict), ``error`` (the
    chain or an assessor failed on it: ``error`` says where and why), ``unscored`` (no assessor
    gave a pass/fail verdict)."""

    id: str
    status: Status
    score: float | None = None
    reason: str = ""
    output: Any = None
    expected: Any = None
    input: Any = None
    """The case's input (its first turn's, for a multi-turn case): the report shows it beside the output."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The case's metadata from the suite (the report groups cases by one of its keys)."""
    record_id: str | None = None
    """The ``_id`` of the case's record in the run folder (its first turn's)."""
    assessments: dict[str, Assessment] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    """``{"node", "error_type", "message"}`` of the failure (``node`` is ``assess:<name>`` for an assessor)."""
    turns: list[Any] | None = None
    """Every turn's output, for a multi-turn case."""
    duration_s: float | None = None
    """Seconds from the case's first node start to its last node finish (chain runs, turns included)."""
    tokens: dict[str, int] | None = None
    """``prompt`` / ``completion`` sent, ``saved_prompt`` / ``saved_completion`` reused (judges included)."""
    cost: dict[str, float | None] | None = None
    """``usd`` spent and ``saved_usd`` (None where an engine has no known price)."""
    by_step: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The same figures per step (the judge's step too)."""
    timeline: list[dict[str, Any]] = field(default_factory=list)
    """``{"node", "run", "start_s", "end_s", "chunk"}`` per node span, seconds from the experiment's
    start; ``chunk``: how many records shared the span (1: the case's record alone)."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["assessments"] = {name: asdict(a) for name, a in self.assessments.items()}
        if self.turns is None:
            out.pop("turns")
        return out


@dataclass
class ExperimentResult:
    """A finished experiment: its run folder, per-case results and totals (``experiment.json``)."""

    name: str
    path: Path
    run: RunResult
    cases: list[CaseResult]
    totals: dict[str, Any]
    config: dict[str, Any] | None
    data: dict[str, Any] = field(repr=False, default_factory=dict)
    """What ``experiment.json`` holds."""

    @property
    def pass_rate(self) -> float | None:
        """Passed / (passed + failed + errors); None when no case got a verdict."""
        rate: float | None = self.totals["pass_rate"]
        return rate

    def case(self, case_id: str) -> CaseResult:
        return next(c for c in self.cases if c.id == case_id)


def totals(cases: list[CaseResult], meta: dict[str, Any]) -> dict[str, Any]:
    """Counts by status, pass rate, and the run's tokens, cost and cache figures (``metadata.json``;
    the experiment then replaces them with the sums over all of its runs, see ``timing.sum_figures``)."""
    counts = {s: sum(1 for c in cases if c.status == s) for s in ("pass", "fail", "error", "unscored")}
    judged = counts["pass"] + counts["fail"] + counts["error"]
    return {
        "cases": len(cases),
        **counts,
        "pass_rate": round(counts["pass"] / judged, 4) if judged else None,
        "duration_s": meta.get("duration_s"),
        "tokens": {k: meta.get("tokens", {}).get(k) for k in ("prompt", "completion")},
        "cost": meta.get("cost"),
        "cache": meta.get("cache"),
    }


def git_info(folder: Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git work tree around ``folder`` (default: the current one);
    None outside a git repository or without git."""
    cwd = folder or Path.cwd()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain")
    return {"commit": commit.strip(), "dirty": bool(status.strip()) if status is not None else None}


def write_experiment_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``experiment.json`` into the run folder atomically (credentials scrubbed)."""
    target = path / EXPERIMENT
    tmp = target.with_name(target.name + ".tmp")
    text = json.dumps(scrub_strings(data), indent=2, ensure_ascii=False, default=str) + "\n"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def command_line() -> list[str]:
    return list(sys.argv)
