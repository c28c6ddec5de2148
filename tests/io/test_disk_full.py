"""A disk that fills up in the middle of a run: the run ends ``failed`` with the reason and what
to do, its files keep whole rows only, and ``--resume`` once space is freed gives the
uninterrupted run's folder without sending anything twice.

The full disk is simulated: every file opened for writing under the run folder goes through
:class:`SmallDisk`, which writes what still fits and then raises ``OSError(ENOSPC)``, as a real
full disk does; deleting a file frees its space. One more test uses a real tiny tmpfs (root only).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from tests.helpers import Question, read_jsonl

from chainette import Chain, RunFolderError, Step, register_engine
from chainette.io import writer as writer_module

RESERVE = ".chainette-reserve"


class Essay(BaseModel):
    body: str


def long_answer(request: Any) -> dict[str, Any]:
    return {"body": request.messages[-1]["content"] + " " + "lorem ipsum " * 100}


def build_chain() -> Chain:
    step = Step(
        id="essay", input_model=Question, output_model=Essay, engine_name="fake", user_prompt="{{ text }}"
    )
    return Chain("essays", [step], batch_size=4)


QUESTIONS = [Question(text=f"question {i}") for i in range(40)]


class SmallDisk:
    """A disk of ``capacity`` bytes holding every file under ``root``."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root, self.capacity = root, capacity
        self.full = 0
        """How many writes found it full."""

    def free(self) -> int:
        used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return self.capacity - used


class _DiskFile:
    def __init__(self, disk: SmallDisk, fh: Any) -> None:
        self._disk, self._fh = disk, fh

    def write(self, data: Any) -> int:
        self._fh.flush()
        free = max(self._disk.free(), 0)
        size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        if size > free:  # what fits is written, then the error: as a real disk does
            self._fh.write(data[:free])
            self._fh.flush()
            self._disk.full += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written: int = self._fh.write(data)
        return written

    def __enter__(self) -> _DiskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    disk = SmallDisk(root, capacity=1 << 40)
    real_open = Path.open

    def open_on_disk(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(self, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and self.resolve().is_relative_to(root.resolve()):
            return _DiskFile(disk, fh)
        return fh

    monkeypatch.setattr(Path, "open", open_on_disk)
    monkeypatch.setattr(writer_module, "FLUSH_ROWS", 4)  # rows are written during the run, not at its end
    yield disk


def rows_are_whole(folder: Path) -> None:
    for file in [*folder.rglob("*.jsonl")]:
        data = file.read_bytes()
        assert data[-1:] in (b"", b"\n"), f"{file} ends in the middle of a row"
        for line in data.splitlines():
            json.loads(line)


def test_a_full_disk_fails_the_run_with_the_reason_then_resume_is_exact(
    small_disk: SmallDisk, tmp_path: Path
) -> None:
    register_engine("fake", backend="fake", responder=long_answer)
    run_dir = small_disk.root / "run"
    # room for the folder, its reserve and about a third of the rows
    small_disk.capacity = writer_module.RESERVE_BYTES + 60_000

    with pytest.raises(RunFolderError) as info:
        build_chain().run(QUESTIONS, output_dir=run_dir)

    message = str(info.value)
    assert "disk is full (ENOSPC" in message and "--resume" in message and "Free space" in message
    assert f"writing {run_dir}" in message and ".jsonl" in message  # the file it was writing
    assert small_disk.full >= 1
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "failed"
    assert "ENOSPC" in meta["error"] and "--resume" in meta["error"]
    assert 0 < len(read_jsonl(run_dir / "essay")) < len(QUESTIONS)  # stopped in the middle
    rows_are_whole(run_dir)  # the row being written when the disk filled was cut back off
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [
        ".chainette-run.json",
        ".chainette-run.lock",
    ]  # no reserve left behind, no half temp file
    assert not list(run_dir.glob("*.tmp"))

    small_disk.capacity = 1 << 40  # space freed
    resumed = build_chain().run(QUESTIONS, output_dir=run_dir, resume=True)
    reference = build_chain().run(QUESTIONS, output_dir=tmp_path / "ref", ledger=tmp_path / "fresh.sqlite")
    assert resumed.metadata["status"] == "completed"
    assert resumed.metadata["resumed_from"]["status"] == "failed"
    cache = resumed.metadata["cache"]
    assert cache["hits"] > 0 and cache["hits"] + cache["sent"] == reference.metadata["cache"]["sent"]
    for folder in ("essay", "flattened"):
        mine = sorted(read_jsonl(run_dir / folder), key=lambda r: r["_id"])
        assert mine == sorted(read_jsonl(tmp_path / "ref" / folder), key=lambda r: r["_id"])
    assert not (run_dir / RESERVE).exists()


def test_a_disk_without_room_for_the_reserve_fails_before_any_request(small_disk: SmallDisk) -> None:
    register_engine("fake", backend="fake", responder=long_answer)
    small_disk.capacity = writer_module.RESERVE_BYTES // 2
    with pytest.raises(RunFolderError, match=r"disk is full \(ENOSPC.*--resume"):
        build_chain().run(QUESTIONS, output_dir=small_disk.root / "run")
    assert not (small_disk.root / "run" / RESERVE).exists()


def test_the_cli_says_it_in_one_line(small_disk: SmallDisk, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from chainette.cli import app

    chain_file = tmp_path / "essays.py"
    chain_file.write_text(
        "from pydantic import BaseModel\n"
        "from chainette import Chain, Step, register_engine\n"
        "class Question(BaseModel):\n    text: str\n"
        "class Essay(BaseModel):\n    body: str\n"
        "register_engine('fake', backend='fake', responder=lambda r: "
        "{'body': r.messages[-1]['content'] + ' ' + 'lorem ipsum ' * 100})\n"
        "chain = Chain('essays', [Step(id='essay', input_model=Question, output_model=Essay, "
        "engine_name='fake', user_prompt='{{ text }}')], batch_size=4)\n"
    )
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"text": f"question {i}"}) + "\n" for i in range(40)))
    small_disk.capacity = writer_module.RESERVE_BYTES + 60_000
    run_dir = small_disk.root / "run"
    result = CliRunner().invoke(
        app, ["run", f"{chain_file}:chain", "-q", "-i", str(inputs), "-o", str(run_dir)]
    )
    assert result.exit_code == 1, result.output
    error = " ".join(result.output.split())
    assert "Error: Cannot write the run folder" in error and "disk is full (ENOSPC" in error
    assert "--resume" in error and "Traceback" not in result.output
    assert json.loads((run_dir / "metadata.json").read_text())["status"] == "failed"


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    return done.returncode == 0


def test_a_real_full_disk_on_a_tiny_tmpfs(tmp_path: Path) -> None:
    mount = tmp_path / "tiny"
    if not _mount_tmpfs(mount, "512k"):
        pytest.skip("needs root and tmpfs to mount a tiny disk")
    try:
        register_engine("fake", backend="fake", responder=long_answer)
        with pytest.raises(RunFolderError, match=r"disk is full \(ENOSPC"):
            build_chain().run([Question(text=f"question {i}") for i in range(400)], output_dir=mount / "run")
        meta = json.loads((mount / "run" / "metadata.json").read_text())
        assert meta["status"] == "failed" and "ENOSPC" in meta["error"]
        rows_are_whole(mount / "run")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
