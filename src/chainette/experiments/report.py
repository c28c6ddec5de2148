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

import json
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from itertools import islice
from pathlib import Path
from typing import Any

from .._errors import RunFolderError
from ..io.layout import EXPERIMENT, FAILURES, FLATTENED, GRAPH, METADATA
from ..runtime.result import read_rows
from .report_graph import graph_svg

__all__ = ["CASES", "SCAN", "RunView", "build_report", "load_run", "write_report"]

SCAN = 10_000
"""Flattened rows read at most to find the samples' inputs."""
CASES = 500
"""Experiment cases shown at most."""
_CUT = 160
_FULL = 20_000

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#202124}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dadce0}
table{border-collapse:collapse;margin:6px 0;font-size:13px}th,td{border:1px solid #dadce0;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f1f3f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#5f6368}.cards{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid #dadce0;
border-radius:6px;padding:6px 12px;min-width:90px}.card b{display:block;font-size:18px}
.pass{color:#188038}.fail{color:#c5221f}.error{color:#a142f4}.unscored{color:#5f6368}
code,pre{font:12px ui-monospace,monospace;white-space:pre-wrap;word-break:break-word;margin:0}
details summary{cursor:pointer;color:#1a73e8}.up{color:#188038}.down{color:#c5221f}
"""


@dataclass
class RunView:
    """What the report reads of one run folder up front (the small files)."""

    path: Path
    meta: dict[str, Any]
    graph: dict[str, Any]
    experiment: dict[str, Any] | None

    @property
    def fmt(self) -> str:
        return str(self.meta.get("config", {}).get("fmt", "jsonl"))

    @property
    def counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = self.meta.get("counts", {})
        return counts


def load_run(path: str | Path) -> RunView:
    """Read ``metadata.json``, ``graph.json`` and (when there) ``experiment.json`` of a run folder."""
    folder = Path(path)
    if not (folder / METADATA).is_file():
        raise RunFolderError(
            f"{folder} is not a run folder: it has no {METADATA}. Pass the folder a run wrote."
        )

    def load(name: str) -> dict[str, Any] | None:
        file = folder / name
        data: dict[str, Any] | None = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
        return data

    return RunView(folder, load(METADATA) or {}, load(GRAPH) or {}, load(EXPERIMENT))


def write_report(
    run: str | Path,
    out: str | Path,
    compare: str | Path | None = None,
    *,
    samples: int = 5,
    failures: int = 200,
) -> Path:
    """Write the report of ``run`` (against ``compare`` when given) to ``out``; returns ``out``.

    Example:
        >>> write_report("runs/qa", "report.html", compare="runs/qa-old")   # doctest: +SKIP
    """
    other = load_run(compare) if compare is not None else None
    text = build_report(load_run(run), other, samples=samples, failures=failures)
    target = Path(out)
    target.write_text(text, encoding="utf-8")
    return target


# ---------------------------------------------------------------- formatting


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _cut(value: Any, limit: int = _CUT) -> str:
    """Escaped text, cut at ``limit`` characters with the rest (up to ``_FULL``) in a <details>."""
    if value is None:
        return '<span class="muted">—</span>'
    text = _text(value)
    if len(text) <= limit:
        return f"<code>{escape(text)}</code>"
    more = " (cut)" if len(text) > _FULL else ""
    return (
        f"<code>{escape(text[:limit])}…</code><details><summary>all {len(text):,} characters{more}</summary>"
        f"<pre>{escape(text[:_FULL])}</pre></details>"
    )


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return escape(str(value))
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if value else "0"
    return f"{value:,}"


def _rate(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, int | float) else "—"


def _delta(a: Any, b: Any, *, points: bool = False) -> str:
    """``a − b`` with a sign (``pp`` for rates), or ``—`` when either is not a number."""
    if not (isinstance(a, int | float) and isinstance(b, int | float)):
        return "—"
    d = (a - b) * (100 if points else 1)
    if not d:
        return "0"
    shown = f"{d:+.1f} pp" if points else ("+" if d > 0 else "−") + _num(abs(round(d, 6)))
    return f'<span class="{"up" if d > 0 else "down"}">{escape(shown)}</span>'


def _table(head: list[str], rows: list[list[str]], attrs: str = "") -> str:
    """A table; ``head`` is escaped here, each cell is HTML already."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _cell(cell: str) -> str:
    return f'<td class="n">{cell[3:]}</td>' if cell.startswith("#n:") else f"<td>{cell}</td>"


def _n(value: Any) -> str:
    """A right-aligned number cell."""
    return "#n:" + _num(value)


def _get(data: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


# ---------------------------------------------------------------- reading, capped


def _rows(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """The rows of a file or part folder, lazily (a Parquet part is read a batch at a time)."""
    if not path.exists():
        return
    if fmt != "parquet":
        yield from read_rows(path, fmt)
        return
    import pyarrow.parquet as pq

    for file in sorted(path.glob("*.parquet")) if path.is_dir() else [path]:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=256):
            yield from batch.to_pylist()


def _head(path: Path, fmt: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a file or part folder."""
    return list(islice(_rows(path, fmt), max(limit, 0)))


def _inputs_for(run: RunView, ids: set[str]) -> dict[str, dict[str, Any]]:
    """``_id`` → the record's input fields, from the first ``SCAN`` flattened rows (ids of a fan-out's
    rows, ``<id>.<k>``, find their record's input too)."""
    found: dict[str, dict[str, Any]] = {}
    if not ids:
        return found
    for row in islice(_rows(run.path / FLATTENED, run.fmt), SCAN):
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
        ("cost", "cost (USD)", cost.get("usd")),
        ("saved-cost", "saved (USD)", cost.get("saved_usd")),
        ("cache-sent", "requests sent", cache.get("sent")),
        ("cache-hits", "from the ledger", cache.get("hits")),
        ("cache-deduped", "shared", cache.get("deduped")),
    ]
    if run.experiment is not None:
        cards.insert(0, ("pass-rate", "pass rate", None))
    html = "".join(
        f'<div class="card"><span class="muted">{escape(label)}</span><b id="{key}">'
        f"{_rate(_get(run.experiment, 'totals', 'pass_rate')) if key == 'pass-rate' else _num(value)}</b></div>"
        for key, label, value in cards
    )
    saved = _get(cache, "saved_tokens") or {}
    facts = [
        ("run id", meta.get("run_id")),
        ("status", meta.get("status")),
        ("started", meta.get("started_at")),
        ("finished", meta.get("finished_at")),
        ("duration", f"{_num(meta.get('duration_s'))} s"),
        ("folder", str(run.path)),
        ("ledger", f"{cache.get('ledger', '—')} ({cache.get('mode', '—')})"),
        (
            "tokens saved by the ledger",
            f"{_num(saved.get('prompt'))} prompt, {_num(saved.get('completion'))} completion",
        ),
    ]
    warnings = meta.get("warnings") or []
    facts.extend(("warning", w) for w in warnings)
    dl = "".join(
        f"<tr><th>{escape(k)}</th><td id='meta-{escape(k.split()[0])}'>{escape(_text(v))}</td></tr>"
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
        + _table(["node", "kind", "engine", "inside"], rows, ' id="graph-nodes"')
        + _table(["from", "to"], edges, ' id="graph-edges"')
        + "</details>"
    )


def _node_stats(run: RunView) -> str:
    nodes: dict[str, dict[str, Any]] = run.meta.get("nodes") or {}
    if not nodes:
        return '<p class="muted">metadata.json has no per-node figures.</p>'
    keys = list(dict.fromkeys(k for stats in nodes.values() for k in stats))
    rows = [
        [f"<code>{escape(node)}</code>", *(_n(stats.get(k)) for k in keys)] for node, stats in nodes.items()
    ]
    return _table(["node", *(k.replace("_", " ") for k in keys)], rows, ' id="node-stats"')


def _failures(run: RunView, cap: int) -> str:
    shown = _head(run.path / FAILURES, "jsonl", cap)
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
            _cut(f.get("message")),
            _cut(f.get("raw")),
            _cut(f.get("input")),
        ]
        for f in shown
    ]
    more = ""
    if isinstance(total, int) and total > len(shown):
        more = f'<p class="muted" id="failures-more">{total - len(shown):,} more failures are not shown (see failures.jsonl).</p>'
    return (
        _table(["node", "record", "error", "message", "raw output", "input"], rows, ' id="failures-table"')
        + more
    )


def _samples(run: RunView, n: int) -> str:
    reserved = {FLATTENED}
    steps = [
        str(node["id"])
        for node in run.graph.get("nodes", [])
        if str(node["id"]) not in reserved and (run.path / str(node["id"])).is_dir()
    ]
    heads = {step: _head(run.path / step, run.fmt, n) for step in steps}
    inputs = _inputs_for(run, {str(r.get("_id")) for rows in heads.values() for r in rows})
    parts = []
    for step, rows in heads.items():
        body = []
        for row in rows:
            rid = str(row.get("_id"))
            output = {k: v for k, v in row.items() if k != "_id"}
            body.append([f"<code>{escape(rid)}</code>", _cut(_lookup(inputs, rid)), _cut(output)])
        table = _table(["record", "input", "output"], body, f' class="samples" data-step="{escape(step)}"')
        parts.append(
            f"<h3><code>{escape(step)}</code></h3>" + (table if body else '<p class="muted">no rows</p>')
        )
    return "".join(parts) or '<p class="muted">No step wrote a folder.</p>'


def _experiment(exp: dict[str, Any]) -> str:
    totals = exp.get("totals") or {}
    cases = exp.get("cases") or []
    summary = " · ".join(
        f'<span class="{s}">{s} {_num(totals.get(s))}</span>' for s in ("pass", "fail", "error", "unscored")
    )
    rows = [
        [
            f"<code>{escape(str(c.get('id')))}</code>",
            f'<span class="{escape(str(c.get("status")))}">{escape(str(c.get("status")))}</span>',
            _n(c.get("score")),
            _cut(c.get("reason")),
            _cut(c.get("expected")),
            _cut(c.get("output")),
        ]
        for c in cases[:CASES]
    ]
    more = (
        f'<p class="muted">{len(cases) - CASES:,} more cases are not shown.</p>' if len(cases) > CASES else ""
    )
    return (
        f"<p>Experiment <b>{escape(str(exp.get('experiment')))}</b>: pass rate "
        f"<b id='experiment-pass-rate'>{_rate(totals.get('pass_rate'))}</b> of {_num(totals.get('cases'))} cases "
        f"({summary}).</p>"
        + _table(["case", "status", "score", "reason", "expected", "output"], rows, ' id="cases"')
        + more
    )


def _compare(run: RunView, other: RunView) -> str:
    def pick(view: RunView, *keys: str) -> Any:
        return _get(view.meta, *keys)

    figures = [
        ("records in", ("counts", "records_in")),
        ("records out", ("counts", "records_out")),
        ("failures", ("counts", "failures")),
        ("filtered", ("counts", "filtered")),
        ("duration (s)", ("duration_s",)),
        ("prompt tokens", ("tokens", "prompt")),
        ("completion tokens", ("tokens", "completion")),
        ("cost (USD)", ("cost", "usd")),
        ("requests sent", ("cache", "sent")),
        ("from the ledger", ("cache", "hits")),
    ]
    rows = [
        [
            escape(label),
            _n(pick(run, *k)),
            _n(pick(other, *k)),
            "#n:" + _delta(pick(run, *k), pick(other, *k)),
        ]
        for label, k in figures
    ]
    a_rate, b_rate = (
        _get(run.experiment, "totals", "pass_rate"),
        _get(other.experiment, "totals", "pass_rate"),
    )
    if run.experiment is not None or other.experiment is not None:
        rows.insert(
            0,
            [
                "pass rate",
                "#n:" + _rate(a_rate),
                "#n:" + _rate(b_rate),
                f"#n:<span id='pass-rate-delta'>{_delta(a_rate, b_rate, points=True)}</span>",
            ],
        )
    head = ["", f"this run ({run.meta.get('run_id')})", f"other ({other.meta.get('run_id')})", "this − other"]
    html = f"<p>Against <code>{escape(str(other.path))}</code>.</p>" + _table(
        head, rows, ' id="compare-figures"'
    )
    a_nodes, b_nodes = run.meta.get("nodes") or {}, other.meta.get("nodes") or {}
    node_rows = []
    for node in dict.fromkeys([*a_nodes, *b_nodes]):
        a, b = a_nodes.get(node, {}), b_nodes.get(node, {})
        cells = [f"<code>{escape(node)}</code>"]
        for key in ("records_out", "failed", "requests", "prompt_tokens", "completion_tokens"):
            cells += [_n(a.get(key)), _n(b.get(key)), "#n:" + _delta(a.get(key), b.get(key))]
        node_rows.append(cells)
    node_head = ["node"] + [
        f"{k} {w}"
        for k in ("out", "failed", "requests", "prompt tok", "completion tok")
        for w in ("this", "other", "Δ")
    ]
    html += "<h3>Per node</h3>" + _table(node_head, node_rows, ' id="compare-nodes"')
    if run.experiment is not None and other.experiment is not None:
        html += _changed_cases(run.experiment, other.experiment)
    elif run.experiment is not None or other.experiment is not None:
        html += '<p class="muted">Only one of the two runs is an experiment: no cases to compare.</p>'
    return html


def _changed_cases(a_exp: dict[str, Any], b_exp: dict[str, Any]) -> str:
    a_cases = {str(c.get("id")): c for c in a_exp.get("cases") or []}
    b_cases = {str(c.get("id")): c for c in b_exp.get("cases") or []}
    rows = []
    for cid in dict.fromkeys([*a_cases, *b_cases]):
        a, b = a_cases.get(cid), b_cases.get(cid)
        if (
            a is not None
            and b is not None
            and (a.get("status"), a.get("output")) == (b.get("status"), b.get("output"))
        ):
            continue

        def status(c: dict[str, Any] | None) -> str:
            s = "absent" if c is None else str(c.get("status"))
            return f'<span class="{escape(s)}">{escape(s)}</span>'

        rows.append(
            [
                f"<code>{escape(cid)}</code>",
                status(b),
                status(a),
                _cut(None if b is None else b.get("output")),
                _cut(None if a is None else a.get("output")),
            ]
        )
    if not rows:
        return '<p class="muted" id="no-changed-cases">No case changed status or output.</p>'
    return f"<h3>Cases that changed ({len(rows)})</h3>" + _table(
        ["case", "status (other)", "status (this)", "output (other)", "output (this)"],
        rows[:CASES],
        ' id="changed-cases"',
    )


def build_report(run: RunView, other: RunView | None = None, *, samples: int = 5, failures: int = 200) -> str:
    """The whole page for ``run`` (and its comparison with ``other``) as a string."""
    chain = str(run.meta.get("chain") or run.graph.get("name") or run.path.name)
    sections = [
        ("summary", "Summary", _header(run)),
        ("graph", "Graph", _graph(run)),
        ("nodes", "Per node", _node_stats(run)),
    ]
    if run.experiment is not None:
        sections.append(("experiment", "Experiment", _experiment(run.experiment)))
    if other is not None:
        sections.append(("compare", "Compared with another run", _compare(run, other)))
    sections += [
        ("failures-section", f"Failures ({_num(run.counts.get('failures'))})", _failures(run, failures)),
        ("samples", f"Samples (first {samples} rows of each step)", _samples(run, samples)),
    ]
    body = "".join(
        f'<section id="{sid}"><h2>{escape(title)}</h2>{html}</section>' for sid, title, html in sections
    )
    title = f"{chain} · {run.meta.get('run_id', '')} · Chainette report"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{escape(chain)} <span class="muted">run {escape(str(run.meta.get("run_id", "")))} · '
        f"{escape(str(run.meta.get('status', '')))}</span></h1>{body}"
        '<p class="muted">Written by chainette report.</p></body></html>\n'
    )
