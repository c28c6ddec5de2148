"""The chain's graph as inline SVG: boxes and arrows, laid out top to bottom, no script, no network.

Reads ``nodes`` and ``edges`` of a ``graph.json`` (as :mod:`chainette.graph.diagrams` does). Each
node goes on the row after the deepest node that feeds it (edges that would close a cycle, such as
a loop's ``repeat``, are left out of the layering but still drawn); an edge endpoint that is not
among ``nodes`` (``input``) is a node of its own. Every label is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

__all__ = ["graph_svg"]

_W, _H, _GAP_X, _GAP_Y, _PAD = 170, 44, 30, 46, 16
_MAX_LABEL = 22


def _levels(ids: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Longest-path depth of each id over the edges that do not close a cycle (in first-seen order)."""
    order = {node: k for k, node in enumerate(ids)}
    forward = [(a, b) for a, b in edges if a != b]
    # Drop back edges: an edge whose target already reaches its source.
    children: dict[str, list[str]] = {n: [] for n in ids}
    kept: list[tuple[str, str]] = []
    for a, b in forward:
        if not _reaches(children, b, a):
            children[a].append(b)
            kept.append((a, b))
    level = {n: 0 for n in ids}
    for _ in range(len(ids)):
        changed = False
        for a, b in kept:
            if level[b] < level[a] + 1:
                level[b] = level[a] + 1
                changed = True
        if not changed:
            break
    return dict(sorted(level.items(), key=lambda item: (item[1], order[item[0]])))


def _reaches(children: Mapping[str, list[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        for nxt in children.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def _short(text: str) -> str:
    return text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "…"


def graph_svg(graph: Mapping[str, Any]) -> str:
    """An ``<svg>`` element drawing the graph's nodes (id and kind) and edges, top to bottom."""
    nodes = {str(n["id"]): n for n in graph.get("nodes", [])}
    edges = [(str(e["from"]), str(e["to"])) for e in graph.get("edges", [])]
    ids = list(dict.fromkeys([*(a for a, _ in edges), *nodes, *(b for _, b in edges)]))
    if not ids:
        return '<p class="muted">The graph has no nodes.</p>'
    level = _levels(ids, edges)
    rows: dict[int, list[str]] = {}
    for node, depth in level.items():
        rows.setdefault(depth, []).append(node)
    widest = max(len(r) for r in rows.values())
    width = _PAD * 2 + widest * _W + (widest - 1) * _GAP_X
    height = _PAD * 2 + len(rows) * _H + (len(rows) - 1) * _GAP_Y
    where: dict[str, tuple[float, float]] = {}
    for depth, row in rows.items():
        span = len(row) * _W + (len(row) - 1) * _GAP_X
        x0 = (width - span) / 2
        for k, node in enumerate(row):
            where[node] = (x0 + k * (_W + _GAP_X), _PAD + depth * (_H + _GAP_Y))
    parts = [
        f'<svg id="graph-svg" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="the chain graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/>'
        "</marker></defs>",
    ]
    for a, b in edges:
        (xa, ya), (xb, yb) = where[a], where[b]
        back = level[b] <= level[a]
        x1, y1 = xa + _W / 2, ya + (_H if not back else 0)
        x2, y2 = xb + _W / 2, yb + (0 if not back else _H)
        if back:  # a repeat edge: curve out to the right and back up
            bend = max(xa, xb) + _W + _GAP_X / 2
            path = f"M{x1:.0f},{y1:.0f} C{bend:.0f},{y1:.0f} {bend:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"
        else:
            path = f"M{x1:.0f},{y1:.0f} L{x2:.0f},{y2:.0f}"
        parts.append(
            f'<path class="edge" d="{path}" fill="none" stroke="#555" stroke-width="1.4" '
            f'marker-end="url(#arrow)"><title>{escape(a)} → {escape(b)}</title></path>'
        )
    for node in ids:
        x, y = where[node]
        info = nodes.get(node, {})
        kind = str(info.get("kind", node if node in ("input", "output") else "node"))
        rx = 20 if kind in ("input", "output") else 4
        fill = {"step": "#e8f0fe", "apply": "#e6f4ea", "input": "#f1f3f4", "output": "#f1f3f4"}.get(
            kind, "#fef7e0"
        )
        detail = str(info.get("engine") or info.get("summary") or kind)
        parts.append(
            f'<g class="node" data-node="{escape(node)}"><title>{escape(node)} ({escape(kind)})</title>'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{_W}" height="{_H}" rx="{rx}" fill="{fill}" '
            f'stroke="#5f6368"/>'
            f'<text x="{x + _W / 2:.0f}" y="{y + 18:.0f}" text-anchor="middle" font-size="13" '
            f'font-weight="600">{escape(_short(node))}</text>'
            f'<text x="{x + _W / 2:.0f}" y="{y + 34:.0f}" text-anchor="middle" font-size="11" '
            f'fill="#5f6368">{escape(_short(detail))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
