"""Template references checked against what a record holds: ``{{ field }}`` (the record's own
model), ``{{ step_id.field }}`` / ``{{ alias.field }}`` (earlier outputs in scope), with
did-you-mean hints. Steps and dialogues check their templates with :func:`check_reference`.
"""

from __future__ import annotations

import difflib

from pydantic import BaseModel

from .._errors import TemplateError
from .contract import Checker, Node, Scope
from .hints import unwrap_optional
from .templates import Reference

__all__ = ["check_reference"]

_SCALARS: tuple[object, ...] = (str, int, float, bool, bytes)


def check_reference(
    checker: Checker, node: Node, what: str, model: type[BaseModel], ref: Reference, scope: Scope
) -> None:
    """Can ``{{ ref }}`` in ``node``'s template ``what`` (``"Step 'qa' user_prompt"``) be read? The
    record's own fields are ``model``'s; the other names are those in ``scope``."""
    where = f"{what} line {ref.lineno} uses {{{{ {ref} }}}}"
    if ref.name in model.model_fields:
        annotation = unwrap_optional(model.model_fields[ref.name].annotation)
        if ref.attr and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_attr(checker, node, where, ref, annotation)
        elif ref.attr and annotation in _SCALARS and not hasattr(annotation, ref.attr):
            shadowed = (
                f" The input field shadows the earlier output {ref.name!r} (the field wins in templates): "
                "rename the step or the field."
                if ref.name in scope
                else ""
            )
            assert isinstance(annotation, type)
            checker.add(
                "error",
                node,
                f"{where}, but {ref.name!r} is the input field {model.__name__}.{ref.name} "
                f"({annotation.__name__}), which has no attribute {ref.attr!r}.{shadowed}",
                TemplateError,
            )
        return
    if ref.name in scope:
        target = scope[ref.name]
        if not ref.attr or target is None:
            return
        if isinstance(target, tuple):
            _check_variant_attr(checker, node, where, ref, target)
        else:
            _check_attr(checker, node, where, ref, target)
        return
    if ref.name in checker.placement:
        checker.add(
            "error",
            node,
            f"{where}, but {ref.name!r} runs {checker.placement[ref.name]}. "
            "Only earlier steps and joined branch aliases can be referenced.",
            TemplateError,
        )
        return
    known = [*model.model_fields, *scope]
    close = difflib.get_close_matches(ref.name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    checker.add(
        "error",
        node,
        (
            f"{where}; {model.__name__} has no field {ref.name!r} and no earlier step or alias has that "
            f"name (fields: {', '.join(model.model_fields) or 'none'}; earlier outputs: {', '.join(scope)})."
            f"{hint}"
        ),
        TemplateError,
    )


def _check_attr(checker: Checker, node: Node, where: str, ref: Reference, model: type[BaseModel]) -> None:
    if ref.attr in model.model_fields:
        return
    close = difflib.get_close_matches(ref.attr or "", list(model.model_fields), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    checker.add(
        "error",
        node,
        f"{where}; {model.__name__} has no field {ref.attr!r}{hint}. "
        f"Its fields: {', '.join(model.model_fields)}.",
        TemplateError,
    )


def _check_variant_attr(
    checker: Checker, node: Node, where: str, ref: Reference, variants: tuple[type[BaseModel], ...]
) -> None:
    """``{{ name.attr }}`` after a union step: fine when every variant has the field, an error
    when none has it, a warning when only some do (the others fail to render)."""
    having = [v.__name__ for v in variants if ref.attr in v.model_fields]
    union = " | ".join(v.__name__ for v in variants)
    if len(having) == len(variants):
        return
    if having:
        lacking = ", ".join(v.__name__ for v in variants if v.__name__ not in having)
        checker.add(
            "warning",
            node,
            f"{where}; {ref.name!r} is one of {union}, and only {', '.join(having)} has the field "
            f"{ref.attr!r}: records that got {lacking} fail to render. Guard it with "
            f"{{% if {ref.name}.{ref.attr} is defined %}}, or route by variant first.",
        )
        return
    fields = sorted({f for v in variants for f in v.model_fields})
    close = difflib.get_close_matches(ref.attr or "", fields, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    checker.add(
        "error",
        node,
        f"{where}; {ref.name!r} is one of {union}, and none of them has a field {ref.attr!r}{hint}. "
        f"Their fields: {', '.join(fields)}.",
        TemplateError,
    )
