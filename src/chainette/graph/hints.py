"""What a function's signature and type hints say (for ``apply``, routers, loops, maps,
dialogues) and what an annotation names (``Out | None``, ``A | B``, ``list[Out]``).

Imports nothing of the graph but :class:`~chainette.graph.view.RecordView`: every node kind may use it.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from .view import RecordView

__all__ = [
    "input_variants",
    "models_from_hints",
    "return_variants",
    "signature_target",
    "type_label",
    "unwrap_optional",
    "wants_record",
]


def signature_target(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What to read hints and parameters from: the function, or a callable object's ``__call__``."""
    return fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004


def wants_record(fn: Callable[..., Any]) -> bool:
    """``def f(value, record)``: a second positional parameter without a default (or annotated
    ``RecordView``) receives the record's context."""
    target = signature_target(fn)
    try:
        params = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):  # builtins without a signature: one argument
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        return False
    second = positional[1]
    hinted = second.annotation in (RecordView, "RecordView")
    return hinted or second.default is inspect.Parameter.empty


def unwrap_optional(annotation: object) -> object:
    """``X | None`` → ``X`` (a template reads the attribute of X, or fails on None per record)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


def return_variants(fn: Callable[..., Any]) -> tuple[type[BaseModel], ...]:
    """The models ``def f(x) -> A | B`` may return, when there are several (a router keyed by
    model classes after it checks that each has a route)."""
    try:
        hint = typing.get_type_hints(signature_target(fn)).get("return")
    except Exception:  # unresolved forward references: no variants known
        return ()
    models = _models_in(hint)
    return models if len(models) > 1 else ()


def models_from_hints(fn: Callable[..., Any]) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """Input/output models from ``def f(x: In) -> Out | list[Out] | None`` hints, when present."""
    target = signature_target(fn)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolved forward references: hints are optional, fall back to none
        return None, None
    params = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    first = hints.get(params[0].name) if params else None
    return _as_model(first), _as_model(hints.get("return"))


def _as_model(hint: Any) -> type[BaseModel] | None:
    models = _models_in(hint)
    return models[0] if len(models) == 1 else None


def _models_in(hint: Any) -> tuple[type[BaseModel], ...]:
    """The model classes a hint names, in order: ``Out``, ``Out | None``, ``list[Out]`` → ``(Out,)``;
    ``A | B`` (or ``list[A | B]``) → ``(A, B)``; anything else → ``()``."""
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return (hint,)
    if get_origin(hint) is None:
        return ()
    found = [m for a in get_args(hint) if a is not type(None) for m in _models_in(a)]
    return tuple(dict.fromkeys(found))


def input_variants(tp: Any) -> tuple[type[BaseModel], ...] | None:
    """The model classes an input type admits: ``A`` → ``(A,)``; ``A | B``, ``Union[A, B]`` and
    ``Annotated[A | B, Field(discriminator=...)]`` → ``(A, B)``; None for anything else (a union
    holding a non-model, ``list[A]``...)."""
    if get_origin(tp) is Annotated:
        return input_variants(get_args(tp)[0])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return (tp,)
    if get_origin(tp) not in (Union, UnionType):
        return None
    args = get_args(tp)
    if not args or not all(isinstance(a, type) and issubclass(a, BaseModel) for a in args):
        return None
    return tuple(args)


def type_label(tp: Any) -> str:
    """A model's name, or a union's variants as ``A | B`` (for messages)."""
    variants = input_variants(tp)
    if variants:
        return " | ".join(v.__name__ for v in variants)
    return getattr(tp, "__name__", None) or str(tp)
