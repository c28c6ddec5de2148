"""Run history from Python: ``list_runs``, ``load_run``, ``compare_runs``, ``restrict`` on recorded runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.experiments.shared import CASES, CalcConfig, build_chain, counting_calculator, sloppy_calculator

from chainette import Experiment, numeric, register_engine
from chainette._errors import ExperimentError
from chainette.experiments.history import compare_runs, flatten_config, list_runs, load_run, restrict


@pytest.fixture
def experiment() -> Experiment:
    register_engine("calc", backend="fake", responder=counting_calculator)
    register_engine("sloppy", backend="fake", responder=sloppy_calculator)
    return Experiment("calc", build_chain, CASES, [numeric("answer")], CalcConfig)


def record_two(experiment: Experiment, root: Path) -> tuple[Path, Path]:
    ledger = root.parent / "ledger.sqlite"
    a = experiment.run(root / "a", overrides=["engine=calc"], ledger=ledger).path
    b = experiment.run(root / "b", overrides=["engine=sloppy", 'tags=["x"]'], ledger=ledger).path
    return a, b


def test_list_runs_finds_the_runs_newest_first_and_not_their_nested_runs(
    experiment: Experiment, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    record_two(experiment, root)
    nested = root / "b" / "experiment" / "judge-x"
    nested.mkdir(parents=True)
    (nested / "experiment.json").write_text(json.dumps({"experiment": "nested"}))
    runs = list_runs(root)
    assert [r.id for r in runs] == ["b", "a"]
    assert runs[1].pass_rate == 0.5 and runs[0].pass_rate == 0.25
    assert list_runs(tmp_path / "nothing") == []


def test_load_run_takes_a_folder_or_a_name_under_root_and_names_the_runs_when_unknown(
    experiment: Experiment, tmp_path: Path
) -> None:
    a, _ = record_two(experiment, tmp_path / "runs")
    assert load_run(a).id == "a" and load_run("a", tmp_path / "runs").path == a
    assert load_run(a).failed_ids() == ["off", "boom"]
    with pytest.raises(ExperimentError, match=r"Runs under .*: b, a"):
        load_run("c", tmp_path / "runs")


def test_compare_runs_lists_the_changed_cases_the_deltas_and_the_config_differences(
    experiment: Experiment, tmp_path: Path
) -> None:
    a, b = record_two(experiment, tmp_path / "runs")
    diff = compare_runs(load_run(a), load_run(b))
    assert diff.pass_rate_delta == pytest.approx(-0.25)
    assert [(c.id, c.status_a, c.status_b, c.output_a, c.output_b) for c in diff.changed] == [
        ("mul", "pass", "fail", {"answer": 6.0}, {"answer": 7.0})
    ]
    assert diff.config_diff == {"engine": ("calc", "sloppy"), "tags": ([], ["x"])}
    assert diff.only_a == diff.only_b == []
    assert diff.cost_delta == 0.0 and diff.duration_delta is not None


def test_compare_runs_names_cases_only_in_one_run(experiment: Experiment, tmp_path: Path) -> None:
    a = experiment.run(tmp_path / "a", overrides=["engine=calc"], ledger=tmp_path / "l.sqlite").path
    b = (
        restrict(experiment, ["mul", "add"])
        .run(tmp_path / "b", overrides=["engine=calc"], ledger=tmp_path / "l.sqlite")
        .path
    )
    diff = compare_runs(load_run(a), load_run(b))
    assert diff.only_a == ["off", "boom"] and diff.only_b == [] and diff.changed == []
    assert [c["id"] for c in load_run(b).cases] == ["add", "mul"]  # the suite's order kept
    with pytest.raises(ExperimentError, match="no longer has case"):
        restrict(experiment, ["gone"])


def test_flatten_config_writes_dotted_keys() -> None:
    assert flatten_config({"a": {"b": 1, "c": {"d": [1]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1], "e": {}}
