"""The report's config section: what each run was made with, and what differs between the runs.

A run's settings, flattened to dotted keys: the git commit and dirty flag (``experiment.json``'s
``git``), the experiment's config (``config.<key>``) and the overrides it was given, each engine's
backend and model (``engine.<name>.model``), the chainette version and the run options
(``run.<option>``, from ``metadata.json``). Keys whose values differ between the runs come first
(``#config-diff``); the rest are folded away under "the same in every run".
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from .report_html import get
from .report_view import RunView

__all__ = ["config_section", "git_text", "settings"]

_VOLATILE = frozenset({"run.record_trace"})
"""Run options every experiment sets alike: left out."""


def _flat(value: Any, prefix: str, into: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _flat(inner, f"{prefix}.{key}", into)
    else:
        into[prefix] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def git_text(view: RunView) -> str | None:
    """``abc1234def0 (dirty)``: the commit the run was made from, None when not recorded."""
    git = get(view.experiment, "git")
    if not isinstance(git, dict) or not git.get("commit"):
        return None
    dirty = git.get("dirty")
    flag = " (dirty: uncommitted changes)" if dirty else "" if dirty is False else " (dirty: unknown)"
    return f"{str(git['commit'])[:12]}{flag}"


def settings(view: RunView) -> dict[str, str]:
    """The run's settings as dotted key → text (see the module's docstring)."""
    out: dict[str, str] = {}
    commit = git_text(view)
    if commit is not None:
        out["git commit"] = commit
    exp = view.experiment or {}
    if isinstance(exp.get("config"), dict):
        _flat(exp["config"], "config", out)
    overrides = get(exp, "rerun", "overrides")
    if overrides:
        out["overrides"] = " ".join(str(o) for o in overrides)
    for name, engine in (view.meta.get("engines") or {}).items():
        if isinstance(engine, dict):
            for key in ("backend", "model"):
                if engine.get(key) is not None:
                    out[f"engine.{name}.{key}"] = str(engine[key])
    version = get(view.meta, "versions", "chainette")
    if version is not None:
        out["chainette version"] = str(version)
    for key, value in (view.meta.get("config") or {}).items():
        if f"run.{key}" not in _VOLATILE:
            _flat(value, f"run.{key}", out)
    return out


def config_section(views: list[RunView], labels: list[str]) -> str:
    """One column per run; the keys that differ first (all keys, for a single run)."""
    found = [settings(v) for v in views]
    keys = list(dict.fromkeys(k for s in found for k in s))
    if not keys:
        return '<p class="muted">No config or git commit was recorded.</p>'

    def row(key: str) -> str:
        cells = "".join(
            f'<td data-run="{k}">'
            + (
                f"<code>{escape(s[key])}</code>"
                if key in s
                else '<span class="muted" title="not set in this run">—</span>'
            )
            + "</td>"
            for k, s in enumerate(found)
        )
        return f'<tr data-key="{escape(key)}"><th>{escape(key)}</th>{cells}</tr>'

    head = "<tr><th>setting</th>" + "".join(f'<th class="run">{escape(lb)}</th>' for lb in labels) + "</tr>"
    if len(views) == 1:
        body = "".join(row(k) for k in keys)
        return f'<table id="config-table" class="facts"><thead>{head}</thead><tbody>{body}</tbody></table>'
    changed = [k for k in keys if len({s.get(k) for s in found}) > 1]
    same = [k for k in keys if k not in changed]
    if changed:
        what = ", ".join(escape(k) for k in changed[:6]) + (" …" if len(changed) > 6 else "")
        html = (
            f'<p id="config-changed-keys"><b>{len(changed)} setting(s) differ:</b> {what}</p>'
            f'<table id="config-diff"><thead>{head}</thead><tbody>'
            + "".join(row(k) for k in changed)
            + "</tbody></table>"
        )
    else:
        html = '<p id="config-changed-keys" class="muted">Every run has the same settings.</p>'
    if same:
        html += (
            f"<details><summary>{len(same)} setting(s) the same in every run</summary>"
            f'<table id="config-same"><thead>{head}</thead><tbody>'
            + "".join(row(k) for k in same)
            + "</tbody></table></details>"
        )
    return html
