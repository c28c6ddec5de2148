"""A finished run in MLflow: ``pip install 'chainette[mlflow]'`` (mlflow-skinny).

:func:`log_run` makes one MLflow run from a Chainette run folder: its **params** (chain, run
config, each engine's backend and model), its **metrics** (counts, tokens, requests sent, ledger
hits, cost, duration, and per node its counts and records per second) and the **run folder** as
artefacts (``graph.json``, ``metadata.json``, ``failures.jsonl``, ``flattened/``, the step
folders). :class:`MlflowMiddleware` does the same when a run finishes.

Everything is read from the run folder (``metadata.json`` and ``graph.json``), so a run logged
later, from another process, gives the same MLflow run.

Example:
    >>> result = chain.run("inputs.jsonl", "runs/qa")                          # doctest: +SKIP
    >>> log_run(result, experiment="qa", tracking_uri="http://127.0.0.1:5000")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import time
from pathlib import Path
from typing import Any

from .._errors import MissingDependencyError
from ..io.layout import GRAPH, METADATA
from ..runtime.events import Event
from ..runtime.result import RunResult

__all__ = ["MlflowMiddleware", "log_run"]

_NODE_METRICS = (
    "records_in",
    "records_out",
    "failed",
    "filtered",
    "requests",
    "cache_hits",
    "deduped",
    "reasks",
    "prompt_tokens",
    "completion_tokens",
)
_STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}
"""Chainette's run status → MLflow's (anything else: FAILED)."""


def log_run(
    result: RunResult,
    *,
    experiment: str = "chainette",
    tracking_uri: str | None = None,
    run_name: str | None = None,
) -> str:
    """Log a finished run to MLflow: params, metrics, and the run folder as artefacts.

    Args:
        result: What ``chain.run`` returned (or ``RunResult`` over a run folder read back).
        experiment: The MLflow experiment (created if missing).
        tracking_uri: The tracking server or store (default: MLflow's own, ``$MLFLOW_TRACKING_URI``).
            MLflow 3 refuses a ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true`` is set.
        run_name: The MLflow run's name (default: the chain's name and the run id).

    Returns:
        The MLflow run id.

    Raises:
        MissingDependencyError: MLflow is not installed.
    """
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise MissingDependencyError("log_run needs MLflow: pip install 'chainette[mlflow]'.") from exc

    meta = result.metadata
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    run = client.create_run(
        experiment_id,
        start_time=_ms(meta.get("started_at")),
        run_name=run_name or f"{meta.get('chain', 'chain')} {result.run_id}",
        tags={
            "chainette.run_id": result.run_id,
            "chainette.status": str(meta.get("status")),
            "chainette.output_dir": str(result.path),
            **{f"chainette.version.{k}": str(v) for k, v in (meta.get("versions") or {}).items()},
        },
    )
    run_id: str = run.info.run_id
    try:
        now = _ms(meta.get("finished_at")) or int(time.time() * 1000)
        client.log_batch(
            run_id,
            params=[Param(k, v) for k, v in params(result).items()],
            metrics=[Metric(k, v, now, 0) for k, v in metrics(result).items()],
            tags=[RunTag("chainette.chain", str(meta.get("chain")))],
        )
        for entry in sorted(result.path.iterdir()):
            if entry.name.startswith("."):  # the marker and the lock: Chainette's, not the run's
                continue
            if entry.is_dir():
                client.log_artifacts(run_id, str(entry), artifact_path=entry.name)
            else:
                client.log_artifact(run_id, str(entry))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, _STATUS.get(str(meta.get("status")), "FAILED"), end_time=now)
    return run_id


def params(result: RunResult) -> dict[str, str]:
    """The MLflow params of a run: chain, run config, engines (backend and model)."""
    meta = result.metadata
    out = {"chain": str(meta.get("chain")), "mode": str(meta.get("mode", "batch"))}
    for key, value in (meta.get("config") or {}).items():
        out[f"config.{key}"] = str(value)
    graph = _read_json(result.path / GRAPH)
    for name, engine in (graph.get("engines") or {}).items():
        out[f"engine.{name}.backend"] = str(engine.get("backend"))
        out[f"engine.{name}.model"] = str(engine.get("model"))
    return {_key(k): v[:6000] for k, v in out.items()}  # MLflow's longest param value


def metrics(result: RunResult) -> dict[str, float]:
    """The MLflow metrics of a run: counts, tokens, requests, ledger hits, cost, duration, per node."""
    meta = result.metadata
    out: dict[str, Any] = {f"counts.{k}": v for k, v in (meta.get("counts") or {}).items()}
    tokens = meta.get("tokens") or {}
    out |= {"tokens.prompt": tokens.get("prompt"), "tokens.completion": tokens.get("completion")}
    cache = meta.get("cache") or {}
    saved = cache.get("saved_tokens") or {}
    out |= {
        "requests.sent": cache.get("sent"),
        "cache.hits": cache.get("hits"),
        "cache.deduped": cache.get("deduped"),
        "cache.saved_tokens.prompt": saved.get("prompt"),
        "cache.saved_tokens.completion": saved.get("completion"),
    }
    cost = meta.get("cost") or {}
    out |= {"cost.usd": cost.get("usd"), "cost.saved_usd": cost.get("saved_usd")}  # None: no price known
    duration = meta.get("duration_s")
    out["duration_s"] = duration
    for node, stats in (meta.get("nodes") or {}).items():
        for key in _NODE_METRICS:
            out[f"node.{node}.{key}"] = stats.get(key)
        if duration:
            out[f"node.{node}.records_per_s"] = stats.get("done", 0) / duration
    return {_key(k): float(v) for k, v in out.items() if isinstance(v, (int, float))}


class MlflowMiddleware:
    """Middleware that logs each run to MLflow when it finishes (:func:`log_run`).

    It runs at ``run_finished``, on the event loop, after the engines are released and the run
    folder is written: the run's work is done, but ``chain.run`` returns only once MLflow has the
    artefacts (a remote server and a large run folder take a while). A failure to log is reported
    in the log and does not fail the run (see ``runtime/events.py``).

    Args:
        experiment: The MLflow experiment.
        tracking_uri: The tracking server or store (default: MLflow's own).

    Attributes:
        logged: The MLflow run ids logged so far, in order.

    Example:
        >>> chain.run("inputs.jsonl", "runs/qa", middleware=[MlflowMiddleware(experiment="qa")])  # doctest: +SKIP
    """

    def __init__(self, *, experiment: str = "chainette", tracking_uri: str | None = None) -> None:
        try:
            import mlflow  # noqa: F401  (fail now, not after the run)
        except ImportError as exc:
            raise MissingDependencyError(
                "MlflowMiddleware needs MLflow: pip install 'chainette[mlflow]'."
            ) from exc
        self.experiment = experiment
        self.tracking_uri = tracking_uri
        self.logged: list[str] = []

    def __call__(self, event: Event) -> None:
        if event.kind != "run_finished" or event.trace_id is not None:
            return
        folder = Path(str(event.data["output_dir"]))
        meta = _read_json(folder / METADATA)
        if not meta:
            return  # the run folder could not be written: nothing to log
        result = RunResult(
            folder, str(meta.get("run_id")), meta, str((meta.get("config") or {}).get("fmt", "jsonl"))
        )
        self.logged.append(log_run(result, experiment=self.experiment, tracking_uri=self.tracking_uri))


def _key(name: str) -> str:
    """An MLflow key: letters, digits, ``_ - . /`` and spaces (node ids may hold other characters)."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _ms(iso: Any) -> int | None:
    if not isinstance(iso, str):
        return None
    return int(_dt.datetime.fromisoformat(iso).timestamp() * 1000)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data
