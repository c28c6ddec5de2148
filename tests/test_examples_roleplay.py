"""examples/roleplay.py (BatchFactory's role-play loop) on the fake engine: a 7-turn teacher /
student dialogue, the teacher's summary, and the script with the characters' names."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import EXAMPLES, load_example

from chainette import register_engine


def test_the_roleplay_example_runs_on_the_fake_engine(tmp_path: Path) -> None:
    example = load_example("roleplay")  # registers "local" as the embedded engine ...
    register_engine("local", backend="fake")  # ... which the test replaces
    assert example.chain.check().issues == []
    result = example.chain.run(EXAMPLES / "roleplay.jsonl", output_dir=tmp_path / "run")
    rows = list(result.flattened())
    assert result.counts == {"records_in": 2, "records_out": 2, "failures": 0, "filtered": 0}
    for row, names in zip(rows, [("Alice", "Bob"), ("Mrs. Lee", "Sam")], strict=True):
        turns = row["lesson.turns"]
        assert [t["speaker"] for t in turns] == ["teacher", "student"] * 3 + ["teacher"]
        assert row["lesson.stop_reason"] == "turns" and all(t["text"] for t in turns)
        assert all(len(t["text"]) <= (160 if t["speaker"] == "teacher" else 100) for t in turns)
        lines = row["to_script.text"].split("\n")
        assert len(lines) == 8 and lines[-1] == f"{names[0]}: {row['summary.summary']}"
        assert [line.split(": ", 1)[0] for line in lines[:7]] == [names[0], names[1]] * 3 + [names[0]]
    assert result.metadata["cache"]["sent"] == 2 * 7 + 2
    graph = (tmp_path / "run" / "graph.json").read_text()
    assert '"kind": "dialogue"' in graph
