"""``chainette run --resume / --no-cache / --refresh-cache`` and ``chainette cache info|clear``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.cli.test_cli import QUESTIONS, invoke, write_chain, write_inputs


def meta(run: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((run / "metadata.json").read_text())


def test_rerun_with_resume_sends_nothing_and_reports_the_cache(tmp_path: Path, ledger_path: Path) -> None:
    chain, inputs, run = write_chain(tmp_path), write_inputs(tmp_path, QUESTIONS), tmp_path / "run"
    first = invoke("run", f"{chain}:chain", "-i", inputs, "-o", run)
    assert first.exit_code == 0 and meta(run)["cache"]["sent"] == 10  # 5 qa + 5 to_fr
    refused = invoke("run", f"{chain}:chain", "-i", inputs, "-o", run)
    assert refused.exit_code == 1 and "--resume" in refused.output
    again = invoke("run", f"{chain}:chain", "-i", inputs, "-o", run, "--resume")
    assert again.exit_code == 0, again.output
    assert meta(run)["cache"] | {"saved_tokens": None} == {
        "ledger": str(ledger_path),
        "mode": "use",
        "sent": 0,
        "unsent": 0,
        "hits": 10,
        "deduped": 0,
        "saved_tokens": None,
    }
    assert "0 sent, 10 from the ledger" in again.output and again.output.strip().endswith(str(run))

    info = invoke("cache", "info")
    assert info.exit_code == 0 and "10 completed requests" in info.output and "to_fr" in info.output
    assert invoke("cache", "clear", "--yes").exit_code == 0
    assert "0 completed requests" in invoke("cache", "info").output


def test_no_cache_and_refresh_cache(tmp_path: Path, ledger_path: Path) -> None:
    chain, inputs = write_chain(tmp_path), write_inputs(tmp_path, QUESTIONS)
    other = tmp_path / "other.sqlite"
    assert invoke("run", f"{chain}:chain", "-i", inputs, "-o", tmp_path / "a", "--no-cache").exit_code == 0
    assert not ledger_path.exists() and meta(tmp_path / "a")["cache"]["ledger"] is None
    assert (
        invoke("run", f"{chain}:chain", "-i", inputs, "-o", tmp_path / "b", "--ledger", other).exit_code == 0
    )
    refresh = invoke(
        "run", f"{chain}:chain", "-i", inputs, "-o", tmp_path / "c", "--ledger", other, "--refresh-cache"
    )
    assert refresh.exit_code == 0 and meta(tmp_path / "c")["cache"]["sent"] == 10
    both = invoke(
        "run", f"{chain}:chain", "-i", inputs, "-o", tmp_path / "d", "--no-cache", "--refresh-cache"
    )
    assert both.exit_code == 2 and "exclude each other" in both.output
    assert "No ledger at" in invoke("cache", "info", "--ledger", tmp_path / "none.sqlite").output


def test_the_summary_shows_cost_and_savings_for_priced_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chainette.ledger import costs

    monkeypatch.setitem(
        costs.PRICES, "fake", costs.Price(prompt=1_000_000.0, completion=0.0)
    )  # $1 a prompt token
    chain, inputs = write_chain(tmp_path), write_inputs(tmp_path, QUESTIONS)
    first = invoke("run", f"{chain}:chain", "-i", inputs, "-o", tmp_path / "a")
    spent = meta(tmp_path / "a")["cost"]["usd"]
    assert spent > 0 and f"cost ${spent:,.4f}, saved $0.0000" in first.output
    again = invoke("run", f"{chain}:chain", "-i", inputs, "-o", tmp_path / "b")
    assert f"cost $0.0000, saved ${spent:,.4f}" in again.output  # the rerun came from the ledger
