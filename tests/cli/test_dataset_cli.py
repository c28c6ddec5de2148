"""``chainette run -i`` on Parquet, CSV, folders and saved datasets, with ``--split`` and ``--column``."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner, Result

from chainette.cli import app

CHAIN = """
from pydantic import BaseModel
from chainette import Chain, Step, register_engine

register_engine("fake", backend="fake", responder=lambda r: {"answer": "re: " + r.messages[-1]["content"]})

class Question(BaseModel):
    text: str

class Answer(BaseModel):
    answer: str

chain = Chain(name="qa", steps=[Step(id="qa", input_model=Question, output_model=Answer, engine_name="fake",
                                     user_prompt="{{ text }}")])
"""


def run(tmp_path: Path, *args: str) -> Result:
    (tmp_path / "chain.py").write_text(CHAIN)
    return CliRunner().invoke(app, ["run", f"{tmp_path / 'chain.py'}:chain", "-q", *args])


def answers(folder: Path) -> list[str]:
    return [
        json.loads(line)["qa.answer"]
        for line in (folder / "flattened" / "000.jsonl").read_text().splitlines()
    ]


def test_a_parquet_file_with_a_column_mapped(tmp_path: Path) -> None:
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "data.parquet")
    out = tmp_path / "run"
    result = run(tmp_path, "-i", str(tmp_path / "data.parquet"), "--column", "text=content", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert answers(out) == ["re: a", "re: b"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["config"]["columns"] == {"text": "content"} and meta["config"]["split"] is None


def test_a_folder_of_split_shards_with_split(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.csv").write_text("text\na\nb\n")
    (tmp_path / "ds" / "test.csv").write_text("text\nt\n")
    out = tmp_path / "run"
    result = run(tmp_path, "-i", str(tmp_path / "ds"), "--split", "test", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert answers(out) == ["re: t"]


def test_a_saved_dataset_by_path(tmp_path: Path) -> None:
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": ["x", "y"]})}).save_to_disk(
        str(tmp_path / "saved")
    )
    out = tmp_path / "run"
    result = run(tmp_path, "-i", str(tmp_path / "saved"), "--column", "text=body", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert answers(out) == ["re: x", "re: y"]


def test_mistakes_are_said_before_anything_runs(tmp_path: Path) -> None:
    pq.write_table(pa.table({"content": ["a"]}), tmp_path / "data.parquet")
    out = tmp_path / "run"
    missing = run(tmp_path, "-i", str(tmp_path / "data.parquet"), "-o", str(out))
    assert missing.exit_code == 1
    assert "data.parquet has no column 'text' for the required field 'text'" in missing.output
    assert "--column text=<column>" in missing.output
    split = run(tmp_path, "-i", str(tmp_path / "data.parquet"), "--split", "train", "-o", str(out))
    assert split.exit_code == 1 and "data.parquet is one file, which has no splits" in split.output
    bad = run(tmp_path, "-i", str(tmp_path / "data.parquet"), "--column", "text", "-o", str(out))
    assert bad.exit_code == 2 and "FIELD=COLUMN" in bad.output
    nowhere = run(tmp_path, "-i", str(tmp_path / "nope.parquet"), "-o", str(out))
    assert nowhere.exit_code == 1 and "does not exist" in nowhere.output
    assert not out.exists()
