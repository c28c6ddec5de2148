"""The schema instruction appended to a step's system prompt.

Grammar-constrained engines already force the structure; the instruction tells the model what
each field *means*. A readable field list works better than a raw JSON-schema dump, notably on
small models (SmolLM2-135M answered "A spider has 8 legs." with the list and looped with the
dump). Nested models still get the full schema, since a flat list cannot describe them.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["schema_instruction"]


def schema_instruction(schema: dict[str, Any]) -> str:
    """``Reply with only a JSON object with these fields: ...`` for ``schema``; for a union of
    models (a root ``anyOf`` / ``oneOf``), ``... of one of these kinds:`` and each variant's fields."""
    options: list[dict[str, Any]] = schema.get("oneOf") or schema.get("anyOf") or []
    if "properties" not in schema and options:
        lines = ["Reply with only a JSON object of one of these kinds:"]
        nested = False
        for option in options:
            variant = _resolve(option, schema)
            lines.append(f"{variant.get('title', 'object')}:")
            fields, is_nested = _field_lines(variant, schema, indent="  ")
            lines.extend(fields)
            nested = nested or is_nested or not fields
    else:
        fields, nested = _field_lines(schema, schema)
        lines = ["Reply with only a JSON object with these fields:", *fields]
        nested = nested or not fields
    if nested:
        lines.append("JSON schema: " + json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
    return "\n".join(lines)


def _field_lines(model: dict[str, Any], root: dict[str, Any], indent: str = "") -> tuple[list[str], bool]:
    """One ``- name (type, notes): description`` line per property of ``model``, and whether
    one of them is a nested object."""
    props: dict[str, Any] = model.get("properties", {})
    required = set(model.get("required", []))
    lines = []
    nested = False
    for name, prop in props.items():
        kind, is_nested = _kind(prop, root)
        nested = nested or is_nested
        notes = _constraints(prop)
        if name not in required:
            notes.append("optional")
        head = f"{indent}- {name} ({', '.join([kind, *notes])})"
        description = prop.get("description")
        lines.append(f"{head}: {description}" if description else head)
    return lines, nested


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its ``$ref`` points to in ``root``."""
    if "$ref" not in node:
        return node
    target: Any = root
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target.get(part, {})
    resolved: dict[str, Any] = target
    return resolved


def _kind(prop: dict[str, Any], root: dict[str, Any]) -> tuple[str, bool]:
    """A short type description, and whether it is a nested object."""
    if "$ref" in prop:
        target: Any = root
        for part in prop["$ref"].removeprefix("#/").split("/"):
            target = target.get(part, {})
        return _kind(target, root) if "$ref" not in target else ("object", True)
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(v) for v in prop["enum"]), False
    if "const" in prop:
        return f"always {json.dumps(prop['const'])}", False
    if "allOf" in prop:
        return "object", True
    for key in ("anyOf", "oneOf"):
        if key in prop:
            parts = [_kind(p, root) for p in prop[key]]
            return " or ".join(k for k, _ in parts), any(n for _, n in parts)
    kind = prop.get("type", "any")
    if kind == "array":
        item, is_nested = _kind(prop.get("items", {}), root)
        return f"list of {item}", is_nested
    if kind == "object" or "properties" in prop:
        return "object", True
    return str(kind), False


def _constraints(prop: dict[str, Any]) -> list[str]:
    labels = {
        "maxLength": "at most {} characters",
        "minLength": "at least {} characters",
        "maxItems": "at most {} items",
        "minItems": "at least {} items",
        "minimum": ">= {}",
        "maximum": "<= {}",
        "exclusiveMinimum": "> {}",
        "exclusiveMaximum": "< {}",
        "pattern": "matching {}",
    }
    return [label.format(prop[key]) for key, label in labels.items() if key in prop]
