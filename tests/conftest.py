"""Shared fixtures: a clean engine registry per test, a run folder, a recording back-end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import RecordingEngine

from chainette.engines import registry


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Each test sees only the engines it registers."""
    saved = dict(registry._REGISTRY)
    registry._REGISTRY.clear()
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


@pytest.fixture(autouse=True)
def ledger_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own request ledger (``$CHAINETTE_LEDGER``), so no test sees another's answers."""
    path = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("CHAINETTE_LEDGER", str(path))
    return path


@pytest.fixture(autouse=True)
def server_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has its own record of warmed-up servers (never the developer's ./.chainette)."""
    folder = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("CHAINETTE_STATE_DIR", str(folder))
    return folder


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def recording_backend(monkeypatch: pytest.MonkeyPatch) -> type[RecordingEngine]:
    """Registers backend ``recording`` (by name, like any back-end) and resets its instance list."""
    monkeypatch.setitem(registry.BACKENDS, "recording", "tests.helpers:RecordingEngine")
    RecordingEngine.instances = []
    return RecordingEngine
