"""An experiment's configuration: a Pydantic model, dotted overrides, two markers.

Markers go in ``Annotated`` (pydantic keeps them in the field's metadata)::

    class Engine(BaseModel):
        model: Annotated[str, Required("model name to run")]
        template_text: Annotated[str, Internal()] = ""

- :class:`Required`: the value must be given (in the base config or as an override); missing, the
  run is refused naming the field and how to give it (GoTaglio's ``Prompt`` marker).
- :class:`Internal`: set by the experiment's own code, not by people: hidden from
  :func:`describe_config`, refused as an override, left out of the stored config (and so of diffs).

Overrides are ``"dotted.path=value"``. The value is JSON when it parses as JSON (numbers, bools,
``null``, lists, objects), else the text itself; a field typed ``str`` always takes the text.
Pydantic then coerces it to the field's type. Below a ``dict`` field any key is accepted.

Example:
    >>> from pydantic import BaseModel
    >>> class Sampling(BaseModel):
    ...     temperature: float = 0.7
    >>> class Config(BaseModel):
    ...     sampling: Sampling = Sampling()
    >>> merge_overrides(Config, {}, ["sampling.temperature=0.2"]).sampling.temperature
    0.2
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import itertools
import json
import textwrap
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from .._errors import ExperimentError

__all__ = ["Internal", "Required", "describe_config", "merge_overrides", "public_config"]


@dataclass(frozen=True)
class Required:
    """Marks a config field that must be given: ``Annotated[str, Required("what it is")]``."""

    help: str = ""


@dataclass(frozen=True)
class Internal:
    """Marks a config field the experiment sets itself: hidden, not overridable, not stored."""


def merge_overrides(
    model_cls: type[BaseModel], base: dict[str, Any] | BaseModel | None, overrides: Sequence[str]
) -> BaseModel:
    """``base`` with each ``"a.b=value"`` of ``overrides`` applied, validated into ``model_cls``.

    Raises:
        ExperimentError: an override is malformed, names an unknown or internal field (with a
            did-you-mean), has a value of the wrong type (naming the field and the type), or a
            ``Required`` field was given nowhere.
    """
    merged = base.model_dump() if isinstance(base, BaseModel) else json.loads(json.dumps(base or {}))
    fields = dict(_walk(model_cls))
    given: set[str] = set()
    for text in overrides:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ExperimentError(
                f"Config override {text!r} is not key=value; write e.g. sampling.temperature=0.2."
            )
        info = _lookup(fields, key)
        if _is_internal(info):
            raise ExperimentError(
                f"Config field {key!r} is internal (the experiment sets it itself); it cannot be overridden."
            )
        _set(merged, key.split("."), _parse(raw, info))
        given.add(key)
    missing = [
        path
        for path, info in fields.items()
        if _marker(info, Required) is not None and not _present(merged, path.split("."))
    ]
    if missing:
        lines = [
            f"  {path}" + (f" ({help})" if (help := _required_help(fields[path])) else "") for path in missing
        ]
        raise ExperimentError(
            "Config field(s) required but not given:\n"
            + "\n".join(lines)
            + "\nGive each on the command line (-c "
            + f"{missing[0]}=VALUE) or in overrides=[...]."
        )
    try:
        return model_cls.model_validate(merged)
    except ValidationError as exc:
        raise ExperimentError(_explain(exc, fields, given)) from None


def public_config(config: BaseModel) -> dict[str, Any]:
    """The config as JSON, without its ``Internal`` fields: what is stored and compared."""
    data: dict[str, Any] = config.model_dump(mode="json")
    for path, info in _walk(type(config)):
        if _is_internal(info):
            _delete(data, path.split("."))
    return data


def describe_config(model_cls: type[BaseModel]) -> list[dict[str, Any]]:
    """One row per overridable leaf field: ``path``, ``type``, ``default``, ``required``, ``help``
    (``Internal`` fields are left out)."""
    rows = []
    for path, info in _walk(model_cls):
        if _is_internal(info) or _model_of(info) is not None:
            continue
        required = _marker(info, Required) is not None or info.is_required()
        rows.append(
            {
                "path": path,
                "type": _type_name(info.annotation),
                "default": None if info.is_required() else info.get_default(call_default_factory=True),
                "required": required,
                "help": _required_help(info) or info.description or _field_doc(model_cls, path),
            }
        )
    return rows


def _field_doc(model_cls: type[BaseModel], path: str) -> str:
    """The attribute docstring of the field at ``path`` (the string literal written under it in
    its class, the project's way of describing config fields; pydantic keeps it only with
    ``use_attribute_docstrings``), or ``""``."""
    *parents, name = path.split(".")
    owner: type[BaseModel] | None = model_cls
    for part in parents:
        info = owner.model_fields.get(part) if owner is not None else None
        owner = _model_of(info) if info is not None else None
    if owner is None:
        return ""
    for cls in owner.__mro__:  # an inherited field: the docstring is in the class that declares it
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls is not BaseModel:
            doc = _attribute_docs(cls).get(name)
            if doc:
                return doc
    return ""


@functools.cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` read from ``cls``'s source; ``{}`` when the source is not at hand."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


# -- the fields, by dotted path -------------------------------------------------------------


def _walk(model_cls: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every field, nested models' fields too, as ``(dotted path, FieldInfo)``."""
    for name, info in model_cls.model_fields.items():
        path = prefix + name
        yield path, info
        inner = _model_of(info)
        if inner is not None and not _is_internal(info):
            yield from _walk(inner, path + ".")


