"""Static checks of a chain, run before any request is sent (and by ``chainette inspect``).

Errors: a template reads a name or field that will not exist, a node's declared input cannot be
built from what reaches it, a step names an unregistered engine. Warnings: what cannot be
checked (an ``apply`` without types) or is probably a mistake (a field shadowing a step id).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import UnionType
from typing import TYPE_CHECKING, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from .._errors import ChainDefinitionError, IncompatibleStepsError, TemplateError, UnknownEngineError
from ..engines.registry import is_registered, unknown_engine_message
from .nodes import Apply, Node, Step
from .templates import Reference

if TYPE_CHECKING:
    from .chain import ChainGraph

__all__ = ["CheckReport", "Checker", "Issue", "Scope", "check_chain"]

Scope = dict[str, "type[BaseModel] | tuple[type[BaseModel], ...] | None"]
"""Names templates can read → the model of the output (a tuple: a union step's variants; None:
unknown, checked per record)."""


@dataclass(frozen=True)
class Issue:
    """One finding of the checker."""

    level: Literal["error", "warning"]
    node_id: str
    message: str
    error_type: type[ChainDefinitionError] = ChainDefinitionError


@dataclass
class CheckReport:
    """Everything the checker found. ``raise_for_errors()`` turns errors into one exception."""

    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise the first error's type with every error listed in the message."""
        errors = self.errors
        if not errors:
            return
        if len(errors) == 1:
            raise errors[0].error_type(errors[0].message)
        listing = "\n".join(f"  - {e.message}" for e in errors)
        kinds = {e.error_type for e in errors}
        cls = kinds.pop() if len(kinds) == 1 else ChainDefinitionError
        raise cls(f"The chain has {len(errors)} problems:\n{listing}")


_SCALARS: tuple[object, ...] = (str, int, float, bool, bytes)


