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
    """``Reply with only a JSON object with these fields: ...`` for ``schema``."""
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    lines = ["Reply with only a JSON object with these fields:"]
    nested = False
    for name, prop in props.items():
        kind, is_nested = _kind(prop, schema)
        nested = nested or is_nested
        notes = _constraints(prop)
        if name not in required:
            notes.append("optional")
        head = f"- {name} ({', '.join([kind, *notes])})"
        description = prop.get("description")
        lines.append(f"{head}: {description}" if description else head)
    if nested or not props:
        lines.append("JSON schema: " + json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
    return "\n".join(lines)


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
