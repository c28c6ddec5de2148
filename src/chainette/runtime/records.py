"""The unit that flows through a chain: one record, its current value and its history."""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..graph.hints import input_variants, type_label

__all__ = [
    "Record",
    "coerce",
    "describe_validation",
    "dump",
    "fields_of",
    "input_mismatch",
    "iteration_tag",
    "node_row",
    "owner_id",
    "request_salt",
    "type_label",
]


class Record:
    """One record in flight.

    Attributes:
        id: Stable id: derived from the input's position and content, so the same input file
            gives the same ids on every run. Fan-out children get ``<parent id>.<k>``.
        index: 0-based position of the originating input record (line number - 1 for JSONL).
        value: The current value (output of the last node): a model instance, or a dict.
        history: Outputs of earlier nodes by id (and joined branches by alias); ``"input"`` is
            the chain's input record. Templates read it as ``{{ step_id.field }}``.
        origin: Inside a branch, the id the record had when it entered the branch group.
        tags: Extra columns of the rows this record writes to node folders (inside a loop:
            ``{"<loop id>.iteration": k}``); None when there are none. Replaced, never mutated in
            place, so copies of the record may share it.
        tokens: Prompt + completion tokens of every answer this record got (sent, from the
            ledger, or shared with an identical request): what a loop's ``max_tokens`` and the
            record's ``budget`` read.
        deadline: When the record must be done, as a ``time.monotonic()`` value (None: never):
            set from the run's ``record_deadline_s`` when the record is made, or by whoever
            submits it. Nodes check it before working on the record; engine calls are cut there.
        budget: Tokens the record may spend in the whole chain (None: no limit); compared with
            ``tokens`` before each request and function call.
    """

    __slots__ = ("budget", "deadline", "history", "id", "index", "origin", "tags", "tokens", "value")

    def __init__(
        self,
        id: str,
        index: int,
        value: Any,
        history: dict[str, Any],
        origin: str | None = None,
        tags: dict[str, Any] | None = None,
        tokens: int = 0,
        deadline: float | None = None,
        budget: int | None = None,
    ):
        self.id = id
        self.index = index
        self.value = value
        self.history = history
        self.origin = origin
        self.tags = tags
        self.tokens = tokens
        self.deadline = deadline
        self.budget = budget

    def advance(self, node_id: str, value: Any) -> Record:
        """Record ``value`` as ``node_id``'s output and make it current (mutates; returns self)."""
        self.history[node_id] = value
        self.value = value
        return self

    def child(self, k: int, node_id: str, value: Any) -> Record:
        """The ``k``-th fan-out output of this record at ``node_id``."""
        history = dict(self.history)
        history[node_id] = value
        return Record(
            f"{self.id}.{k}",
            self.index,
            value,
            history,
            self.origin,
            self.tags,
            self.tokens,
            self.deadline,
            self.budget,
        )

    def sample(self, k: int) -> Record:
        """The ``k``-th sample of this record at a step with ``samples > 1`` (id ``<id>.<k>``)."""
        return Record(
            f"{self.id}.{k}",
            self.index,
            self.value,
            dict(self.history),
            self.origin,
            self.tags,
            self.tokens,
            self.deadline,
            self.budget,
        )

    def fork(self) -> Record:
        """A copy for a branch: same id, own history, remembers where it came from."""
        return Record(
            self.id,
            self.index,
            self.value,
            dict(self.history),
            self.id,
            self.tags,
            self.tokens,
            self.deadline,
            self.budget,
        )

    @property
    def limited(self) -> bool:
        """The record has a deadline or a token budget (nodes check them before working on it)."""
        return self.deadline is not None or self.budget is not None

    def __repr__(self) -> str:
        return f"Record(id={self.id!r}, index={self.index})"


def owner_id(ids: Container[str], record_id: str) -> str | None:
    """Which of ``ids`` ``record_id`` is, or was made from by fan-out (``<id>.<k>``,
    ``<id>.<route>``, nested ones too); None when none."""
    key = record_id
    while key not in ids and "." in key:
        key = key.rsplit(".", 1)[0]
    return key if key in ids else None


def iteration_tag(loop_id: str) -> str:
    """The tag (and row column) holding a record's pass number inside loop ``loop_id``."""
    return f"{loop_id}.iteration"


def request_salt(tags: dict[str, Any] | None) -> str:
    """What a record's tags add to its requests' ledger keys: the pass numbers of the loops it is
    in, except pass 0 (``"refine.iteration=2"``). Empty outside loops and in every first pass,
    so those keys are the ones ledgers already hold."""
    if not tags:
        return ""
    return ";".join(f"{k}={v}" for k, v in tags.items() if v and k.endswith(".iteration"))


def node_row(record: Record) -> dict[str, Any]:
    """The start of a row in a node's folder: the record's id, its input position (``_index``)
    and, inside a loop, its pass (the record's tags); the node's output fields follow."""
    row: dict[str, Any] = {"_id": record.id, "_index": record.index}
    if record.tags:
        row.update(record.tags)
    return row


def dump(value: Any) -> Any:
    """JSON-ready form of a value (models are dumped in JSON mode)."""
    if isinstance(value, BaseModel):
        # model_dump(mode="json") without its Python-level wrapper: flatten calls this per node per row
        return value.__pydantic_serializer__.to_python(value, mode="json")
    return value


def fields_of(value: Any) -> dict[str, Any]:
    """Top-level fields of a value for template rendering (models stay models for attribute access)."""
    if isinstance(value, BaseModel):
        extra = value.__pydantic_extra__
        return {**value.__dict__, **extra} if extra else value.__dict__
    if isinstance(value, dict):
        return value
    return {"value": value}


def coerce(model: Any, value: Any) -> Any:
    """``value`` as an instance of ``model`` (unchanged when no model or already one). ``model``
    may also be a union of models (a chain's union input): the value becomes the variant it fits,
    by the union's discriminator when it has one, else by pydantic's smart union.

    Raises:
        pydantic.ValidationError: When the value does not fit (for a union: fits no variant).
    """
    if model is None:
        return value
    if isinstance(model, type) and issubclass(model, BaseModel):
        return value if isinstance(value, model) else model.model_validate(value, from_attributes=True)
    variants = input_variants(model) or ()
    if isinstance(value, variants):
        return value
    return _adapter(model).validate_python(value, from_attributes=True)


_ADAPTERS: dict[int, tuple[Any, TypeAdapter[Any]]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    """One ``TypeAdapter`` per type (built once: building one costs far more than validating)."""
    held = _ADAPTERS.get(id(tp))
    if held is None or held[0] is not tp:
        held = _ADAPTERS[id(tp)] = (tp, TypeAdapter(tp))
    return held[1]


def input_mismatch(model: Any, exc: ValidationError) -> str:
    """Why a value does not fit ``model``: the fields, and for a union the variants tried."""
    variants = input_variants(model) or ()
    tried = f"; variants tried: {', '.join(v.__name__ for v in variants)}" if len(variants) > 1 else ""
    return describe_validation(exc) + tried


def describe_validation(exc: ValidationError, limit: int = 5) -> str:
    """``field 'a.b': message; ...`` for the first ``limit`` errors."""
    parts = [
        f"field '{'.'.join(str(p) for p in e['loc']) or '(root)'}': {e['msg']}" for e in exc.errors()[:limit]
    ]
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
