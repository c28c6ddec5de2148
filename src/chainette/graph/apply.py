"""``Apply`` / :func:`apply`: a Python function (sync or async) as a chain node. A kind over the
node contract (``graph.contract``); the runtime's apply runner calls the function.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from .._errors import ChainDefinitionError
from .contract import Checker, Node, Scope
from .hints import models_from_hints, return_variants, wants_record
from .ids import check_id
from .policy import NodePolicy, check_policy

__all__ = ["Apply", "apply"]


class Apply(Node):
    """A Python function applied to each record, in order. Use :func:`apply` to build one.

    The function receives the record's current value (a model instance, or a dict when nothing
    declared a model), and, if it takes a second parameter, a :class:`RecordView` of the record
    (earlier outputs by id / alias, the chain's input, the record's id), and returns one value, a list of values (fan-out: each becomes its own
    record with id ``<parent>.<k>``; an empty list filters the record out) or ``None`` (filter).
    Filtered records are counted in ``metadata.json``; they are not failures.

    ``policy`` (a :class:`~chainette.graph.policy.NodePolicy`) bounds each call in time
    (``timeout_s``: a sync function then runs in a worker thread, abandoned when it runs over),
    retries a call that raised or ran over (``retries``, ``backoff``), and chooses what is
    validated: the value into ``input_model`` (``"input"``), what the function returns into
    ``output_model`` (``"output"``), both (default) or neither (``"none"``: values pass as they are).
    """

    kind = "apply"

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        id: str | None = None,
        name: str | None = None,
        input_model: type[BaseModel] | None = None,
        output_model: type[BaseModel] | None = None,
        write: bool = False,
        policy: NodePolicy | None = None,
    ) -> None:
        if not callable(fn):
            raise ChainDefinitionError(f"apply() needs a callable, got {fn!r}.")
        fn_name = getattr(fn, "__name__", type(fn).__name__)
        self.fn = fn
        self.id = check_id(id or re.sub(r"\W", "_", fn_name), "apply")
        self.policy = check_policy(policy, f"apply {self.id!r}")
        self.name = name or fn_name
        hinted_in, hinted_out = models_from_hints(fn)
        self._hinted_variants = return_variants(fn) if output_model is None and hinted_out is None else ()
        self.wants_record = wants_record(fn)
        """The function takes a second parameter: it is passed a :class:`RecordView`."""
        self.input_model = input_model or hinted_in
        self.output_model = output_model or hinted_out
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self.write = write
        self.fusable = not self.is_async

    @property
    def output_variants(self) -> tuple[type[BaseModel], ...]:
        """``(output_model,)``, or the models a ``-> A | B`` return hint names."""
        return (self.output_model,) if self.output_model is not None else self._hinted_variants

    def check_self(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> None:
        """Its declared input fits what reaches it; without declared models, a warning that it
        cannot be checked."""
        if self.input_model is None and self.output_model is None:
            checker.add(
                "warning",
                self,
                f"apply {self.id!r} declares no input or output model; add type hints "
                "(def f(x: In) -> Out) or input_model=/output_model= so the chain can be checked.",
            )
        elif self.input_model is not None:
            checker.check_input(self, self.input_model, current, prev)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "function": f"{getattr(self.fn, '__module__', '?')}.{self.name}"}


def apply(
    fn: Callable[..., Any],
    *,
    id: str | None = None,
    name: str | None = None,
    input_model: type[BaseModel] | None = None,
    output_model: type[BaseModel] | None = None,
    write: bool = False,
    policy: NodePolicy | None = None,
) -> Apply:
    """Wrap a Python function (sync or async) as a chain node.

    Input and output models are read from the function's type hints when not given; ``policy``
    (a :class:`~chainette.graph.policy.NodePolicy`) bounds, retries and validates each call.

    Example:
        >>> from pydantic import BaseModel
        >>> class Text(BaseModel):
        ...     text: str
        >>> def shout(t: Text) -> Text:
        ...     return Text(text=t.text.upper())
        >>> node = apply(shout)
        >>> node.id, node.output_model is Text
        ('shout', True)
    """
    return Apply(
        fn, id=id, name=name, input_model=input_model, output_model=output_model, write=write, policy=policy
    )
