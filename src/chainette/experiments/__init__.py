"""Experiments: a chain run over a suite of cases, each case assessed, the results kept.

``suite.py`` (cases from JSONL / YAML), ``config.py`` (typed config, dotted overrides,
``Required`` / ``Internal``), ``assess.py`` (assessors), ``experiment.py`` (``Experiment``: build,
run, assess), ``record.py`` (``experiment.json``). Sits on ``runtime``: the chain runs as any
chain does, into a normal run folder, and the experiment adds ``experiment.json`` to it.
"""

from .assess import Assessment, Assessor, exact, function, llm_judge, numeric
from .config import Internal, Required, describe_config, merge_overrides, public_config
from .experiment import Experiment
from .record import CaseResult, ExperimentResult
from .suite import Case, Suite, load_suite

__all__ = [
    "Assessment",
    "Assessor",
    "Case",
    "CaseResult",
    "Experiment",
    "ExperimentResult",
    "Internal",
    "Required",
    "Suite",
    "describe_config",
    "exact",
    "function",
    "llm_judge",
    "load_suite",
    "merge_overrides",
    "numeric",
    "public_config",
]
