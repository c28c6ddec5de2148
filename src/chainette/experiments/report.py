"""A run folder as one self-contained HTML page: ``chainette report RUN [--compare OTHER] -o report.html``.

Standard library only, and the page needs nothing but itself: inline CSS, the graph as inline SVG
(:mod:`.report_graph`), long text folded in ``<details>``; no script, no font, no network. Every
value from the run is escaped (outputs may hold HTML).

What it reads is capped, so a run of any size is cheap: the counts, tokens, cost and per-node
figures come from ``metadata.json``; of the rows it reads only the first ``samples`` of each step
folder, the first ``failures`` lines of ``failures.jsonl`` and at most ``SCAN`` flattened rows (to
find the samples' inputs by ``_id``). ``experiment.json``, when there, adds the pass rate and the
cases (the first ``CASES``). ``compare``: this run against another one (counts, cost, duration and
per-node deltas; with both experiments, the pass-rate change and the cases whose status or output
changed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from html import escape
from itertools import islice
from pathlib import Path
from typing import Any

from .._errors import RunFolderError
from ..io.layout import EXPERIMENT, FAILURES, FLATTENED, GRAPH, METADATA
from ..runtime.result import read_rows
from .report_cases import cases_section
from .report_chart import groups_section
from .report_compare import compare_section
from .report_config import config_section, git_text
from .report_graph import graph_svg
from .report_html import CASES, CSS, as_text, cut, get, money, n_cell, num, rate, table
from .report_script import SCRIPT
from .report_timeline import timeline_section
from .report_view import RunView, labels
from .stored import StoredFileError, check_experiment, read_json_file

__all__ = ["CASES", "SCAN", "RunView", "build_report", "load_run", "write_report"]

SCAN = 10_000
"""Flattened rows read at most to find the samples' inputs."""


def load_run(path: str | Path) -> RunView:
    """Read ``metadata.json``, ``graph.json`` and (when there) ``experiment.json`` of a run folder.

    Raises:
        RunFolderError: a file cannot be read (not JSON, not a regular file, too large, damaged
            ``experiment.json``, or a link out of the folder); the message names it.
    """
    folder = Path(path)
    if not (folder / METADATA).exists():
        raise RunFolderError(
            f"{folder} is not a run folder: it has no {METADATA}. Pass the folder a run wrote."
        )
    view = RunView(folder, {}, {}, None)

    def load(name: str, required: bool = False) -> dict[str, Any] | None:
        file = folder / name
        if not required and not file.exists():
            return None
        if not view.inside(file):
            raise RunFolderError(f"{view.notes.pop()} Restore the run folder's own {name}.")
        try:
            data = read_json_file(file)
            if name == EXPERIMENT:
                check_experiment(data)
        except (OSError, StoredFileError) as exc:
            raise RunFolderError(
                f"{file} cannot be read: {exc}. Restore it, or report on another run."
            ) from exc
        if not isinstance(data, dict):
            raise RunFolderError(
                f"{file} cannot be read: it holds a JSON {type(data).__name__}, not an object."
            )
        return data

    view.meta = load(METADATA, required=True) or {}
    view.graph = load(GRAPH) or {}
    view.experiment = load(EXPERIMENT)
    return view


def write_report(
    run: str | Path,
    out: str | Path,
    compare: str | Path | Sequence[str | Path] | None = None,
    *,
    samples: int = 5,
    failures: int = 200,
    notes: list[str] | None = None,
    group_by: str | None = None,
) -> Path:
    """Write the report of ``run`` (against ``compare``: one run folder or several) to ``out``;
    returns ``out``.

    ``notes``: when given, what was left out (and why) is appended to it. ``group_by``: a case
    metadata key to group an experiment's cases by (a table and a chart per group).

    Raises:
        RunFolderError: a run folder cannot be read, or ``out`` cannot be written (the message
            names the file and the reason: a read-only disk, no permission, a folder there).

    Example:
        >>> write_report("runs/qa", "report.html", compare="runs/qa-old")   # doctest: +SKIP
    """
    folders = [] if compare is None else [compare] if isinstance(compare, str | Path) else list(compare)
    others = [load_run(folder) for folder in folders]
    view = load_run(run)
    text = build_report(view, others, samples=samples, failures=failures, group_by=group_by)
    target = Path(out)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RunFolderError(
            f"Cannot write the report to {target}: {reason}. Pass -o with a writable file path."
        ) from exc
    if notes is not None:
        notes.extend(note for v in (view, *others) for note in v.notes)
    return target


# ---------------------------------------------------------------- reading, capped


