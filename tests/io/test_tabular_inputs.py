"""Parquet and CSV inputs, folders of shards: rows become records with stable ids and a ``where``
naming file and row; bad rows become failures at their place; mistakes are refused before a run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel
from tests.helpers import Answer, Question, echo, qa_step

from chainette import Chain, InputError, Step, register_engine
from chainette.io import inputs, tabular
from chainette.io.inputs import InputItem, iter_input_chunks, record_id


@pytest.fixture(autouse=True)
def fake_engine() -> None:
    register_engine("fake", backend="fake", responder=echo)


def qa_chain() -> Chain:
    return Chain("qa", [qa_step()])


def chain_on(model: type[BaseModel], prompt: str) -> Chain:
    step = Step(id="qa", input_model=model, output_model=Answer, engine_name="fake", user_prompt=prompt)
    return Chain("c", [step])


def write_parquet(path: Path, columns: dict[str, list[Any]], row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


async def collect(inputs: Any, batch_size: int = 3, **options: Any) -> list[InputItem]:
    return [item async for chunk in iter_input_chunks(inputs, batch_size, **options) for item in chunk]


def test_a_parquet_file_runs_row_by_row_with_rows_named(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "data.parquet", {"text": ["a", "b", "c"], "extra": [1, 2, 3]})
    result = qa_chain().run(src, tmp_path / "run")
    rows = list(result.flattened())
    assert [r["qa.answer"] for r in rows] == ["re: a", "re: b", "re: c"]
    assert [r["_index"] for r in rows] == [0, 1, 2] and result.counts["failures"] == 0
    items = anyio.run(collect, src)
    assert [i.where for i in items] == ["data.parquet row 0", "data.parquet row 1", "data.parquet row 2"]
    assert items[1].value == {"text": "b", "extra": 2}  # no model given: every column


def test_ids_are_stable_across_reads_and_equal_to_the_same_rows_as_dicts(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "data.parquet", {"text": ["a", "b", "a"]})
    first, second = anyio.run(collect, src), anyio.run(collect, src)
    assert [i.id for i in first] == [i.id for i in second]
    assert len({i.id for i in first}) == 3  # the same content at another index is another record
    as_dicts = anyio.run(collect, [{"text": "a"}, {"text": "b"}, {"text": "a"}])
    assert [i.id for i in first] == [i.id for i in as_dicts]
    assert first[0].id == record_id(0, b'{"text":"a"}')


def test_only_the_columns_the_model_reads_are_read(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "data.parquet", {"text": ["a"], "blob": [b"x" * 1000]})
    [item] = anyio.run(lambda: collect(src, model=Question))
    assert item.value == {"text": "a"}


def test_columns_map_fields_onto_other_columns(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "data.parquet", {"content": ["a", "b"], "text": ["no", "no"]})
    result = qa_chain().run(src, tmp_path / "run", columns={"text": "content"})
    assert [r["qa.answer"] for r in result.flattened()] == ["re: a", "re: b"]
    assert result.metadata["config"]["columns"] == {"text": "content"}


def test_columns_apply_to_jsonl_and_dicts_too(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"content": "a"}\n')
    result = qa_chain().run(src, tmp_path / "run", columns={"text": "content"})
    assert [r["qa.answer"] for r in result.flattened()] == ["re: a"]
    result = qa_chain().run([{"content": "b"}], tmp_path / "run2", columns={"text": "content"})
    assert [r["qa.answer"] for r in result.flattened()] == ["re: b"]


def test_bad_parquet_rows_become_failures_naming_file_and_row(tmp_path: Path) -> None:
    class Scored(BaseModel):
        text: str
        score: int

    src = write_parquet(
        tmp_path / "data.parquet",
        {"text": ["a", None, "c", "d"], "score": ["1", "2", "three", "4"]},  # a null, an unreadable value
    )
    result = chain_on(Scored, "{{ text }} {{ score }}").run(src, tmp_path / "run")
    failures = list(result.failures())
    assert [f["message"].split(":")[0] for f in failures] == ["data.parquet row 1", "data.parquet row 2"]
    assert "field 'text'" in failures[0]["message"] and "field 'score'" in failures[1]["message"]
    assert all(f["node"] == "input" and f["error_type"] == "invalid_input" for f in failures)
    assert json.loads(failures[1]["raw"]) == {"text": "c", "score": "three"}
    rows = list(result.flattened())
    assert [r["_index"] for r in rows] == [0, 3]  # the others keep their places
    assert result.counts == {"records_in": 4, "records_out": 2, "failures": 2, "filtered": 0}


def test_strict_inputs_stop_at_the_first_bad_row(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("text\na\nb,c\n")
    with pytest.raises(InputError, match=r"in.csv row 1: has 2 cells where the header has 1"):
        qa_chain().run(tmp_path / "in.csv", tmp_path / "run", strict_inputs=True)


def test_a_csv_file_with_bad_rows_keeps_every_row_at_its_place(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b'text,n\na,1\nb\n"two\nlines",3\nc,4,5\nd\xe9,6\ne,7\n')
    result = qa_chain().run(src, tmp_path / "run")
    rows = list(result.flattened())
    assert [(r["_index"], r["qa.answer"]) for r in rows] == [
        (0, "re: a"),
        (2, "re: two\nlines"),
        (5, "re: e"),
    ]
    failures = {f["_index"]: f for f in result.failures()}
    assert sorted(failures) == [1, 3, 4]
    assert failures[1]["message"].startswith("in.csv row 1: has 1 cell where the header has 2")
    assert failures[1]["raw"] == "b" and failures[3]["raw"] == "c,4,5"
    assert failures[4]["message"].startswith("in.csv row 4: column 'text' is not valid UTF-8 (byte 0xe9")
    assert "iconv -f latin1" in failures[4]["message"]
    ids = [i.id for i in anyio.run(collect, src)]
    assert ids == [i.id for i in anyio.run(collect, src)] and len(set(ids)) == 6


def test_csv_cells_are_text_that_pydantic_converts(tmp_path: Path) -> None:
    class Priced(BaseModel):
        text: str
        price: float

    (tmp_path / "in.csv").write_text("price,text\n1.5,a\n,b\n")
    result = chain_on(Priced, "{{ text }} {{ price }}").run(tmp_path / "in.csv", tmp_path / "run")
    assert [r["qa.answer"] for r in result.flattened()] == ["re: a 1.5"]
    [failure] = result.failures()
    assert (
        failure["message"].startswith("in.csv row 1: does not fit") and "field 'price'" in failure["message"]
    )


def test_a_folder_of_shards_is_one_input_in_path_order(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    write_parquet(shards / "part-0.parquet", {"text": ["a", "b"]})
    write_parquet(shards / "part-1.parquet", {"text": ["c"]})
    write_parquet(shards / "part-2.parquet", {"text": ["d", None, "f"]})
    (shards / "_SUCCESS").write_text("")  # what Spark leaves: not data
    result = qa_chain().run(shards, tmp_path / "run")
    assert [r["qa.answer"] for r in result.flattened()] == ["re: a", "re: b", "re: c", "re: d", "re: f"]
    [failure] = result.failures()
    assert failure["message"].startswith("shards/part-2.parquet row 1:") and failure["_index"] == 4
    items = anyio.run(collect, shards)
    assert [i.index for i in items] == list(range(6))
    assert items[2].where == "shards/part-1.parquet row 0"


def test_a_folder_of_jsonl_and_of_csv_shards(tmp_path: Path) -> None:
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "j" / "b.jsonl").write_text('{"text": "c"}\n{oops\n')
    items = anyio.run(collect, tmp_path / "j")
    assert [i.index for i in items] == [0, 1, 2, 3]
    assert items[3].where == "j/b.jsonl line 2" and "not valid JSON" in (items[3].error or "")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "1.csv").write_text("text\na\n")
    (tmp_path / "c" / "2.csv").write_text("text\nb\n")
    result = qa_chain().run(tmp_path / "c", tmp_path / "run")
    assert [r["qa.answer"] for r in result.flattened()] == ["re: a", "re: b"]


def test_a_folder_with_split_files_needs_a_split(tmp_path: Path) -> None:
    data = tmp_path / "ds"
    write_parquet(data / "data" / "train-00000-of-00002.parquet", {"text": ["a"]})
    write_parquet(data / "data" / "train-00001-of-00002.parquet", {"text": ["b"]})
    write_parquet(data / "data" / "test-00000-of-00001.parquet", {"text": ["t"]})
    with pytest.raises(InputError, match=r"holds the splits 'test', 'train': pick one with split="):
        qa_chain().run(data, tmp_path / "run")
    with pytest.raises(InputError, match=r"has no split 'tran' \(did you mean 'train'\?\)"):
        qa_chain().run(data, tmp_path / "run", split="tran")
    assert not (tmp_path / "run").exists()
    result = qa_chain().run(data, tmp_path / "run", split="train")
    assert [r["qa.answer"] for r in result.flattened()] == ["re: a", "re: b"]
    flat = tmp_path / "flat"
    write_parquet(flat / "x.parquet", {"text": ["a"]})
    assert qa_chain().run(flat, tmp_path / "run2", split="train").counts["records_out"] == 1
    with pytest.raises(InputError, match=r"name no split, so the folder is one split, 'train'"):
        qa_chain().run(flat, tmp_path / "run3", split="test")


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            None,
            r"data.parquet has no column 'text' for the required field 'text' of Question \(did you mean 'Text'\?\)",
        ),
        (
            {"text": "contnet"},
            r"data.parquet has no column 'contnet' \(mapped to 'text'\) \(did you mean 'content'\?\)",
        ),
        (
            {"txt": "content"},
            r"columns maps 'txt', which is not a field of Question \(did you mean 'text'\?\)",
        ),
    ],
)
def test_a_missing_column_is_refused_before_the_run(
    tmp_path: Path, columns: dict[str, str] | None, message: str
) -> None:
    src = write_parquet(tmp_path / "data.parquet", {"Text": ["a"], "content": ["b"]})
    with pytest.raises(InputError, match=message):
        qa_chain().run(src, tmp_path / "run", columns=columns)
    assert not (tmp_path / "run").exists()


def test_a_file_that_is_not_what_its_name_says_is_refused_before_the_run(tmp_path: Path) -> None:
    (tmp_path / "data.parquet").write_text('{"text": "a"}\n')
    with pytest.raises(
        InputError, match=r"data.parquet cannot be read as Parquet .* rename it to .csv or .jsonl"
    ):
        qa_chain().run(tmp_path / "data.parquet", tmp_path / "run")
    (tmp_path / "data.csv").write_bytes(b"")
    with pytest.raises(InputError, match=r"data.csv cannot be read as CSV"):
        qa_chain().run(tmp_path / "data.csv", tmp_path / "run")
    (tmp_path / "mixed").mkdir()
    write_parquet(tmp_path / "mixed" / "a.parquet", {"text": ["a"]})
    (tmp_path / "mixed" / "b.csv").write_text("text\nb\n")
    with pytest.raises(InputError, match=r"mixes kinds of files \(1 .csv, 1 .parquet\)"):
        qa_chain().run(tmp_path / "mixed", tmp_path / "run")
    with pytest.raises(InputError, match=r"split='train' was given, but data.csv is one file"):
        qa_chain().run(tmp_path / "data.csv", tmp_path / "run", split="train")
    assert not (tmp_path / "run").exists()


def test_shards_must_share_the_columns_the_model_reads(tmp_path: Path) -> None:
    class Pair(BaseModel):
        text: str
        note: str = ""

    write_parquet(tmp_path / "s" / "a.parquet", {"text": ["a"], "note": ["x"]})
    write_parquet(tmp_path / "s" / "b.parquet", {"text": ["b"]})
    with pytest.raises(
        InputError, match=r"s/b.parquet has other columns than s/a.parquet \(it lacks 'note'\)"
    ):
        chain_on(Pair, "{{ text }}").run(tmp_path / "s", tmp_path / "run")


def test_the_parquet_reader_reads_ahead_no_more_than_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunk by chunk, what pyarrow has handed over stays within one hop plus one record batch
    of what the reader has yielded, and what pyarrow holds in memory stays well under the file's
    size: the file is never read whole (40,000 rows of incompressible text in 8 row groups)."""
    rows = 40_000
    texts = [os.urandom(60).hex() for _ in range(rows)]
    src = write_parquet(tmp_path / "big.parquet", {"text": texts}, row_group_size=rows // 8)
    size = src.stat().st_size
    pulled = [0]
    original = pq.ParquetFile.iter_batches

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        for batch in original(self, *args, **kwargs):
            pulled[0] += batch.num_rows
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    batch_size = 64
    limit = max(batch_size, inputs.READ_AHEAD_LINES) + tabular.READ_BATCH_ROWS

    held: list[int] = []

    async def main() -> list[int]:
        ahead: list[int] = []
        yielded = 0
        async for chunk in iter_input_chunks(src, batch_size, model=Question):
            yielded += len(chunk)
            ahead.append(pulled[0] - yielded)
            held.append(pa.total_allocated_bytes())
        assert yielded == rows
        return ahead

    before = pa.total_allocated_bytes()
    ahead = anyio.run(main)
    assert max(ahead) <= limit, f"read {max(ahead)} rows ahead of what was yielded (limit {limit})"
    assert pulled[0] == rows
    assert max(held) - before < size / 3, f"pyarrow held {max(held) - before:,} bytes of a {size:,}-byte file"


def test_the_csv_reader_reads_block_by_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow's streaming reader hands over one block at a time, and the reader asks for the
    next block only when the chunks it holds are used up."""
    import pyarrow.csv as pacsv

    monkeypatch.setattr(tabular, "CSV_BLOCK_BYTES", 1 << 12)
    src = tmp_path / "big.csv"
    src.write_text("text\n" + "".join(f"row number {i}\n" for i in range(20_000)))
    pulled = [0]
    original = pacsv.open_csv

    class Counting:
        def __init__(self, reader: Any) -> None:
            self.reader = reader

        def read_next_batch(self) -> Any:
            batch = self.reader.read_next_batch()
            pulled[0] += batch.num_rows
            return batch

        def __getattr__(self, name: str) -> Any:  # schema, close
            return getattr(self.reader, name)

    monkeypatch.setattr(pacsv, "open_csv", lambda *a, **k: Counting(original(*a, **k)))
    block_rows = (1 << 12) // len("row number 10000\n") + 1

    async def main() -> list[int]:
        ahead: list[int] = []
        yielded = 0
        async for chunk in iter_input_chunks(src, 100, model=Question):
            yielded += len(chunk)
            ahead.append(pulled[0] - yielded)
        assert yielded == 20_000
        return ahead

    ahead = anyio.run(main)
    assert max(ahead) <= inputs.READ_AHEAD_LINES + block_rows


def test_a_head_take_stops_reading_and_closes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chainette import take

    src = write_parquet(tmp_path / "big.parquet", {"text": [f"t{i}" for i in range(50_000)]})
    closed: list[bool] = []
    original = pq.ParquetFile.close

    def close(self: Any, *args: Any, **kwargs: Any) -> Any:
        closed.append(True)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "close", close)

    async def main() -> Any:
        result = await Chain("c", [take(3), qa_step()]).arun(src, tmp_path / "run")
        assert len(closed) == 2  # the footer's handle, and the reader's: now, not when the loop ends
        return result

    result = anyio.run(main)
    assert [r["qa.answer"] for r in result.flattened()] == ["re: t0", "re: t1", "re: t2"]
    assert result.counts["records_in"] < 50_000


def test_resume_on_a_parquet_input_sends_nothing_already_answered(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "data.parquet", {"text": [f"q{i}" for i in range(20)]})
    first = qa_chain().run(src, tmp_path / "run")
    assert first.metadata["cache"]["sent"] == 20
    again = qa_chain().run(src, tmp_path / "run", resume=True)
    assert again.metadata["cache"]["sent"] == 0 and again.metadata["cache"]["hits"] == 20
    assert list(again.flattened()) == list(first.flattened())  # same ids, same rows
