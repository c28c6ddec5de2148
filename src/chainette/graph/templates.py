"""Jinja2 prompt templates: strict rendering and static reference extraction.

Undefined names are errors, never empty strings. ``references()`` lists every top-level name a
template reads and the attribute it reads on it (``{{ qa.answer }}`` → ``("qa", "answer")``), so
the chain can be checked before any request is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.runtime import new_context

__all__ = ["Reference", "Template"]

_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    trim_blocks=False,
)


@dataclass(frozen=True)
class Reference:
    """One name a template reads, and the attribute it reads on that name (if any)."""

    name: str
    attr: str | None
    lineno: int

    def __str__(self) -> str:
        return f"{self.name}.{self.attr}" if self.attr else self.name


class Template:
    """A compiled prompt template.

    Raises:
        jinja2.TemplateSyntaxError: When the source does not parse (the caller wraps it).
    """

    __slots__ = ("_compiled", "_constant", "_globals", "_parts", "references", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        ast = _ENV.parse(source)
        self._compiled = _ENV.from_string(ast)
        self.references = _references(ast)
        # Text without Jinja syntax renders to itself; no need to run the template per record.
        self._constant = source if not any(tag in source for tag in ("{{", "{%", "{#")) else None
        # Jinja merges its globals (a ChainMap) into every context, which costs more than the
        # render itself for short prompts: merge them into a plain dict once instead.
        self._globals = dict(self._compiled.globals)
        # Text and plain ``{{ name }}`` / ``{{ name.attr }}`` only (most prompts): rendered by
        # joining strings, without building a Jinja context per record.
        self._parts = _substitutions(ast)

    def __reduce__(self) -> tuple[type[Template], tuple[str]]:
        """Pickled as its source and compiled again where it is loaded (a Ray worker): Jinja's
        compiled templates do not pickle."""
        return (Template, (self.source,))

    @property
    def constant(self) -> str | None:
        """The text, when the template has no Jinja syntax (it renders to itself); else None."""
        return self._constant

    def render(self, context: Mapping[str, Any]) -> str:
        """Render with ``context``; an undefined name raises ``jinja2.UndefinedError``."""
        if self._constant is not None:
            return self._constant
        if self._parts is not None:
            try:
                return _substitute(self._parts, context)
            except Exception:  # a missing name or attribute: Jinja raises the proper error
                pass
        compiled = self._compiled
        ctx = new_context(
            _ENV, compiled.name, compiled.blocks, {**self._globals, **context}, True, self._globals
        )
        try:
            return _ENV.concat(compiled.root_render_func(ctx))
        except Exception:
            _ENV.handle_exception()  # re-raises with the template's line numbers, as Template.render does
            raise


_Part = str | tuple[str, str | None]
"""Literal text, or ``(name, attr)`` for ``{{ name }}`` (attr None) / ``{{ name.attr }}``."""


def _substitutions(ast: nodes.Template) -> tuple[_Part, ...] | None:
    """The template as literal text and plain substitutions, or None when it holds anything
    else (filters, tests, blocks, expressions)."""
    if len(ast.body) != 1 or not isinstance(ast.body[0], nodes.Output):
        return None
    parts: list[_Part] = []
    for node in ast.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append(node.data)
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            parts.append((node.name, None))
        elif (
            isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.ctx == "load"
        ):
            parts.append((node.node.name, node.attr))
        else:
            return None
    return tuple(parts)


def _substitute(parts: tuple[_Part, ...], context: Mapping[str, Any]) -> str:
    """What Jinja renders for ``parts``: ``str()`` of each value, ``name.attr`` looked up as an
    attribute, then as an item (Jinja's ``getattr``). Raises on a missing name or attribute."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        name, attr = part
        value = context[name]
        if attr is not None:
            try:
                value = getattr(value, attr)
            except AttributeError:
                value = value[attr]
        out.append(value if isinstance(value, str) else str(value))
    return "".join(out)


def _references(ast: nodes.Template) -> tuple[Reference, ...]:
    undeclared = meta.find_undeclared_variables(ast)
    seen: dict[tuple[str, str | None], Reference] = {}
    attr_parents: set[int] = set()
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, (nodes.Getattr, nodes.Getitem))
        target = node.node
        if not (isinstance(target, nodes.Name) and target.ctx == "load" and target.name in undeclared):
            continue
        attr: str | None
        if isinstance(node, nodes.Getattr):
            attr = node.attr
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            attr = node.arg.value
        else:
            continue
        attr_parents.add(id(target))
        seen.setdefault((target.name, attr), Reference(target.name, attr, node.lineno))
    for name_node in ast.find_all(nodes.Name):
        if name_node.ctx == "load" and name_node.name in undeclared and id(name_node) not in attr_parents:
            seen.setdefault((name_node.name, None), Reference(name_node.name, None, name_node.lineno))
    return tuple(seen.values())
