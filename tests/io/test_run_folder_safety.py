"""A run never deletes what it did not write, never shares its folder with a second writer, and
says plainly what is wrong with a folder it cannot use."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.helpers import Answer, Question, qa_step, read_jsonl
from typer.testing import CliRunner

from chainette import Branch, Chain, Step, apply, register_engine
from chainette._errors import ChainDefinitionError, RunFolderError
from chainette.cli.app import app
from chainette.io import layout


def build_chain() -> Chain:
    register_engine("fake", backend="fake")
    return Chain(
        "safety",
        [qa_step("fake")],
    )


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1. --resume / --overwrite never delete a folder Chainette did not write -----------------


def dataset_with_metadata(folder: Path) -> None:
    """The issue's repro: a dataset folder that happens to hold a metadata.json."""
    folder.mkdir()
    (folder / "metadata.json").write_text('{"license": "x"}')
    (folder / "train.csv").write_text("precious\n")


def folder_with_graph_json(folder: Path) -> None:
    folder.mkdir()
    (folder / "graph.json").write_text('{"nodes": []}')
    (folder / "flattened").mkdir()
    (folder / "flattened" / "000.jsonl").write_text('{"mine": 1}\n')
    (folder / "notes.md").write_text("my notes")


def run_folder_with_a_user_file(folder: Path) -> None:
    build_chain().run([Question(text="q")], output_dir=folder)
    (folder / "notes.txt").write_text("added by hand")


def run_folder_with_a_file_in_a_step_folder(folder: Path) -> None:
    build_chain().run([Question(text="q")], output_dir=folder)
    (folder / "qa" / "analysis.ipynb").write_text("{}")


def run_folder_with_an_unknown_subfolder(folder: Path) -> None:
    build_chain().run([Question(text="q")], output_dir=folder)
    (folder / "plots").mkdir()
    (folder / "plots" / "000.jsonl").write_text("looks like ours, is not\n")


def marker_copied_elsewhere(folder: Path) -> None:
    """A marker from another run, copied next to someone's files."""
    source = folder.parent / "source"
    build_chain().run([Question(text="q")], output_dir=source)
    folder.mkdir()
    (folder / layout.MARKER).write_bytes((source / layout.MARKER).read_bytes())
    (folder / "thesis.tex").write_text("years of work")


FOREIGN: list[Callable[[Path], None]] = [
    dataset_with_metadata,
    folder_with_graph_json,
    run_folder_with_a_user_file,
    run_folder_with_a_file_in_a_step_folder,
    run_folder_with_an_unknown_subfolder,
    marker_copied_elsewhere,
]


@pytest.mark.parametrize("make", FOREIGN, ids=lambda f: f.__name__)
@pytest.mark.parametrize("mode", ["resume", "overwrite"])
def test_a_folder_chainette_did_not_write_is_never_replaced(
    tmp_path: Path, make: Callable[[Path], None], mode: str
) -> None:
    folder = tmp_path / "target"
    make(folder)
    before = tree(folder)
    with pytest.raises(RunFolderError, match="Refusing to replace"):
        build_chain().run([Question(text="q")], output_dir=folder, **{mode: True})
    assert tree(folder) == before


def test_the_issue_repro_through_the_cli_leaves_the_dataset_alone(tmp_path: Path) -> None:
    chain_file = tmp_path / "chain.py"
    chain_file.write_text(
        textwrap.dedent(
            """
            from tests.helpers import qa_step
            from chainette import Chain, register_engine
            register_engine("fake", backend="fake")
            chain = Chain("c", [qa_step("fake")])
            """
        )
    )
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "q"}\n')
    dataset = tmp_path / "dataset"
    dataset_with_metadata(dataset)
    result = CliRunner().invoke(
        app, ["run", f"{chain_file}:chain", "-i", str(inputs), "-o", str(dataset), "--resume"]
    )
    assert result.exit_code == 1, result.output
    assert "Refusing to replace" in result.output and "Traceback" not in result.output
    assert (dataset / "train.csv").read_text() == "precious\n"
    assert sorted(p.name for p in dataset.iterdir()) == ["metadata.json", "train.csv"]


def test_a_run_folder_of_chainette_is_replaced_completely(run_dir: Path) -> None:
    chain = build_chain()
    first = chain.run([Question(text=f"q{i}") for i in range(3)], output_dir=run_dir)
    second = chain.run([Question(text="only")], output_dir=run_dir, overwrite=True)
    assert second.metadata["resumed_from"]["run_id"] == first.run_id
    assert [r["input.text"] for r in read_jsonl(run_dir / "flattened")] == ["only"]
    marker = json.loads((run_dir / layout.MARKER).read_text())
    assert marker["run_id"] == second.run_id and "qa" in marker["folders"]


def test_a_run_that_was_killed_can_be_replaced(run_dir: Path) -> None:
    """A SIGKILL can leave half-written temp files: they are the run's own, so --resume works."""
    build_chain().run([Question(text="q")], output_dir=run_dir)
    (run_dir / "metadata.json.tmp").write_text('{"half')
    build_chain().run([Question(text="q")], output_dir=run_dir, resume=True)
    assert not (run_dir / "metadata.json.tmp").exists()


# -- 2. one writer per run folder -----------------------------------------------------------

