"""A chain drawn as a rich tree, for ``chainette inspect`` and ``inspect-dag --format tree``."""

from __future__ import annotations

from typing import Any

from rich.tree import Tree

from ..graph.chain import ChainGraph
from ..graph.checks import CheckReport
from ..graph.hints import type_label
from ..graph.nodes import Branch, Node
from ._common import shown

__all__ = ["chain_tree"]


def chain_tree(chain: ChainGraph, report: CheckReport | None) -> Tree:
    """``chain`` as a rich tree (``inspect``, ``inspect-dag``): each node with its kind, models and
    engine, and with ``report`` its errors and warnings counted."""
    tree = Tree(f"[bold]{shown(chain.name)}[/] [dim](batch size {chain.batch_size})[/]")
    model = chain.input_type  # a model, a union of models (A | B), or None
    tree.add(f"[dim]input[/] {shown(type_label(model)) if model is not None else '?'}")
    for item in chain.items:
        add_node(tree, item, report)
    return tree


def add_node(tree: Tree, node: Node, report: CheckReport | None) -> None:
    """``node`` under ``tree``: a leaf as one line, a container as a sub-tree of its children."""
    if not node.children():
        tree.add(node_label(node, report))
        return
    if isinstance(node, Branch) and node.kind == "branch":
        joined = (
            f"joined as [bold]{shown(node.join_alias)}[/]"
            if node.join_alias
            else "[dim]not joined (side output)[/]"
        )
        sub = tree.add(f"[magenta]branch[/] [bold]{shown(node.name)}[/] → {joined}")
    else:
        title = "" if node.kind == "parallel" else f" [bold]{shown(node.name)}[/]"
        sub = tree.add(f"[magenta]{shown(node.kind)}[/]{title}")
    for child in node.children():
        add_node(sub, child, report)


def node_label(node: Node, report: CheckReport | None) -> str:
    def name(model: Any) -> str:
        return model.__name__ if model is not None else "?"

    output = " | ".join(v.__name__ for v in node.output_variants) or "?"  # a union step: its variants
    text = f"[bold]{shown(node.id)}[/] [cyan]{shown(node.kind)}[/] {shown(name(node.input_model))} → {shown(output)}"
    if node.name != node.id:
        text += f" [dim]({shown(node.name)})[/]"
    if node.engine_name is not None:
        text += f"  [dim]engine[/] {shown(node.engine_name)}"
    if report is not None:
        errors = sum(1 for i in report.errors if i.node_id == node.id)
        warnings = sum(1 for i in report.warnings if i.node_id == node.id)
        text += f"  [red]✗ {errors} error(s)[/]" if errors else ""
        text += f"  [yellow]! {warnings} warning(s)[/]" if warnings else ""
    return text
