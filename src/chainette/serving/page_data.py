"""What the served page reads besides the schema: the chain's graph as a tree, and example inputs.

``outline(chain)`` is ``graph.json``'s description (``nodes``, ``edges``) plus ``tree``: each
item of the chain with its ``children`` (a parallel group's branches, a router's routes, a loop's
or a subflow's body), so the page can draw branches and routes nested, not as a flat row.

Examples come from ``create_app(examples=...)`` / ``chainette serve --example FILE`` and from the
input model's own JSON schema (``json_schema_extra={"examples": [...]}``). Each given example is
checked against the input model when the app is built, so a wrong one is an error then, naming
it, not a form the page cannot fill.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from .._errors import InputError
from ..engines.secrets import scrub_strings
from ..graph.chain import ChainGraph
from ..runtime.records import describe_validation

__all__ = ["check_examples", "outline", "read_examples", "schema_examples"]


def outline(chain: ChainGraph) -> dict[str, Any]:
    """The graph the page draws before a run: ``graph.json``'s nodes and edges, and ``tree``."""
    described = chain.describe()
    described["tree"] = [_node_tree(item) for item in chain.items]
    scrubbed: dict[str, Any] = scrub_strings(described)
    return scrubbed


def _node_tree(node: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": node.id, "kind": node.kind, "name": node.name}
    if node.engine_name is not None:
        out["engine"] = node.engine_name
    children = list(node.children())
    if children:
        out["children"] = [_node_tree(child) for child in children]
    return out


def schema_examples(model: Any) -> list[Any]:
    """The examples the input model's JSON schema states (``json_schema_extra``), if any."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        found = model.model_json_schema().get("examples")
        if isinstance(found, list):
            return found
    return []


def check_examples(chain: ChainGraph, examples: Sequence[Any]) -> list[Any]:
    """``examples`` as JSON-ready values, each checked against the chain's input model.

    Raises:
        InputError: naming the example (its place, from 1) and its fields that do not fit.
    """
    model = chain.input_model
    out: list[Any] = []
    for n, example in enumerate(examples, 1):
        value = example.model_dump(mode="json") if isinstance(example, BaseModel) else example
        if model is not None:
            try:
                TypeAdapter(model).validate_python(value)
            except ValidationError as exc:
                name = getattr(model, "__name__", "the input model")
                raise InputError(
                    f"Example {n} does not fit {name}: {describe_validation(exc)}. Fix it or leave it out."
                ) from None
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"Example {n} is not JSON-ready ({exc}): pass dicts, lists and scalars."
            ) from None
        out.append(value)
    return out


def read_examples(path: Path) -> list[Any]:
    """The examples in a file: a ``.jsonl`` file's lines, or a JSON file's object (or list of them).

    Raises:
        InputError: the file cannot be read or a line / the file is not JSON, naming file and line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--example {path}: cannot read it ({exc}).") from None
    if path.suffix == ".jsonl":
        values = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    values.append(json.loads(line))
                except ValueError as exc:
                    raise InputError(f"--example {path}, line {line_no}: not JSON ({exc}).") from None
        return values
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InputError(
            f"--example {path}: not JSON ({exc}); give one object, a list of them, or a .jsonl file."
        ) from None
    return value if isinstance(value, list) else [value]
