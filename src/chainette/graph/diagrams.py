"""Diagrams of a chain: Mermaid and Graphviz DOT, drawn from the graph description alone.

Both functions take the dict that :meth:`Chain.describe` returns (what ``graph.json`` holds)::

    {"name": ..., "batch_size": ..., "nodes": [{"id", "kind", "name", ...}], "edges": [{"from", "to"}]}

and read only ``nodes`` and ``edges`` (plus ``name`` as the DOT graph's title), so they draw any
graph of that shape, whatever node kinds it holds:

- shapes: ``step`` a rectangle, ``apply`` a parallelogram, ``input`` / ``output`` a stadium
  (Mermaid) or an ellipse (DOT); any other kind a rounded box labelled with its kind, except
  that a ``loop`` is labelled with how it ends (its ``summary``) and is a hexagon in DOT. A
  loop's body sits in the loop's subgraph (its nodes name it as ``parent``), and the edge back
  to it is labelled ``repeat``.
- an edge endpoint that is not among ``nodes`` (``input`` today) is drawn as a node of its own.
- containers: a node whose ``"parent"`` names another id is drawn inside a subgraph for that
  parent (Mermaid ``subgraph``, DOT ``subgraph cluster_N``), nested as the parents nest; a node
  without a parent but with a ``"branch"`` is drawn inside a subgraph for its branch, labelled
  with its ``join_alias`` (or as a side output); a node on a router's route (``"router"`` and
  ``"route"``) inside a subgraph for that route, labelled ``route <name> of <router>``: its
  output goes on down the main line. A parent that is itself a node labels its
  subgraph, and is drawn as a node inside it only when an edge touches it.

Ids are emitted safely whatever they hold: DOT quotes and escapes every id; Mermaid keeps an id
as written when it is a plain identifier and not a Mermaid keyword (``end``, ``class``...),
and otherwise uses a derived, unique one. Labels are free text: quotes, ``#``, ``<``, ``>``,
``&``, backticks and backslashes are escaped, line breaks kept as line breaks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["to_dot", "to_mermaid"]

_MERMAID_DIRECTIONS = ("LR", "RL", "TB", "TD", "BT")

_MERMAID_SHAPES = {
    "step": ('["', '"]'),
    "apply": ('[/"', '"/]'),
    "input": ('(["', '"])'),
    "output": ('(["', '"])'),
}
_MERMAID_DEFAULT_SHAPE = ('("', '")')

_DOT_SHAPES = {
    "step": "shape=box",
    "apply": "shape=parallelogram",
    "input": "shape=ellipse",
    "output": "shape=ellipse",
    "loop": "shape=hexagon",
}
_DOT_DEFAULT_SHAPE = 'shape=box, style="rounded"'

_PLAIN_KINDS = frozenset({"step", "apply", "input", "output"})

# Words the Mermaid flowchart grammar reads as keywords where a node id is expected.
_MERMAID_KEYWORD = re.compile(
    r"end|subgraph|graph|flowchart|style|classdef|class|linkstyle|click|call|href|default|interpolate"
    r"|direction|callback|_self|_blank|_parent|_top|tb|td|bt|rl|lr",
    re.IGNORECASE,
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def to_mermaid(graph: Mapping[str, Any], *, direction: str = "LR") -> str:
    """The graph as a Mermaid flowchart (``flowchart LR`` ...), ready for Markdown.

    Args:
        graph: What :meth:`Chain.describe` returns (``nodes`` and ``edges`` are read).
        direction: ``LR`` (default), ``RL``, ``TB``, ``TD`` or ``BT``.
    """
    if direction not in _MERMAID_DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(_MERMAID_DIRECTIONS)}, got {direction!r}.")
    layout = _Layout(graph)
    ids = _MermaidIds(layout.drawn)
    subgraph_ids = {c.index: ids.fresh(f"sg_{c.index}") for c in layout.clusters()}

    lines = [f"flowchart {direction}"]

    def node_line(node_id: str, indent: str) -> str:
        start, end = _MERMAID_SHAPES.get(layout.kind(node_id), _MERMAID_DEFAULT_SHAPE)
        label = _mermaid_text("\n".join(layout.label(node_id)))
        return f"{indent}{ids[node_id]}{start}{label}{end}"

    def emit(items: list[str | _Cluster], depth: int) -> None:
        indent = "  " * depth
        for item in items:
            if isinstance(item, str):
                lines.append(node_line(item, indent))
            else:
                lines.append(f'{indent}subgraph {subgraph_ids[item.index]} ["{_mermaid_text(item.label)}"]')
                emit(item.items, depth + 1)
                lines.append(f"{indent}end")

    emit(layout.top, 1)
    for source, target, label in layout.edges:
        arrow = f'-->|"{_mermaid_text(label)}"|' if label else "-->"
        lines.append(f"  {ids[source]} {arrow} {ids[target]}")
    return "\n".join(lines)


def to_dot(graph: Mapping[str, Any], *, rankdir: str = "LR") -> str:
    """The graph as a Graphviz ``digraph`` (render with ``dot -Tsvg``).

    Args:
        graph: What :meth:`Chain.describe` returns (``nodes`` and ``edges`` are read; ``name``
            titles the drawing).
        rankdir: Graphviz ``rankdir``: ``LR`` (default), ``RL``, ``TB`` or ``BT``.
    """
    if rankdir not in ("LR", "RL", "TB", "BT"):
        raise ValueError(f"rankdir must be one of LR, RL, TB, BT, got {rankdir!r}.")
    layout = _Layout(graph)
    name = str(graph.get("name") or "chain")
    lines = [
        f"digraph {_dot_quote(name)} {{",
        f'  graph [rankdir={rankdir}, label="{_dot_escape(name)}", labelloc=t, fontname=Helvetica];',
        "  node [fontname=Helvetica];",
        "  edge [fontname=Helvetica];",
    ]

    def emit(items: list[str | _Cluster], depth: int) -> None:
        indent = "  " * depth
        for item in items:
            if isinstance(item, str):
                shape = _DOT_SHAPES.get(layout.kind(item), _DOT_DEFAULT_SHAPE)
                label = _dot_escape("\n".join(layout.label(item)))
                lines.append(f'{indent}{_dot_quote(item)} [label="{label}", {shape}];')
            else:
                lines.append(f'{indent}subgraph "cluster_{item.index}" {{')
                lines.append(f'{indent}  label="{_dot_escape(item.label)}";')
                lines.append(f'{indent}  style="rounded,dashed";')
                emit(item.items, depth + 1)
                lines.append(f"{indent}}}")

    emit(layout.top, 1)
    for source, target, label in layout.edges:
        attrs = f' [label="{_dot_escape(label)}"]' if label else ""
        lines.append(f"  {_dot_quote(source)} -> {_dot_quote(target)}{attrs};")
    lines.append("}")
    return "\n".join(lines)


@dataclass
class _Cluster:
    index: int
    label: str
    items: list[str | _Cluster] = field(default_factory=list)


class _Layout:
    """What both formats draw: nodes placed in (nested) clusters, and the edges."""

    def __init__(self, graph: Mapping[str, Any]) -> None:
        self.nodes: dict[str, Mapping[str, Any]] = {}
        for node in graph.get("nodes") or ():
            self.nodes.setdefault(str(node["id"]), node)
        self.edges: list[tuple[str, str, str]] = [
            (str(e["from"]), str(e["to"]), str(e.get("label") or "")) for e in graph.get("edges") or ()
        ]
        containers = {self._container(node_id) for node_id in self.nodes} - {None}
        container_ids = {key[1] for key in containers if key is not None and key[0] == "node"}

        # Drawn as nodes: edge endpoints that are not declared (input) first, then declared
        # nodes, except a container that no edge touches (its subgraph stands for it).
        endpoints = dict.fromkeys(end for source, target, _ in self.edges for end in (source, target))
        self.drawn: list[str] = [n for n in endpoints if n not in self.nodes]
        self.drawn += [n for n in self.nodes if n not in container_ids or n in endpoints]

        self.top: list[str | _Cluster] = []
        self._clusters: dict[tuple[str, str], _Cluster] = {}
        for node_id in self.drawn:
            # A drawn container sits inside its own subgraph; any other node inside its container's.
            key = ("node", node_id) if node_id in container_ids else self._container(node_id)
            self._items(key).append(node_id)

    def kind(self, node_id: str) -> str:
        node = self.nodes.get(node_id)
        if node is None:
            return node_id if node_id in ("input", "output") else ""
        return str(node.get("kind") or "")

    def label(self, node_id: str) -> list[str]:
        node = self.nodes.get(node_id)
        if node is None:
            return [node_id]
        name = str(node.get("name") or node_id)
        kind = self.kind(node_id)
        if kind == "loop" and node.get("summary"):  # how it ends: "3 times", "until done, at most 10"
            return [name, f"(loop: {node['summary']})"]
        return [name] if kind in _PLAIN_KINDS else [name, f"({kind or 'node'})"]

    def clusters(self) -> Iterator[_Cluster]:
        return iter(self._clusters.values())

    def _container(self, node_id: str) -> tuple[str, str] | None:
        node = self.nodes.get(node_id)
        if node is None:
            return None
        if node.get("parent") is not None:
            return ("node", str(node["parent"]))
        if node.get("router") is not None and node.get("route") is not None:
            return ("route", f"{node['router']}\x00{node['route']}")
        if node.get("branch") is not None:
            return ("branch", str(node["branch"]))
        return None

    def _items(
        self, key: tuple[str, str] | None, seen: frozenset[tuple[str, str]] = frozenset()
    ) -> list[str | _Cluster]:
        """The item list that ``key``'s members go in, creating its (and its parents') clusters."""
        if key is None or key in seen:  # top level, or a parent cycle (bad data): draw flat
            return self.top
        cluster = self._clusters.get(key)
        if cluster is None:
            outer = self._container(key[1]) if key[0] == "node" else None
            cluster = _Cluster(index=len(self._clusters), label=self._cluster_label(key))
            self._clusters[key] = cluster
            self._items(outer, seen | {key}).append(cluster)
        return cluster.items

    def _cluster_label(self, key: tuple[str, str]) -> str:
        what, name = key
        if what == "route":  # its output goes on down the main line, under the router's id
            router, route = name.split("\x00", 1)
            return f"route {route} of {router}"
        if what == "branch":
            alias = next(
                (n.get("join_alias") for n in self.nodes.values() if str(n.get("branch")) == name), None
            )
            return f"branch {name} (joined as {alias})" if alias else f"branch {name} (side output)"
        node = self.nodes.get(name)
        if node is None:
            return name
        return f"{node.get('kind') or 'node'} {node.get('name') or name}"


class _MermaidIds:
    """Graph ids → Mermaid ids: the id itself when it is safe, else a derived unique one."""

    def __init__(self, names: list[str]) -> None:
        self._map: dict[str, str] = {}
        self._used: set[str] = set()
        names = list(dict.fromkeys(names))
        for name in names:
            if _IDENTIFIER.fullmatch(name) and not _MERMAID_KEYWORD.fullmatch(name):
                self._map[name] = name
                self._used.add(name)
        for name in names:
            if name not in self._map:
                self._map[name] = self.fresh("n_" + re.sub(r"\W", "_", name, flags=re.ASCII))

    def fresh(self, base: str) -> str:
        """An id no node uses: ``base``, else ``base_1``, ``base_2``..."""
        candidate, k = base, 1
        while candidate in self._used:
            candidate, k = f"{base}_{k}", k + 1
        self._used.add(candidate)
        return candidate

    def __getitem__(self, name: str) -> str:
        return self._map[name]


def _mermaid_text(text: str) -> str:
    """Free text inside a quoted Mermaid label: entity codes for what Mermaid would interpret.

    ``:`` is encoded too: Mermaid strips the last ``;`` of a line that reads ``style...:...#...;``
    before decoding entities, which would break the entity codes of a label such as ``style: "a"``.
    """
    out = []
    for char in "\n".join(text.splitlines()):
        if char in '#"<>&`\\:':
            out.append(f"#{ord(char)};")
        elif char == "\n":
            out.append("<br/>")
        else:
            out.append(char)
    return "".join(out)


def _dot_escape(text: str) -> str:
    """Free text inside a double-quoted DOT label (an escString).

    Backslashes and quotes are escaped (so ``\\N``, ``\\G``... stay literal), line breaks become
    ``\\n``, and ``&`` becomes ``&amp;``: Graphviz decodes HTML entities in plain labels too.
    """
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("&", "&amp;")
    return "\\n".join(text.splitlines()) if text else text


def _dot_quote(name: str) -> str:
    """A quoted DOT id: inside quotes only ``\\"`` (and ``\\\\``) are escapes; entities are not decoded."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