def _lookup(fields: dict[str, FieldInfo], key: str) -> FieldInfo | None:
    """The field ``key`` names; None below a dict field (any key goes); else refused."""
    if key in fields:
        return fields[key]
    parts = key.split(".")
    for k in range(len(parts) - 1, 0, -1):
        parent = fields.get(".".join(parts[:k]))
        if parent is not None and _is_dict(parent.annotation):
            return None
    public = [p for p, info in fields.items() if not _is_internal(info)]
    close = difflib.get_close_matches(key, public, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ExperimentError(f"Unknown config key {key!r}.{hint} Known keys: {', '.join(public)}.")


def _parse(raw: str, info: FieldInfo | None) -> Any:
    raw = raw.strip()
    if info is not None and _is_text(info.annotation):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _explain(exc: ValidationError, fields: dict[str, FieldInfo], given: set[str]) -> str:
    lines = []
    for error in exc.errors()[:5]:
        path = ".".join(str(p) for p in error["loc"])
        info = fields.get(path)
        expected = f" (expected {_type_name(info.annotation)})" if info is not None else ""
        source = "override" if path in given else "config field"
        lines.append(f"{source} {path!r}: {error['msg']}{expected}, got {error.get('input')!r}")
    return "Invalid config: " + "; ".join(lines) + ". Fix the value (-c key=value)."


# -- small helpers -------------------------------------------------------------------------


def _marker(info: FieldInfo, kind: type[Any]) -> Any:
    return next((m for m in info.metadata if isinstance(m, kind)), None)


def _is_internal(info: FieldInfo | None) -> bool:
    return info is not None and _marker(info, Internal) is not None


def _required_help(info: FieldInfo) -> str:
    marker = _marker(info, Required)
    return marker.help if marker is not None else ""


def _model_of(info: FieldInfo) -> type[BaseModel] | None:
    for arg in (info.annotation, *typing.get_args(info.annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _is_dict(annotation: Any) -> bool:
    return any(t is dict or typing.get_origin(t) is dict for t in (annotation, *typing.get_args(annotation)))


def _is_text(annotation: Any) -> bool:
    """``str``, ``str | None`` or a Literal of strings: the override's text is the value."""
    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return all(isinstance(a, str) for a in args)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return len(kinds) == 1 and _is_text(kinds[0])
    return False


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _set(data: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        inner = data.get(part)
        if not isinstance(inner, dict):
            inner = data[part] = {}
        data = inner
    data[parts[-1]] = value


def _present(data: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(data, dict) or part not in data or data[part] is None:
            return False
        data = data[part]
    return True


def _delete(data: Any, parts: list[str]) -> None:
    for part in parts[:-1]:
        if not isinstance(data, dict):
            return
        data = data.get(part)
    if isinstance(data, dict):
        data.pop(parts[-1], None)