def _rows(run: RunView, path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """The rows of a file or part folder inside the run folder, lazily (a Parquet part is read a
    batch at a time). Links out of the folder and non-regular files are left out, with a note."""
    if not path.exists() and not path.is_symlink():
        return
    if not run.inside(path):
        return
    files = sorted(p for p in path.iterdir() if p.suffix == f".{fmt}") if path.is_dir() else [path]
    for file in files:
        if not run.inside(file) or not file.is_file():
            continue
        if fmt != "parquet":
            yield from read_rows(file, fmt)
            continue
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(file).iter_batches(batch_size=256):
            yield from batch.to_pylist()


def _head(run: RunView, path: Path, fmt: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a file or part folder."""
    return list(islice(_rows(run, path, fmt), max(limit, 0)))


def _inputs_for(run: RunView, ids: set[str]) -> dict[str, dict[str, Any]]:
    """``_id`` → the record's input fields, from the first ``SCAN`` flattened rows (ids of a fan-out's
    rows, ``<id>.<k>``, find their record's input too)."""
    found: dict[str, dict[str, Any]] = {}
    if not ids:
        return found
    for row in islice(_rows(run, run.path / FLATTENED, run.fmt), SCAN):
        rid = str(row.get("_id", ""))
        inputs = {k[6:]: v for k, v in row.items() if k.startswith("input.")}
        parts = rid.split(".")
        for k in range(len(parts), 0, -1):
            found.setdefault(".".join(parts[:k]), inputs)
        if all(_lookup(found, i) is not None for i in ids):
            break
    return found


def _lookup(found: dict[str, dict[str, Any]], rid: str) -> dict[str, Any] | None:
    parts = rid.split(".")
    for k in range(len(parts), 0, -1):
        hit = found.get(".".join(parts[:k]))
        if hit is not None:
            return hit
    return None


# ---------------------------------------------------------------- sections


def _header(run: RunView) -> str:
    meta, counts = run.meta, run.counts
    cost, cache, tokens = meta.get("cost") or {}, meta.get("cache") or {}, meta.get("tokens") or {}
    cards = [
        ("records-in", "records in", counts.get("records_in")),
        ("records-out", "records out", counts.get("records_out")),
        ("failures", "failures", counts.get("failures")),
        ("filtered", "filtered", counts.get("filtered")),
        ("prompt-tokens", "prompt tokens", tokens.get("prompt")),
        ("completion-tokens", "completion tokens", tokens.get("completion")),
        ("cost", "cost", cost.get("usd")),
        ("saved-cost", "saved by the ledger", cost.get("saved_usd")),
        ("cache-sent", "requests sent", cache.get("sent")),
        ("cache-hits", "from the ledger", cache.get("hits")),
        ("cache-deduped", "shared", cache.get("deduped")),
    ]
    if run.experiment is not None:
        cards.insert(0, ("pass-rate", "pass rate", None))
    used = sum(int(tokens.get(k) or 0) for k in ("prompt", "completion"))
    saved_tokens = sum(int((cache.get("saved_tokens") or {}).get(k) or 0) for k in ("prompt", "completion"))

    def shown(key: str, value: Any) -> str:
        if key == "pass-rate":
            return rate(get(run.experiment, "totals", "pass_rate"))
        if key in ("cost", "saved-cost"):
            return money(value, used if key == "cost" else used + saved_tokens)
        return num(value)

    html = "".join(
        f'<div class="card"><span class="muted">{escape(label)}</span><b id="{key}">{shown(key, value)}</b></div>'
        for key, label, value in cards
    )
    saved = get(cache, "saved_tokens") or {}
    facts = [
        ("run id", meta.get("run_id")),
        ("status", meta.get("status")),
        ("started", meta.get("started_at")),
        ("finished", meta.get("finished_at")),
        ("duration", f"{num(meta.get('duration_s'))} s"),
        ("folder", str(run.path)),
        ("git commit", git_text(run) or "not recorded"),
        ("ledger", f"{cache.get('ledger', '—')} ({cache.get('mode', '—')})"),
        (
            "tokens saved by the ledger",
            f"{num(saved.get('prompt'))} prompt, {num(saved.get('completion'))} completion",
        ),
    ]
    warnings = meta.get("warnings") or []
    facts.extend(("warning", w) for w in warnings)
    dl = "".join(
        f"<tr><th>{escape(k)}</th><td id='meta-{escape(k.split()[0])}'>{escape(as_text(v))}</td></tr>"
        for k, v in facts
    )
    return f'<div class="cards">{html}</div><table class="facts">{dl}</table>'


def _graph(run: RunView) -> str:
    nodes = run.graph.get("nodes", [])
    rows = [
        [
            f"<code>{escape(str(n.get('id')))}</code>",
            escape(str(n.get("kind", ""))),
            escape(str(n.get("engine") or "—")),
            escape(str(n.get("parent") or n.get("branch") or "")),
        ]
        for n in nodes
    ]
    edges = [[escape(str(e.get("from"))), escape(str(e.get("to")))] for e in run.graph.get("edges", [])]
    return (
        f'<div class="graph">{graph_svg(run.graph)}</div>'
        f"<details><summary>nodes and edges as tables</summary>"
        + table(["node", "kind", "engine", "inside"], rows, ' id="graph-nodes"')
        + table(["from", "to"], edges, ' id="graph-edges"')
        + "</details>"
    )


def _node_stats(run: RunView) -> str:
    nodes: dict[str, dict[str, Any]] = run.meta.get("nodes") or {}
    if not nodes:
        return '<p class="muted">metadata.json has no per-node figures.</p>'
    keys = list(dict.fromkeys(k for stats in nodes.values() for k in stats))
    rows = [
        [f"<code>{escape(node)}</code>", *(n_cell(stats.get(k)) for k in keys)]
        for node, stats in nodes.items()
    ]
    return table(["node", *(k.replace("_", " ") for k in keys)], rows, ' id="node-stats"')


def _failures(run: RunView, cap: int) -> str:
    shown = _head(run, run.path / FAILURES, "jsonl", cap)
    total = run.counts.get("failures")
    if not shown:
        if isinstance(total, int) and total > 0:
            return f'<p class="muted" id="failures-more">Failures: {total:,}, none shown (see failures.jsonl).</p>'
        return '<p class="muted" id="no-failures">No record failed.</p>'
    rows = [
        [
            f"<code>{escape(str(f.get('node')))}</code>",
            f"<code>{escape(str(f.get('_id')))}</code>",
            escape(str(f.get("error_type", ""))),
            cut(f.get("message")),
            cut(f.get("raw")),
            cut(f.get("input")),
        ]
        for f in shown
    ]
    more = ""
    if isinstance(total, int) and total > len(shown):
        more = f'<p class="muted" id="failures-more">{total - len(shown):,} more failures are not shown (see failures.jsonl).</p>'
    return (
        table(["node", "record", "error", "message", "raw output", "input"], rows, ' id="failures-table"')
        + more
    )


def _samples(run: RunView, n: int) -> str:
    reserved = {FLATTENED}
    steps = [
        str(node["id"])
        for node in run.graph.get("nodes", [])
        if str(node["id"]) not in reserved and (run.path / str(node["id"])).is_dir()
    ]
    heads = {step: _head(run, run.path / step, run.fmt, n) for step in steps}
    inputs = _inputs_for(run, {str(r.get("_id")) for rows in heads.values() for r in rows})
    parts = []
    for step, rows in heads.items():
        body = []
        for row in rows:
            rid = str(row.get("_id"))
            output = {k: v for k, v in row.items() if k not in ("_id", "_index")}
            body.append([f"<code>{escape(rid)}</code>", cut(_lookup(inputs, rid)), cut(output)])
        rows_html = table(["record", "input", "output"], body, f' class="samples" data-step="{escape(step)}"')
        parts.append(
            f"<h3><code>{escape(step)}</code></h3>" + (rows_html if body else '<p class="muted">no rows</p>')
        )
    return "".join(parts) or '<p class="muted">No step wrote a folder.</p>'


def build_report(
    run: RunView,
    other: RunView | Sequence[RunView] | None = None,
    *,
    samples: int = 5,
    failures: int = 200,
    group_by: str | None = None,
) -> str:
    """The whole page for ``run`` (compared with ``other``: one run or several) as a string.
    ``group_by``: a case metadata key to group an experiment's cases by."""
    others = [] if other is None else [other] if isinstance(other, RunView) else list(other)
    views = [run, *others]
    names = labels(views)
    chain = str(run.meta.get("chain") or run.graph.get("name") or run.path.name)
    sections = [
        ("summary", "Summary", _header(run)),
        ("config", "Config" + (" and what differs" if others else ""), config_section(views, names)),
        ("graph", "Graph", _graph(run)),
        ("nodes", "Per node", _node_stats(run)),
    ]
    if others:
        title = "Compared with " + ("another run" if len(others) == 1 else f"{len(others)} other runs")
        sections.append(("compare", title, compare_section(views, names)))
    if run.experiment is not None:
        sections.append(("experiment", "Cases", cases_section(views, names, group_by)))
        if group_by:
            sections.append(("groups-section", f"By {group_by}", groups_section(views, names, group_by)))
        sections.append(("timeline-section", "Per-case timeline", timeline_section(run.experiment)))
    sections += [
        ("failures-section", f"Failures ({num(run.counts.get('failures'))})", _failures(run, failures)),
        ("samples", f"Samples (first {samples} rows of each step)", _samples(run, samples)),
    ]
    left_out = [note for view in views for note in view.notes]  # filled while reading above
    if left_out:
        items = "".join(f"<li>{escape(note)}</li>" for note in left_out)
        sections.append(("left-out", "Left out of this report", f'<ul id="left-out-notes">{items}</ul>'))
    body = "".join(
        f'<section id="{sid}"><h2>{escape(title)}</h2>{html}</section>' for sid, title, html in sections
    )
    title = f"{chain} · {names[0]} · Chainette report"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{escape(chain)} <span class="muted">{escape(names[0])} · run '
        f"{escape(str(run.meta.get('run_id', '')))} · {escape(str(run.meta.get('status', '')))}</span></h1>{body}"
        f'<p class="muted">Written by chainette report.</p><script>{SCRIPT}</script></body></html>\n'
    )
