"""A finished run in MLflow, logged to a local file store and read back with ``MlflowClient``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tests.helpers import Question, echo, qa_step

from chainette import Chain, register_engine

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient

from chainette.integrations.mlflow import MlflowMiddleware, log_run


def qa_chain() -> Chain:
    register_engine("echo", backend="fake", model="echo-1", responder=echo)
    return Chain(
        name="qa",
        steps=[qa_step("echo")],
    )


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # MLflow 3 refuses the file store unless told it is wanted (it recommends a database)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file:{tmp_path}/mlruns"


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for entry in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return out


def test_log_run_records_params_metrics_and_the_run_folder(tmp_path: Path, store: str) -> None:
    result = qa_chain().run([Question(text=f"question {i}") for i in range(4)], tmp_path / "run")

    run_id = log_run(result, experiment="qa-runs", tracking_uri=store)

    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment_by_name("qa-runs")
    assert experiment is not None and run.info.experiment_id == experiment.experiment_id
    params = run.data.params
    assert params["chain"] == "qa"
    assert params["engine.echo.backend"] == "fake" and params["engine.echo.model"] == "echo-1"
    assert params["config.workers"] == "4" and params["config.cache"] == "use"
    metrics = run.data.metrics
    assert metrics["counts.records_in"] == 4 and metrics["counts.records_out"] == 4
    assert metrics["counts.failures"] == 0
    assert metrics["tokens.prompt"] == result.metadata["tokens"]["prompt"] > 0
    assert metrics["requests.sent"] == 4 and metrics["cache.hits"] == 0
    assert metrics["node.qa.records_out"] == 4
    assert metrics["node.qa.records_per_s"] > 0 and metrics["duration_s"] >= 0
    assert metrics.get("cost.usd") == result.metadata["cost"]["usd"]  # None (no price known): not logged
    assert run.data.tags["chainette.run_id"] == result.run_id
    files = _artifacts(client, run_id)
    assert {"metadata.json", "graph.json", "failures.jsonl", "flattened/000.jsonl", "qa/000.jsonl"} <= files
    assert not any(f.startswith(".") for f in files)  # the marker and lock stay out
    local = Path(client.download_artifacts(run_id, "metadata.json", str(tmp_path)))
    assert json.loads(local.read_text())["run_id"] == result.run_id


def test_a_rerun_logs_its_ledger_hits(tmp_path: Path, store: str) -> None:
    chain = qa_chain()
    chain.run([Question(text="q")], tmp_path / "first")
    again = chain.run([Question(text="q")], tmp_path / "again")
    run = MlflowClient(tracking_uri=store).get_run(log_run(again, tracking_uri=store))
    assert run.data.metrics["cache.hits"] == 1 and run.data.metrics["requests.sent"] == 0
    assert run.data.metrics["node.qa.cache_hits"] == 1


def test_the_middleware_logs_each_run_when_it_finishes(tmp_path: Path, store: str) -> None:
    logger = MlflowMiddleware(experiment="live", tracking_uri=store)
    chain = qa_chain()
    first = chain.run([Question(text="a")], tmp_path / "one", middleware=[logger])
    second = chain.run([Question(text="b"), Question(text="c")], tmp_path / "two", middleware=[logger])

    client = MlflowClient(tracking_uri=store)
    runs = [client.get_run(run_id) for run_id in logger.logged]
    assert [r.data.tags["chainette.run_id"] for r in runs] == [first.run_id, second.run_id]
    assert [r.data.metrics["counts.records_out"] for r in runs] == [1, 2]
    assert "flattened/000.jsonl" in _artifacts(client, logger.logged[1])


def test_a_store_that_refuses_does_not_fail_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 then refuses the file store
    logger = MlflowMiddleware(tracking_uri=f"file:{tmp_path}/mlruns")
    with caplog.at_level(logging.ERROR, logger="chainette.events"):
        result = qa_chain().run([Question(text="a")], tmp_path / "run", middleware=[logger])
    assert result.metadata["status"] == "completed" and logger.logged == []
    assert [r.name for r in caplog.records] == ["chainette.events"]


def test_without_mlflow_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from chainette import MissingDependencyError

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'chainette\[mlflow\]'"):
        MlflowMiddleware()