SLOW_CHAIN = """
import sys, time
from pydantic import BaseModel
from chainette import Chain, apply

class Row(BaseModel):
    n: int

@apply
def slow(row: Row) -> Row:
    time.sleep(0.002)
    return row

chain = Chain("slow", [slow], batch_size=50)

if __name__ == "__main__":
    chain.run([Row(n=i) for i in range(int(sys.argv[2]))], sys.argv[1], resume=True)
"""


def start_holder(tmp_path: Path, folder: Path, rows: int) -> subprocess.Popen[bytes]:
    script = tmp_path / "slow_chain.py"
    script.write_text(SLOW_CHAIN)
    log = tmp_path / "holder.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(folder), str(rows)], stderr=err)
    lock = folder / layout.LOCK
    deadline = time.monotonic() + 30
    while not (lock.is_file() and lock.read_text().startswith("pid")):  # the holder wrote its pid
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the run never took its lock"
        time.sleep(0.02)
    return proc


def test_a_second_writer_is_refused_and_the_first_is_unharmed(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "x"
    holder = start_holder(tmp_path, folder, rows=2000)
    try:
        with pytest.raises(RunFolderError, match=rf"in use by a running Chainette run \(pid {holder.pid} "):
            Chain("slow", [apply(lambda r: r, id="slow")]).run([{"n": 1}], folder, resume=True)
        with pytest.raises(RunFolderError, match="in use"):
            Chain("slow", [apply(lambda r: r, id="slow")]).run([{"n": 1}], folder, overwrite=True)
    finally:
        assert holder.wait(timeout=60) == 0
    rows = read_jsonl(folder / "flattened")
    meta = json.loads((folder / "metadata.json").read_text())
    assert len(rows) == 2000 == len({r["_id"] for r in rows}) == meta["counts"]["records_out"]
    assert meta["status"] == "completed"


def test_a_killed_holder_does_not_block_resume(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "x"
    holder = start_holder(tmp_path, folder, rows=100_000)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert (folder / layout.LOCK).exists()  # the file stays; the lock went with the process
    result = subprocess.run(
        [sys.executable, str(tmp_path / "slow_chain.py"), str(folder), "300"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(folder / "flattened")) == 300


def test_two_runs_in_one_process_cannot_share_a_folder(run_dir: Path) -> None:
    import anyio

    anyio.run(two_runs, run_dir)


async def two_runs(run_dir: Path) -> None:
    import anyio

    register_engine("slow", backend="fake", latency=0.05)
    chain = Chain(
        "c",
        [qa_step("slow")],
    )
    started = anyio.Event()

    def on_event(kind: str, data: dict[str, object]) -> None:
        if kind == "run_started":
            started.set()

    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: chain.arun([Question(text=str(i)) for i in range(20)], run_dir, on_event=on_event)
        )
        await started.wait()
        try:
            await chain.arun([Question(text="x")], run_dir, resume=True)
        except RunFolderError as exc:
            errors.append(exc)
    assert len(errors) == 1 and f"pid {os.getpid()}" in str(errors[0])
    assert len(read_jsonl(run_dir / "flattened")) == 20


# -- 3. ids never collide with the run folder's own names ----------------------------------


@pytest.mark.parametrize(
    "name", ["flattened", "failures", "metadata", "graph", "Flattened", "FAILURES", "input"]
)
def test_reserved_ids_are_refused_for_every_kind_of_node(name: str) -> None:
    register_engine("fake", backend="fake")
    with pytest.raises(ChainDefinitionError, match="reserved"):
        Step(id=name, input_model=Question, output_model=Answer, engine_name="fake", user_prompt="x")
    with pytest.raises(ChainDefinitionError, match="reserved"):
        apply(lambda q: q, id=name)
    with pytest.raises(ChainDefinitionError, match="reserved"):
        Branch(name=name, steps=[apply(lambda q: q, id="a")])
    with pytest.raises(ChainDefinitionError, match="reserved"):
        Branch(name="b", steps=[apply(lambda q: q, id="a")]).join(name)


def test_every_name_the_writer_uses_is_reserved(run_dir: Path) -> None:
    """The list the id check uses covers every entry a run folder holds (one list, two users)."""
    build_chain().run([Question(text="q")], output_dir=run_dir)
    own = {p.name for p in run_dir.iterdir()} - {"qa"}
    stems = {name.lstrip(".").split(".")[0] for name in own}
    assert stems - {"chainette-run"} <= layout.RESERVED_NAMES


# -- 6. file-system errors are said plainly ------------------------------------------------


def test_a_folder_that_cannot_be_removed_is_a_clear_error(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    build_chain().run([Question(text="q")], output_dir=run_dir)

    def refuse(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(layout.os, "unlink", refuse)  # root ignores chmod; this is what EACCES looks like
    with pytest.raises(RunFolderError) as caught:
        build_chain().run([Question(text="q")], output_dir=run_dir, overwrite=True)
    message = str(caught.value)
    assert "Permission denied" in message and str(run_dir) in message and "permissions" in message
    assert not (run_dir / layout.LOCK).read_text()  # the lock was let go


def test_an_output_path_under_a_file_is_a_clear_error_in_the_cli(tmp_path: Path) -> None:
    chain_file = tmp_path / "chain.py"
    chain_file.write_text(
        "from chainette import Chain, apply\nchain = Chain('c', [apply(lambda r: r, id='same')])\n"
    )
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "q"}\n')
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(
        app, ["run", f"{chain_file}:chain", "-i", str(inputs), "-o", str(tmp_path / "afile" / "run")]
    )
    assert result.exit_code == 1, result.output
    assert "Cannot create the output folder" in result.output and "Traceback" not in result.output
