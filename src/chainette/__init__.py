"""Chainette: typed, reproducible LLM pipelines.

Define Pydantic models, ``Step`` (one LLM call bound to an output schema), ``apply`` (a Python
function), ``Branch`` (parallel work, optionally joined back), and run a ``Chain``: every run
writes ``graph.json``, per-step outputs, a flattened view, failures and metadata.
"""

from ._errors import (
    ApplyError,
    BudgetExceededError,
    ChainDefinitionError,
    ChainetteError,
    EngineConfigError,
    EngineError,
    ExecutorError,
    ExperimentError,
    IncompatibleStepsError,
    InputError,
    InvalidInputError,
    LedgerError,
    MissingDependencyError,
    OutputValidationError,
    RecordError,
    RenderError,
    RunFolderError,
    ServiceError,
    ServiceFullError,
    TemplateError,
    TraceCancelledError,
    TraceFailedError,
    UnknownEngineError,
)
from .engines.base import ChatRequest, Completion, Engine, SamplingParams
from .engines.client import EngineSession, engine, generate
from .engines.fake import FakeEngine
from .engines.registry import (
    EngineConfig,
    get_engine_config,
    list_engines,
    load_engines,
    register_engine,
    unregister_engine,
)
from .experiments import (
    Assessment,
    Case,
    Experiment,
    Internal,
    Required,
    Suite,
    exact,
    llm_judge,
    merge_overrides,
    numeric,
)
from .graph.checks import CheckReport
from .graph.dialogue import Agent, Dialogue, Transcript, Turn
from .graph.loop import Loop, LoopState, Repeat, While
from .graph.map import Collected, Map
from .graph.nodes import Apply, Branch, Step, apply
from .graph.policy import Backoff, NodePolicy
from .graph.router import Router
from .graph.show import Show
from .graph.sink import Sink
from .graph.stream_ops import shuffle, take
from .graph.subflow import Subflow
from .graph.view import RecordView
from .io.text_files import text_files
from .ledger.costs import set_discount, set_price
from .ledger.store import Ledger
from .pipeline import Chain
from .runtime.chunks import emit_chunk
from .runtime.events import Event, Middleware
from .runtime.result import RunResult
from .runtime.service import ChainService, TraceEvent, TraceHandle

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Apply",
    "ApplyError",
    "Assessment",
    "Backoff",
    "Branch",
    "BudgetExceededError",
    "Case",
    "Chain",
    "ChainDefinitionError",
    "ChainService",
    "ChainetteError",
    "ChatRequest",
    "CheckReport",
    "Collected",
    "Completion",
    "Dialogue",
    "Engine",
    "EngineConfig",
    "EngineConfigError",
    "EngineError",
    "EngineSession",
    "Event",
    "ExecutorError",
    "Experiment",
    "ExperimentError",
    "FakeEngine",
    "IncompatibleStepsError",
    "InputError",
    "Internal",
    "InvalidInputError",
    "Ledger",
    "LedgerError",
    "Loop",
    "LoopState",
    "Map",
    "Middleware",
    "MissingDependencyError",
    "NodePolicy",
    "OutputValidationError",
    "RecordError",
    "RecordView",
    "RenderError",
    "Repeat",
    "Required",
    "Router",
    "RunFolderError",
    "RunResult",
    "SamplingParams",
    "ServiceError",
    "ServiceFullError",
    "Show",
    "Sink",
    "Step",
    "Subflow",
    "Suite",
    "TemplateError",
    "TraceCancelledError",
    "TraceEvent",
    "TraceFailedError",
    "TraceHandle",
    "Transcript",
    "Turn",
    "UnknownEngineError",
    "While",
    "__version__",
    "apply",
    "emit_chunk",
    "engine",
    "exact",
    "generate",
    "get_engine_config",
    "list_engines",
    "llm_judge",
    "load_engines",
    "merge_overrides",
    "numeric",
    "register_engine",
    "set_discount",
    "set_price",
    "shuffle",
    "take",
    "text_files",
    "unregister_engine",
]
