"""Hugging Face datasets in (Dataset, IterableDataset, DatasetDict with a split, a save_to_disk
folder) and out (``RunResult.to_dataset``), and pyarrow / datasets imported only when used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import datasets
import pytest
from tests.helpers import echo, qa_step

from chainette import Chain, InputError, MissingDependencyError, register_engine
from chainette.io.inputs import InputItem, iter_input_chunks

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fake_engine() -> None:
    register_engine("fake", backend="fake", responder=echo)


def qa_chain() -> Chain:
    return Chain("qa", [qa_step()])


def splits() -> datasets.DatasetDict:
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["a", "b", None, "d"], "label": [0, 1, 0, 1]}),
            "test": datasets.Dataset.from_dict({"text": ["t"], "label": [1]}),
        }
    )


async def collect(inputs: Any, **options: Any) -> list[InputItem]:
    return [item async for chunk in iter_input_chunks(inputs, 2, **options) for item in chunk]


def test_a_dataset_dict_runs_the_split_asked_for(tmp_path: Path) -> None:
    result = qa_chain().run(splits(), tmp_path / "run", split="train")
    assert [r["qa.answer"] for r in result.flattened()] == ["re: a", "re: b", "re: d"]
    [failure] = result.failures()
    assert failure["message"].startswith("dataset train row 2: does not fit") and failure["_index"] == 2
    assert [r["_index"] for r in result.flattened()] == [0, 1, 3]


def test_a_missing_or_unknown_split_is_refused_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"holds the splits 'test', 'train': pick one with split="):
        qa_chain().run(splits(), tmp_path / "run")
    with pytest.raises(InputError, match=r"has no split 'tets' \(did you mean 'test'\?\)"):
        qa_chain().run(splits(), tmp_path / "run", split="tets")
    with pytest.raises(
        InputError, match=r"split='test' was given, but the dataset is one Dataset, split 'train'"
    ):
        qa_chain().run(
            datasets.Dataset.from_dict({"text": ["a"]}, split="train"), tmp_path / "run", split="test"
        )
    with pytest.raises(
        InputError, match=r"has no column 'txt' \(mapped to 'text'\) \(did you mean 'text'\?\)"
    ):
        qa_chain().run(splits(), tmp_path / "run", split="train", columns={"text": "txt"})
    assert not (tmp_path / "run").exists()


def test_a_dataset_and_an_iterable_dataset_give_the_same_records(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict({"content": ["a", "b", "c"], "n": [1, 2, 3]})
    streamed = ds.to_iterable_dataset()
    first = anyio.run(lambda: collect(ds, columns={"text": "content"}))
    again = anyio.run(lambda: collect(ds, columns={"text": "content"}))
    other = anyio.run(lambda: collect(streamed, columns={"text": "content"}))
    assert [i.value for i in first] == [{"text": "a", "n": 1}, {"text": "b", "n": 2}, {"text": "c", "n": 3}]
    assert [i.id for i in first] == [i.id for i in again] == [i.id for i in other]
    assert [i.where for i in other] == ["dataset row 0", "dataset row 1", "dataset row 2"]
    result = qa_chain().run(streamed, tmp_path / "run", columns={"text": "content"})
    assert [r["qa.answer"] for r in result.flattened()] == ["re: a", "re: b", "re: c"]


def test_a_save_to_disk_folder_is_read_by_path(tmp_path: Path) -> None:
    splits().save_to_disk(str(tmp_path / "saved"))
    result = qa_chain().run(tmp_path / "saved", tmp_path / "run", split="test")
    assert [r["qa.answer"] for r in result.flattened()] == ["re: t"]
    items = anyio.run(lambda: collect(tmp_path / "saved", split="train"))
    assert items[3].where == "saved train row 3" and items[3].value == {"text": "d", "label": 1}
    with pytest.raises(InputError, match=r"The dataset saved in 'saved' has no split 'dev'"):
        qa_chain().run(tmp_path / "saved", tmp_path / "run2", split="dev")
    splits()["train"].save_to_disk(str(tmp_path / "one"))
    assert qa_chain().run(tmp_path / "one", tmp_path / "run3").counts["records_out"] == 3


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_to_dataset_round_trips_the_flattened_rows_memory_mapped(tmp_path: Path, fmt: str) -> None:
    result = qa_chain().run(splits(), tmp_path / "run", split="train", fmt=fmt, max_lines_per_file=2)
    assert len(list((tmp_path / "run" / "flattened").iterdir())) == 2  # two part files
    ds = result.to_dataset(cache_dir=tmp_path / "cache")
    assert isinstance(ds, datasets.Dataset)
    assert isinstance(ds.data, datasets.table.MemoryMappedTable)  # on disk, not in memory
    assert all(Path(f["filename"]).is_relative_to(tmp_path / "cache") for f in ds.cache_files)
    assert ds["qa.answer"] == ["re: a", "re: b", "re: d"] and ds["_index"] == [0, 1, 3]
    assert ds.column_names == ["_id", "_index", "input.text", "qa.answer", "qa.confidence"]
    assert result.to_dataset("qa", cache_dir=tmp_path / "cache")["answer"] == ["re: a", "re: b", "re: d"]
    # the run folder is still the run's alone: it can be overwritten
    assert (
        qa_chain().run(splits(), tmp_path / "run", split="train", overwrite=True).counts["records_out"] == 3
    )


def test_to_dataset_refuses_a_cache_inside_the_run_folder(tmp_path: Path) -> None:
    result = qa_chain().run([{"text": "a"}], tmp_path / "run")
    with pytest.raises(ValueError, match="inside the run folder"):
        result.to_dataset(cache_dir=tmp_path / "run" / "cache")


def test_a_missing_datasets_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = qa_chain().run([{"text": "a"}], tmp_path / "run")
    splits()["train"].save_to_disk(str(tmp_path / "saved"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'chainette\[datasets\]'"):
        result.to_dataset()
    with pytest.raises(MissingDependencyError, match=r"chainette\[datasets\]"):
        qa_chain().run(tmp_path / "saved", tmp_path / "run2")


def test_a_missing_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "in.csv").write_text("text\na\n")
    monkeypatch.setitem(sys.modules, "pyarrow.csv", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'chainette\[datasets\]'"):
        qa_chain().run(tmp_path / "in.csv", tmp_path / "run")


def test_a_jsonl_run_imports_neither_pyarrow_nor_datasets(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    script = f"""
import sys
from chainette import Chain, register_engine
from tests.helpers import echo, qa_step
register_engine("fake", backend="fake", responder=echo)
result = Chain("qa", [qa_step()]).run({str(tmp_path / "in.jsonl")!r}, {str(tmp_path / "run")!r}, cache="off")
assert result.counts["records_out"] == 1
print([m for m in ("pyarrow", "datasets") if m in sys.modules])
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')) == []
