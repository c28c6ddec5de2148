"""``Loop`` (and its two faces ``While`` and ``Repeat``): run a body of nodes over each record
again and again, feeding each pass's output into the next, until a condition, a count or a
budget says stop (BatchFactory's ``While`` / ``Repeat``, PenguiFlow's hop, token and deadline
budgets).

A pass runs the body once on a record. Before each pass the loop asks, in this order: was it
asked for ``times`` passes and has it run them (``"times"``); is ``condition`` false
(``"condition"``); is the record at the iteration cap, out of hops, out of tokens or past its
deadline (a *limit*: ``"max_iterations"``, ``"max_hops"``, ``"max_tokens"``, ``"deadline"``).
After each pass it asks ``until`` (``"until"``). What a limit does is ``on_limit``'s choice:
the record goes on with its last value (``"continue"``) or fails (``"fail"``).

The record's own limits across the chain (``Record.deadline``, ``Record.budget``: the run's
``record_deadline_s`` / ``record_token_budget``) end the loop too, as ``"deadline"`` /
``"max_tokens"``; ``on_budget`` chooses between ending the loop with the last completed pass
(``"stop"``) and failing the record (``"fail"``).

Inside the body the outputs of the previous pass are in the history by id (the last pass wins),
``{{ <loop id>.iteration }}`` is the current pass (0-based) and ``<loop id>.carry`` the value the
pass started from (the state carried from pass to pass); after the loop ``<loop id>`` holds the
record's :class:`LoopState` (passes, stop reason, hops, tokens).

``max_hops``, ``max_tokens`` and ``deadline_s`` may come from each record: a field name or a
function of the record (``graph/loop_limits.py``), read when the record enters the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, get_args

import jinja2
from jinja2 import nodes as jnodes
from pydantic import BaseModel, Field

from .._errors import ChainDefinitionError, IncompatibleStepsError
from .contract import Checker, Node, Scope, as_node
from .hints import wants_record
from .ids import check_id
from .issues import CheckReport, Issue
from .loop_limits import RecordLimit, limit_problem
from .step import Step
from .templates import Reference

__all__ = ["DEFAULT_MAX_ITERATIONS", "Loop", "LoopState", "Repeat", "StopReason", "While"]

DEFAULT_MAX_ITERATIONS = 10
"""The iteration cap of a loop given neither ``times`` nor ``max_iterations``: a loop always ends."""

StopReason = Literal["times", "condition", "until", "max_iterations", "max_hops", "max_tokens", "deadline"]
LIMITS: tuple[str, ...] = ("max_iterations", "max_hops", "max_tokens", "deadline")
"""The stop reasons that are limits (``on_limit`` decides what happens to the record)."""
OnLimit = Literal["continue", "fail"]
OnBudget = Literal["stop", "fail"]


class LoopState(BaseModel):
    """Where a record stands in a loop: ``history[<loop id>]``, read in templates as
    ``{{ <loop id>.iteration }}`` inside the body and ``{{ <loop id>.stop_reason }}`` after it.

    It holds no wall-clock value, so a resumed run writes the same rows as an uninterrupted one.

    Example:
        >>> LoopState(iteration=2, iterations=3, stop_reason="until", hops=6, tokens=410).stop_reason
        'until'
    """

    iteration: int = 0
    """0-based index of the current pass (inside the body) or of the last pass (after the loop)."""
    iterations: int = 0
    """Passes completed."""
    stop_reason: StopReason | None = None
    """Why the loop ended for this record; None while it runs."""
    hops: int = 0
    """Body nodes run on the record: each pass is as many hops as the body has top-level nodes."""
    tokens: int = 0
    """Prompt + completion tokens of every answer the record got inside the loop (answers from
    the ledger or shared with an identical request included, so a rerun decides the same way)."""
    carry: Any = Field(default=None, exclude=True)
    """Inside the body: the value the current pass started from (the previous pass's output; the
    loop's input on the first pass), so a node late in the body can read the state it carries
    on: ``record["<loop id>"].carry`` in Python, ``{{ <loop id>.carry.field }}`` in templates.
    None after the loop; never written to rows."""


class Loop(Node):
    """Run ``body`` over each record repeatedly; what the last pass produced goes on.

    Args:
        id: The loop's id: ``{{ id.iteration }}`` inside the body, ``{{ id.stop_reason }}`` (and
            the other :class:`LoopState` fields) after it; the flattened rows get ``id.*`` columns.
        body: A node or a list of nodes (an inner list of branches is a parallel group). Each
            pass gets the previous pass's output (the first pass, the loop's input), so the
            body's last output must fit its first node's input. Every pass's rows in the step
            folders carry an ``<id>.iteration`` column, and each pass's requests have their own
            ledger keys (a prompt repeated in two passes is sent twice, and a rerun sends none).
        condition: ``fn(value)`` or ``fn(value, record)`` checked before each pass: stop when
            false (a record for which it is false on entry runs no pass and goes on unchanged).
        until: ``fn(value)`` or ``fn(value, record)`` checked after each pass: stop when true.
        times: Run exactly this many passes (fewer only if ``condition`` or ``until`` stops it).
        max_iterations: The iteration cap (default :data:`DEFAULT_MAX_ITERATIONS` unless
            ``times`` is given): a record that still wants to loop after it hits the limit
            ``"max_iterations"``.
        max_hops: Body nodes a record may run inside the loop; one hop is one top-level body
            node run on the record, so a pass costs ``len(body)`` hops. A pass that would go
            over the budget is not started (limit ``"max_hops"``). This and ``max_tokens`` /
            ``deadline_s`` may also be per record: a field name (``max_hops="hops"``, checked
            against the model entering the loop before any request) or ``fn(value)`` /
            ``fn(value, record)``, read when the record enters the loop (None: no such limit for
            that record; a missing field or a value that is no valid limit fails the record).
        max_tokens: Prompt + completion tokens a record may spend inside the loop, counting
            answers from the ledger or shared with an identical request as well (so a rerun
            stops at the same pass). Checked before each pass: the loop stops once the record
            has spent this many or more (a pass is never cut short, so the last one may go over).
        deadline_s: Seconds of wall clock since the record entered the loop, checked before each
            pass. The one budget a rerun may decide differently: it depends on the time taken.
        on_limit: When a limit ends the loop: ``"continue"`` (default) passes the record on with
            its last value and the reason in ``<id>.stop_reason``; ``"fail"`` writes it to
            failures.jsonl naming the loop, the limit and the pass.
        on_budget: When the record's own deadline or token budget (the run's
            ``record_deadline_s`` / ``record_token_budget``) is reached inside the loop:
            ``"stop"`` (default) ends the loop with the last completed pass's value and stop
            reason ``"deadline"`` / ``"max_tokens"`` (a pass cut short by the limit is dropped;
            the record then fails at the next node that would work on it, unless the loop is the
            last); ``"fail"`` writes it to failures.jsonl as a ``BudgetExceededError``.
            ``on_limit`` is for the loop's own limits only.
        name: Display name (defaults to ``id``).

    Example:
        >>> from pydantic import BaseModel
        >>> from chainette import Loop, apply
        >>> class Draft(BaseModel):
        ...     text: str
        >>> def grow(d: Draft) -> Draft:
        ...     return Draft(text=d.text + "!")
        >>> loop = Loop("polish", apply(grow), until=lambda d: len(d.text) > 8, max_iterations=5)
        >>> loop.cap, [n.id for n in loop.body]
        (5, ['grow'])
    """

    kind = "loop"
    counts_records = True

    def __init__(
        self,
        id: str,
        body: Node | Sequence[Any],
        *,
        condition: Callable[..., Any] | None = None,
        until: Callable[..., Any] | None = None,
        times: int | None = None,
        max_iterations: int | None = None,
        max_hops: int | str | Callable[..., Any] | None = None,
        max_tokens: int | str | Callable[..., Any] | None = None,
        deadline_s: float | str | Callable[..., Any] | None = None,
        on_limit: OnLimit = "continue",
        on_budget: OnBudget = "stop",
        name: str | None = None,
    ) -> None:
        self.id = check_id(id, "Loop")
        self.name = name or id
        items = list(body) if isinstance(body, (list, tuple)) else [body]
        if not items:
            raise ChainDefinitionError(f"Loop {id!r} has an empty body; give it a node or a list of nodes.")
        self.body: list[Node] = [as_node(item, f"Loop {id!r} body[{i}]") for i, item in enumerate(items)]
        for label, fn in (("condition", condition), ("until", until)):
            if fn is not None and not callable(fn):
                raise ChainDefinitionError(
                    f"Loop {id!r}: {label} must be a function of the value (or of the value and the "
                    f"record), got {fn!r}."
                )
        for label, count in (("times", times), ("max_iterations", max_iterations)):
            if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
                raise ChainDefinitionError(f"Loop {id!r}: {label} must be an integer >= 1, got {count!r}.")
        self.per_record: dict[str, RecordLimit] = {}
        """The limits read from each record, by name (``max_hops``, ``max_tokens``, ``deadline_s``)."""
        for label, limit in (("max_hops", max_hops), ("max_tokens", max_tokens), ("deadline_s", deadline_s)):
            if (isinstance(limit, str) and limit.isidentifier()) or callable(limit):
                self.per_record[label] = RecordLimit(id, label, limit)
            elif limit is not None and (problem := limit_problem(label, limit)) is not None:
                raise ChainDefinitionError(
                    f"Loop {id!r}: {label} {problem}. Give a number, a field name of the record or a "
                    "function of the record."
                )
        if times is not None and max_iterations is not None:
            raise ChainDefinitionError(
                f"Loop {id!r}: times={times} already bounds the passes; leave out max_iterations."
            )
        if isinstance(max_hops, int) and max_hops < len(self.body):
            raise ChainDefinitionError(
                f"Loop {id!r}: max_hops={max_hops} is less than one pass ({len(self.body)} body nodes, "
                "one hop each), so no pass could run. Raise max_hops."
            )
        if on_limit not in get_args(OnLimit):
            raise ChainDefinitionError(
                f"Loop {id!r}: on_limit must be 'continue' or 'fail', got {on_limit!r}."
            )
        if on_budget not in get_args(OnBudget):
            raise ChainDefinitionError(f"Loop {id!r}: on_budget must be 'stop' or 'fail', got {on_budget!r}.")
        self.on_budget: OnBudget = on_budget
        self.condition = condition
        self.until = until
        self.condition_wants_record = condition is not None and wants_record(condition)
        self.until_wants_record = until is not None and wants_record(until)
        self.times = times
        self.max_iterations = max_iterations
        self.cap = times if times is not None else (max_iterations or DEFAULT_MAX_ITERATIONS)
        """Passes at most: ``times``, else ``max_iterations``, else the default cap."""
        self.max_hops = max_hops if isinstance(max_hops, int) else None
        self.max_tokens = max_tokens if isinstance(max_tokens, int) else None
        self.deadline_s = deadline_s if isinstance(deadline_s, int | float) else None
        """The loop-wide limits (None where the limit is per record, see :attr:`per_record`)."""
        self.on_limit: OnLimit = on_limit
        self.input_model = self.body[0].input_model
        self.output_model = self.body[-1].output_model

    def children(self) -> Sequence[Node]:
        return self.body

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        """Checks the body where the previous pass's outputs and the loop's state are visible,
        then that what a pass ends with can start the next; after the loop the body's outputs
        and ``<id>`` are in ``scope``."""
        for limit in self.per_record.values():
            problem = limit.missing_field(current)
            if problem is not None:
                checker.add("error", self, problem)
        inner = dict(scope)
        inner[self.id] = LoopState
        probe = dict(inner)
        _silently(checker, lambda: checker.walk(self.body, probe, current, prev, in_branch=True))
        previous_pass = {k: v for k, v in probe.items() if k not in inner}
        inner.update(previous_pass)
        start = len(checker.report.issues)
        out = checker.walk(self.body, inner, current, prev, in_branch=True)
        if out is not None and out is not current:
            first_pass = {i.message for i in checker.report.issues[start:]}
            again = dict(inner)
            found = _silently(
                checker, lambda: checker.walk(self.body, again, out, self.body[-1], in_branch=True)
            )
            for issue in found:  # what only the later passes meet
                if issue.error_type is IncompatibleStepsError and issue.message not in first_pass:
                    checker.add(
                        "error",
                        self,
                        f"Loop {self.id!r}: each pass after the first starts from the previous pass's output; "
                        f"{issue.message}",
                        IncompatibleStepsError,
                    )
        if (
            self.condition is not None
            and current is not None
            and out is not None
            and not issubclass(current, out)
        ):
            checker.add(
                "warning",
                self,
                f"Loop {self.id!r}: a record whose condition is false on entry runs no pass and goes on with "
                f"its input ({current.__name__}), not the body's output ({out.__name__}); later nodes are "
                "checked against the body's output.",
            )
        self._check_guards(checker, previous_pass)
        for node in self.walk():
            if node is not self:
                checker.placement.pop(node.key, None)
        scope.update(previous_pass)
        scope[self.key] = LoopState
        checker.placement.pop(self.key, None)
        return out

    def _check_guards(self, checker: Checker, previous_pass: Scope) -> None:
        """A step that reads an output the body makes at or after it reads the previous pass's,
        which does not exist in the first pass: unless guarded, every record fails there. (A
        nested loop checks its own body.)"""
        made_before: set[str] = {self.id}
        for node in _own_nodes(self.body):
            if isinstance(node, Step):
                for template in (node.system_template, node.user_template):
                    first_use: dict[str, Reference] = {}
                    for ref in template.references:
                        first_use.setdefault(ref.name, ref)
                    for name, ref in first_use.items():
                        late = name in previous_pass and name not in made_before
                        if late and not _guarded(template.source, name):
                            checker.add(
                                "warning",
                                node,
                                f"Step {node.id!r} reads {{{{ {ref} }}}}, which loop {self.id!r} sets in "
                                "the previous pass: it is undefined in the first pass (the record would "
                                f"fail there). Guard it: {{% if {name} is defined %}}...{{% endif %}}.",
                            )
            done = node.walk() if isinstance(node, Loop) else (node,)  # a nested loop: all it makes
            made_before.update(name for n in done for name in n.defines())

    def layout(self, previous: list[str], out: dict[str, list[dict[str, Any]]]) -> list[str]:
        out["nodes"].append(self.describe())
        out["edges"].extend({"from": p, "to": self.id} for p in previous)
        start = len(out["nodes"])
        last = [self.id]
        for node in self.body:
            last = node.layout(last, out)
        for entry in out["nodes"][start:]:
            if entry.get("parent") is None and entry.get("branch") is None:  # the innermost container wins
                entry["parent"] = self.id
        out["edges"].extend({"from": end, "to": self.id, "label": "repeat"} for end in last)
        return last

    def summary(self) -> str:
        """How the loop ends, in words: ``3 times``, ``while is_short, at most 10``..."""
        parts = [f"{self.times} times"] if self.times is not None else []
        for word, fn in (("while", self.condition), ("until", self.until)):
            if fn is not None:
                parts.append(f"{word} {getattr(fn, '__name__', 'function')}")
        if self.times is None:
            parts.append(f"at most {self.cap}")
        for label, key, value in (
            ("hops", "max_hops", self.max_hops),
            ("tokens", "max_tokens", self.max_tokens),
            ("s", "deadline_s", self.deadline_s),
        ):
            if key in self.per_record:
                parts.append(f"≤ {self.per_record[key].describe()} {label}")
            elif value is not None:
                parts.append(f"≤ {value} {label}")
        return ", ".join(parts)

    def describe(self) -> dict[str, Any]:
        def fn_name(fn: Callable[..., Any] | None) -> str | None:
            return None if fn is None else getattr(fn, "__name__", "function")

        return {
            **super().describe(),
            "body": [n.id for n in self.body],
            "summary": self.summary(),
            "condition": fn_name(self.condition),
            "until": fn_name(self.until),
            "times": self.times,
            "max_iterations": self.cap,
            **{
                key: self.per_record[key].describe() if key in self.per_record else getattr(self, key)
                for key in ("max_hops", "max_tokens", "deadline_s")
            },
            "on_limit": self.on_limit,
            "on_budget": self.on_budget,
        }


class While(Loop):
    """A :class:`Loop` that runs while ``condition(value)`` (or ``condition(value, record)``) is
    true, checked before each pass, at most ``max_iterations`` passes (default 10).

    Example:
        >>> from pydantic import BaseModel
        >>> from chainette import While, apply
        >>> class Count(BaseModel):
        ...     n: int
        >>> def inc(c: Count) -> Count:
        ...     return Count(n=c.n + 1)
        >>> While("count", lambda c: c.n < 3, apply(inc)).cap
        10
    """

    def __init__(self, id: str, condition: Callable[..., Any], body: Node | Sequence[Any], **options: Any):
        super().__init__(id, body, condition=condition, **options)


class Repeat(Loop):
    """A :class:`Loop` that runs its body ``times`` passes (``until=`` or ``condition=`` may end
    it sooner).

    Example:
        >>> from pydantic import BaseModel
        >>> from chainette import Repeat, apply
        >>> class Count(BaseModel):
        ...     n: int
        >>> def inc(c: Count) -> Count:
        ...     return Count(n=c.n + 1)
        >>> Repeat("thrice", 3, apply(inc)).summary()
        '3 times'
    """

    def __init__(self, id: str, times: int, body: Node | Sequence[Any], **options: Any):
        super().__init__(id, body, times=times, **options)


def _own_nodes(nodes: Sequence[Node]) -> Iterator[Node]:
    """``nodes`` and what they hold, depth first, without entering nested loops."""
    for node in nodes:
        yield node
        if not isinstance(node, Loop):
            yield from _own_nodes(node.children())


def _silently(checker: Checker, walk: Callable[[], object]) -> list[Issue]:
    """Run a check walk whose findings are not the chain's (a probe); return them instead."""
    report, placement = checker.report, dict(checker.placement)
    checker.report = CheckReport()
    try:
        walk()
        return list(checker.report.issues)
    finally:
        checker.report, checker.placement = report, placement


def _guarded(source: str, name: str) -> bool:
    """The template tests ``name is defined`` (or gives it a ``default``) somewhere."""
    try:
        ast = jinja2.Environment().parse(source)
    except jinja2.TemplateSyntaxError:
        return False
    for test in ast.find_all(jnodes.Test):
        if (
            test.name in ("defined", "undefined")
            and isinstance(test.node, jnodes.Name)
            and test.node.name == name
        ):
            return True
    for flt in ast.find_all(jnodes.Filter):
        target = flt.node
        while isinstance(target, jnodes.Getattr):
            target = target.node
        if flt.name in ("default", "d") and isinstance(target, jnodes.Name) and target.name == name:
            return True
    return False