def _unwrap_optional(annotation: object) -> object:
    """``X | None`` → ``X`` (a template reads the attribute of X, or fails on None per record)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


def check_chain(
    chain: ChainGraph, *, check_engines: bool = True, engine_known: Callable[[str], bool] | None = None
) -> CheckReport:
    """Check ``chain`` statically; see the module docstring for what is checked."""
    checker = Checker(chain, check_engines, engine_known or is_registered)
    checker.walk(chain.items, {"input": chain.input_model}, chain.input_model, prev=None)
    return checker.report


class Checker:
    """Walks the chain, letting each node check itself (:meth:`Node.check`); holds the report and
    the shared checks node kinds use (inputs, template references, engines)."""

    def __init__(
        self,
        chain: ChainGraph,
        check_engines: bool = True,
        engine_known: Callable[[str], bool] = is_registered,
    ) -> None:
        self.report = CheckReport()
        self.check_engines = check_engines
        self.engine_known = engine_known
        self.placement: dict[str, str] = self.places(chain.items)
        """Names not yet in scope → where they run (for a precise error message)."""

    def places(self, items: list[Node]) -> dict[str, str]:
        """Where the nodes of ``items`` run, by the name templates read them as (not into a
        node that opens a scope of its own: a subflow's names are its own)."""
        out: dict[str, str] = {}

        def place(node: Node, where: str | None) -> None:
            if not node.children():
                out.setdefault(node.key, where or "later in the chain")
            elif not node.opens_scope:
                for child in node.children():
                    place(child, node.placement() or where)

        for item in items:
            place(item, None)
        return out

    def add(
        self,
        level: Literal["error", "warning"],
        node: Node,
        message: str,
        error_type: type[ChainDefinitionError] = ChainDefinitionError,
    ) -> None:
        self.report.issues.append(Issue(level, node.id, message, error_type))

    def walk(
        self,
        items: list[Node],
        scope: Scope,
        current: type[BaseModel] | None,
        prev: Node | None,
        *,
        in_branch: bool = False,
    ) -> type[BaseModel] | None:
        """Check ``items`` in order; returns the model of the value that comes out of the last."""
        for node in items:
            current = node.check(self, scope, current, prev)
            prev = prev if node.passes_through else node
            if not in_branch and not node.children():  # containers release what they make visible
                self.placement.pop(node.key, None)
        return current

    def check_step(
        self, step: Step, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> None:
        if self.check_engines and not self.engine_known(step.engine_name):
            self.add(
                "error",
                step,
                unknown_engine_message(step.engine_name, f"Step {step.id!r}"),
                UnknownEngineError,
            )
        self.check_input(step, step.input_model, current, prev, reads=step.reads_input_fields)
        fields = step.input_model.model_fields
        for name in fields:
            if name in scope:
                self.add(
                    "warning",
                    step,
                    f"Step {step.id!r}: input field {name!r} of "
                    f"{step.input_model.__name__} shadows the earlier output {name!r} in templates; "
                    f"{{{{ {name} }}}} reads the field.",
                )
        for which, template in (("system_prompt", step.system_template), ("user_prompt", step.user_template)):
            for ref in template.references:
                self.check_reference(step, which, ref, scope)

    def check_reference(self, step: Step, which: str, ref: Reference, scope: Scope) -> None:
        model = step.input_model
        where = f"Step {step.id!r} {which} line {ref.lineno} uses {{{{ {ref} }}}}"
        if ref.name in model.model_fields:
            annotation = _unwrap_optional(model.model_fields[ref.name].annotation)
            if ref.attr and isinstance(annotation, type) and issubclass(annotation, BaseModel):
                self.check_attr(step, where, ref, annotation)
            elif ref.attr and annotation in _SCALARS and not hasattr(annotation, ref.attr):
                shadowed = (
                    f" The input field shadows the earlier output {ref.name!r} (the field wins in templates): "
                    "rename the step or the field."
                    if ref.name in scope
                    else ""
                )
                assert isinstance(annotation, type)
                self.add(
                    "error",
                    step,
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
                self.check_variant_attr(step, where, ref, target)
            else:
                self.check_attr(step, where, ref, target)
            return
        if ref.name in self.placement:
            self.add(
                "error",
                step,
                f"{where}, but {ref.name!r} runs {self.placement[ref.name]}. "
                "Only earlier steps and joined branch aliases can be referenced.",
                TemplateError,
            )
            return
        known = [*model.model_fields, *scope]
        close = difflib.get_close_matches(ref.name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        self.add(
            "error",
            step,
            (
                f"{where}; {model.__name__} has no field {ref.name!r} and no earlier step or alias has that "
                f"name (fields: {', '.join(model.model_fields) or 'none'}; earlier outputs: {', '.join(scope)})."
                f"{hint}"
            ),
            TemplateError,
        )

    def check_attr(self, step: Step, where: str, ref: Reference, model: type[BaseModel]) -> None:
        if ref.attr in model.model_fields:
            return
        close = difflib.get_close_matches(ref.attr or "", list(model.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.add(
            "error",
            step,
            f"{where}; {model.__name__} has no field {ref.attr!r}{hint}. "
            f"Its fields: {', '.join(model.model_fields)}.",
            TemplateError,
        )

    def check_variant_attr(
        self, step: Step, where: str, ref: Reference, variants: tuple[type[BaseModel], ...]
    ) -> None:
        """``{{ name.attr }}`` after a union step: fine when every variant has the field, an error
        when none has it, a warning when only some do (the others fail to render)."""
        having = [v.__name__ for v in variants if ref.attr in v.model_fields]
        union = " | ".join(v.__name__ for v in variants)
        if len(having) == len(variants):
            return
        if having:
            lacking = ", ".join(v.__name__ for v in variants if v.__name__ not in having)
            self.add(
                "warning",
                step,
                f"{where}; {ref.name!r} is one of {union}, and only {', '.join(having)} has the field "
                f"{ref.attr!r}: records that got {lacking} fail to render. Guard it with "
                f"{{% if {ref.name}.{ref.attr} is defined %}}, or route by variant first.",
            )
            return
        fields = sorted({f for v in variants for f in v.model_fields})
        close = difflib.get_close_matches(ref.attr or "", fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.add(
            "error",
            step,
            f"{where}; {ref.name!r} is one of {union}, and none of them has a field {ref.attr!r}{hint}. "
            f"Their fields: {', '.join(fields)}.",
            TemplateError,
        )

    def check_apply(self, node: Apply, current: type[BaseModel] | None, prev: Node | None) -> None:
        if node.input_model is None and node.output_model is None:
            self.add(
                "warning",
                node,
                f"apply {node.id!r} declares no input or output model; add type hints "
                "(def f(x: In) -> Out) or input_model=/output_model= so the chain can be checked.",
            )
        elif node.input_model is not None:
            self.check_input(node, node.input_model, current, prev)

    def check_input(
        self,
        node: Node,
        wanted: type[BaseModel] | None,
        current: type[BaseModel] | None,
        prev: Node | None,
        *,
        reads: bool = True,
    ) -> None:
        """Can ``wanted`` (the node's declared input) be built from ``current`` (what reaches it)?"""
        if wanted is None:
            return
        if current is None:
            if prev is not None:
                variants = prev.output_variants
                known = (
                    f"the output of {prev.id!r} is one of {' | '.join(v.__name__ for v in variants)}"
                    if len(variants) > 1
                    else f"the output type of {prev.id!r} is unknown"
                )
                self.add(
                    "warning",
                    node,
                    f"{node.kind} {node.id!r}: {known}, so its fit to {wanted.__name__} is checked per "
                    "record at run time.",
                )
            return
        if current is wanted or issubclass(current, wanted):
            return
        have = current.model_fields
        missing = [n for n, f in wanted.model_fields.items() if f.is_required() and n not in have]
        source = f"{prev.id!r} outputs" if prev is not None else "the chain input is"
        if missing and not reads:
            self.add(
                "warning",
                node,
                f"{node.kind} {node.id!r} declares input {wanted.__name__} but {source} {current.__name__}; "
                "its templates read no field of its input (only earlier outputs), so the record is not "
                "validated into it.",
            )
        elif missing:
            self.add(
                "error",
                node,
                (
                    f"{node.kind} {node.id!r} needs {wanted.__name__} but {source} {current.__name__}, which lacks "
                    f"required field(s) {', '.join(repr(m) for m in missing)} (it has: {', '.join(have)}). "
                    "Change the input model, or add an apply(...) step that converts between them."
                ),
                IncompatibleStepsError,
            )
