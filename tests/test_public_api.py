"""The public namespace is curated: this test fails when it changes by accident."""

import chainette

EXPECTED = [
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


def test_public_api_is_pinned() -> None:
    assert sorted(chainette.__all__) == EXPECTED


def test_every_exported_name_exists() -> None:
    missing = [name for name in chainette.__all__ if not hasattr(chainette, name)]
    assert missing == []


def test_errors_form_one_tree() -> None:
    errors = [getattr(chainette, n) for n in chainette.__all__ if n.endswith("Error")]
    assert all(issubclass(e, chainette.ChainetteError) for e in errors)
    assert issubclass(chainette.TemplateError, chainette.ChainDefinitionError)
    assert issubclass(chainette.OutputValidationError, chainette.RecordError)
    assert issubclass(chainette.MissingDependencyError, ImportError)
