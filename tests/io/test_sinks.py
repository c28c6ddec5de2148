"""Output formats roll to a new part instead of dropping a column that appears later."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq

from chainette.io.sinks import make_sink
from chainette.runtime.result import read_rows


def test_jsonl_rolls_every_max_lines(tmp_path: Path) -> None:
    sink = make_sink("jsonl", tmp_path, max_lines=3)
    sink.write_rows([{"a": i} for i in range(4)])
    sink.write_rows([{"a": i} for i in range(4, 7)])
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000.jsonl", "001.jsonl", "002.jsonl"]
    assert [r["a"] for r in read_rows(tmp_path)] == list(range(7))


def test_csv_new_column_starts_a_new_part(tmp_path: Path) -> None:
    sink = make_sink("csv", tmp_path, max_lines=100)
    sink.write_rows([{"a": 1}, {"a": 2, "b": [1, 2]}, {"a": 3}])
    sink.close()
    with (tmp_path / "000.csv").open() as a, (tmp_path / "001.csv").open() as b:
        first, second = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert first == [{"a": "1"}]
    assert second == [{"a": "2", "b": "[1, 2]"}, {"a": "3", "b": ""}]


def test_parquet_schema_change_starts_a_new_part(tmp_path: Path) -> None:
    sink = make_sink("parquet", tmp_path, max_lines=100)
    sink.write_rows([{"a": 1, "s": "x"}])
    sink.write_rows([{"a": 2, "s": "y"}])
    sink.write_rows([{"a": 3, "t": 1.5}])
    sink.close()
    assert pq.read_table(tmp_path / "000.parquet").to_pylist() == [{"a": 1, "s": "x"}, {"a": 2, "s": "y"}]
    assert pq.read_table(tmp_path / "001.parquet").to_pylist() == [{"a": 3, "t": 1.5}]
