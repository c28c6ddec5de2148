"""CSV files pyarrow reads wrongly or refuses with the wrong reason: a header naming a column twice
(pyarrow silently reads the first), a cell longer than the reader's block (pyarrow's 'straddles
two block boundaries', which Chainette took for a file that is not CSV)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from tests.helpers import echo, qa_step

from chainette import Chain, InputError, register_engine
from chainette.io import tabular
from chainette.io.inputs import iter_input_chunks


@pytest.fixture(autouse=True)
def fake_engine() -> None:
    register_engine("fake", backend="fake", responder=echo)


def qa_chain() -> Chain:
    return Chain("qa", [qa_step()])


def test_a_header_naming_a_column_twice_is_refused_naming_it(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,text,text\n1,first,second\n")
    with pytest.raises(InputError, match=r"in\.csv has more than one column named 'text' \(columns 2, 3\)"):
        qa_chain().run(src, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run folder


def test_a_duplicate_column_the_model_does_not_read_is_refused_too(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("text,note,note\nhello,a,b\n")
    with pytest.raises(InputError, match=r"'note' \(columns 2, 3\).*Rename or remove"):
        qa_chain().run(src, tmp_path / "run")


def test_cells_over_the_block_size_are_read_whole_at_their_place(tmp_path: Path) -> None:
    big = "x" * (3 << 20)  # 3 MiB: over the reader's 1 MiB block
    first = "y" * (200 << 10)  # in the first row: over the 64 KiB block the header is read with
    src = tmp_path / "in.csv"
    filler = [f"r{i} " + "p" * 600 for i in range(2500)]  # 1.5 MB: the big cell comes in a later block
    rows = [first, "a", "b", *filler, big, "c", big + "z", "end"]
    src.write_text("text\n" + "".join(f"{r}\n" for r in rows))

    async def read() -> list[tuple[str, str]]:
        return [
            (i.where, i.value["text"])
            async for chunk in iter_input_chunks(src, 64, model=None)
            for i in chunk
        ]

    items = anyio.run(read)
    assert [v for _, v in items] == rows  # each once, in order, whole
    assert items[2503][0] == "in.csv row 2503" and items[-1][0] == f"in.csv row {len(rows) - 1}"


def test_a_cell_over_the_largest_block_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tabular, "CSV_BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(tabular, "CSV_MAX_BLOCK_BYTES", 1 << 20)
    src = tmp_path / "in.csv"
    src.write_text("text\n" + "".join(f"row {i}\n" for i in range(50)) + "x" * (2 << 20) + "\nlast\n")
    with pytest.raises(InputError) as info:
        qa_chain().run(src, tmp_path / "run")
    message = str(info.value)
    assert message.startswith("in.csv: a row ")
    assert "larger than 1 MiB" in message and "block size" in message and "Parquet or JSONL" in message
    assert "Parquet?" not in message  # not the hint for a file that is not what its name says
