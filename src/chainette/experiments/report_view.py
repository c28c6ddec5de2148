"""What ``chainette report`` reads of one run folder up front (:class:`RunView`), below both the
report and its comparison section so neither imports the other."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunView", "labels"]


@dataclass
class RunView:
    """What the report reads of one run folder up front (the small files)."""

    path: Path
    meta: dict[str, Any]
    graph: dict[str, Any]
    experiment: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    """What was left out of the report and why (a file pointing outside the run folder, not a
    regular file): shown on the page and by the CLI."""

    @property
    def fmt(self) -> str:
        return str(self.meta.get("config", {}).get("fmt", "jsonl"))

    @property
    def counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = self.meta.get("counts", {})
        return counts

    def inside(self, path: Path) -> bool:
        """Whether ``path`` is a regular file or folder inside the run folder once links are
        resolved; else a note says why it is left out. A step folder, part file or failures file
        that is a link to elsewhere is not read: the report shows the run folder, nothing more."""
        try:
            resolved = path.resolve()
            root = self.path.resolve()
            mode = resolved.stat().st_mode
        except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of links
            self.notes.append(f"{path} left out: it cannot be read ({exc}).")
            return False
        if not resolved.is_relative_to(root):
            self.notes.append(f"{path} left out: it points outside the run folder (to {resolved}).")
            return False
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            self.notes.append(f"{path} left out: it is not a regular file (a FIFO, device or socket).")
            return False
        return True


def labels(views: list[RunView]) -> list[str]:
    """A column label per run: its folder's name (``runs/qa-old`` → ``qa-old``); where two share
    a name, enough of their paths to tell them apart (``a/run``, ``b/run``)."""
    parts = [v.path.resolve().parts for v in views]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1
