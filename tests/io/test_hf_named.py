"""``hf:NAME`` inputs: a dataset by name through ``datasets.load_dataset``, offline, from a local
dataset folder (data files per split) and the local cache; errors name the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from tests.helpers import echo, qa_step
from typer.testing import CliRunner

from chainette import Chain, InputError, register_engine
from chainette.cli import app
from chainette.io.inputs import open_inputs


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    register_engine("fake", backend="fake", responder=echo)


def _folder(root: Path) -> Path:
    folder = root / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "".join(json.dumps({"text": f"q{i}", "id": i}) + "\n" for i in range(3))
    )
    (folder / "test.jsonl").write_text(json.dumps({"text": "t0", "id": 9}) + "\n")
    return folder


def test_a_local_dataset_folder_by_name_streams_one_split(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    source = open_inputs(f"hf:{folder}", split="train", model=None)
    assert type(source.dataset).__name__ == "IterableDataset"  # streamed
    result = Chain("qa", [qa_step()]).run(f"hf:{folder}", tmp_path / "run", split="train")
    assert sorted(r["qa.answer"] for r in result.flattened()) == ["re: q0", "re: q1", "re: q2"]


def test_several_splits_and_unknown_names_say_what_to_do(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    with pytest.raises(InputError, match=r"splits 'test', 'train': pick one with split="):
        open_inputs(f"hf:{folder}", model=None)
    with pytest.raises(InputError, match=r"'nobody/no-such-dataset'.*offline.*hf:\./folder"):
        open_inputs("hf:nobody/no-such-dataset", model=None)
    with pytest.raises(InputError, match="needs a dataset name"):
        open_inputs("hf:", model=None)


def test_cli_reads_hf_name_with_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chain_qa.py").write_text(
        "from tests.helpers import qa_step\nfrom chainette import Chain\nchain = Chain('qa', [qa_step()])\n"
    )
    result = CliRunner().invoke(
        app, ["run", "chain_qa.py:chain", "-i", f"hf:{folder.name}", "--split", "test", "-o", "run", "-q"]
    )
    assert result.exit_code == 0, result.output
    rows = [
        json.loads(x)
        for f in (tmp_path / "run" / "flattened").glob("*.jsonl")
        for x in f.read_text().splitlines()
    ]
    assert [r["qa.answer"] for r in rows] == ["re: t0"]
