"""Chainette's one exception tree.

Mistakes in how a chain is written are raised before any request is sent; failures while a
run is going on are attached to the record they hit and written to the run's
``failures.jsonl`` (they only propagate when the run itself cannot go on)::

    ChainetteError
    ├── ChainDefinitionError        the chain as written cannot run (raised before any request)
    │   ├── TemplateError           a prompt template has a syntax error or an unknown reference
    │   ├── IncompatibleStepsError  a node's input cannot be built from what comes before it
    │   ├── UnknownEngineError      a step names an engine that is not registered
    │   └── EngineConfigError       an engine definition (YAML or register_engine) is invalid
    ├── InputError                  an input record cannot be read (malformed JSONL line, bad fields)
    ├── RunFolderError              the output folder cannot be used (exists, not writable)
    ├── LedgerError                 the request ledger (SQLite cache) cannot be opened or written
    ├── MissingDependencyError      an optional back-end is not installed (also an ImportError)
    ├── ExperimentError             a suite, a config override or an experiment cannot be used
    ├── ExecutorError               a distributed run cannot go on (cluster unreachable, workers lost)
    └── RecordError                 one record failed at one node while running
        ├── InvalidInputError       the record could not be read or does not fit the first node
        ├── RenderError             a template failed on this record's data
        ├── OutputValidationError   the model's output stayed invalid after every re-ask
        ├── EngineError             the engine failed to answer (cause kept as __cause__)
        ├── ApplyError              a Python function raised on this record
        └── BudgetExceededError     the record passed its deadline or spent its token budget

Every message says what to do next.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApplyError",
    "BudgetExceededError",
    "ChainDefinitionError",
    "ChainetteError",
    "EngineConfigError",
    "EngineError",
    "ExecutorError",
    "ExperimentError",
    "IncompatibleStepsError",
    "InputError",
    "InvalidInputError",
    "LedgerError",
    "MissingDependencyError",
    "OutputValidationError",
    "RecordError",
    "RenderError",
    "RunFolderError",
    "ServiceError",
    "ServiceFullError",
    "TemplateError",
    "TraceCancelledError",
    "TraceFailedError",
    "UnknownEngineError",
]


class ChainetteError(Exception):
    """Base class of every error Chainette raises on purpose."""


class ChainDefinitionError(ChainetteError):
    """The chain, as written, cannot run. Raised before any request is sent."""


class TemplateError(ChainDefinitionError):
    """A prompt template does not parse, or references a name that will not exist."""


class IncompatibleStepsError(ChainDefinitionError):
    """A node's declared input model cannot be built from the output that reaches it."""


class UnknownEngineError(ChainDefinitionError):
    """A step names an engine that nobody registered."""


class EngineConfigError(ChainDefinitionError):
    """An engine definition is invalid (unknown backend, bad option, malformed YAML)."""


class InputError(ChainetteError):
    """An input record cannot be read or does not fit the first node's input model."""


class RunFolderError(ChainetteError):
    """The output folder cannot be used for this run."""


class LedgerError(ChainetteError):
    """The request ledger (the SQLite cache of completed requests) cannot be opened or written."""


class MissingDependencyError(ChainetteError, ImportError):
    """An optional dependency is missing; the message names the pip extra to install."""


class ExecutorError(ChainetteError):
    """A run on a distributed executor (Ray) cannot go on: the cluster cannot be reached, or a chunk's
    worker died more often than it may be restarted. What was written is a run folder to resume."""


class ExperimentError(ChainetteError):
    """A suite file, a config override or an experiment definition cannot be used (raised before
    any request: the message names the file and line, the case or the config field)."""


class RecordError(ChainetteError):
    """One record failed at one node. Written to ``failures.jsonl``; the run goes on.

    Attributes:
        node_id: The id of the node (step or apply) where the record failed.
        record_id: The record's stable id.
        raw: The raw model output, when there was one.
        attempts: How many times the node tried this record: requests made for it, re-asks and
            an engine's transport retries included (what the message counts).
        details: Free-form extra context (rendered prompt, HTTP status, ...).
    """

    kind = "record_error"

    def __init__(
        self,
        message: str,
        *,
        node_id: str = "",
        record_id: str = "",
        raw: str | None = None,
        attempts: int = 1,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.node_id = node_id
        self.record_id = record_id
        self.raw = raw
        self.attempts = attempts
        self.details = details or {}


class InvalidInputError(RecordError):
    """An input record could not be read (malformed JSON line) or does not fit the chain's input model."""

    kind = "invalid_input"


class RenderError(RecordError):
    """A template failed on this record's data (for example an optional field that is None)."""

    kind = "render_error"


class OutputValidationError(RecordError):
    """The model's output did not validate against the step's output model after every re-ask."""

    kind = "invalid_output"


class EngineError(RecordError):
    """The engine failed to answer this request. The back-end's exception is ``__cause__``."""

    kind = "engine_error"


class ApplyError(RecordError):
    """A Python function (``apply``) raised on this record."""

    kind = "apply_error"


class ServiceError(ChainetteError):
    """A served chain (:class:`~chainette.runtime.service.ChainService`) cannot take or finish a submission."""


class ServiceFullError(ServiceError):
    """The service holds as many traces as its ``capacity`` and was told to refuse (``when_full="refuse"``)."""


class TraceFailedError(ServiceError):
    """A trace's record failed at a node (the same row is in the run's failures when recorded).

    Attributes:
        trace_id: The trace.
        node_id: Where it failed (``"input"``: the submission did not fit the chain's input model;
            ``"deadline"``: the trace ran past its deadline).
        error_type: The :class:`RecordError` kind (``invalid_output``, ``engine_error``, ...).
    """

    def __init__(self, message: str, *, trace_id: str, node_id: str, error_type: str) -> None:
        super().__init__(message)
        self.message = message
        self.trace_id = trace_id
        self.node_id = node_id
        self.error_type = error_type


class TraceCancelledError(ServiceError):
    """The trace was cancelled (by :meth:`ChainService.cancel`, or its client went away)."""


class BudgetExceededError(RecordError):
    """The record passed its deadline or spent its token budget (``record_deadline_s``,
    ``record_token_budget`` of a run, or a deadline a service set on it) before a node's work on
    it was done. ``details["limit"]`` is ``"deadline"`` or ``"token_budget"``."""

    kind = "budget_exceeded"
