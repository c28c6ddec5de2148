"""The SQLite ledger file: round trips, sharing between processes, housekeeping, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chainette import Completion, Ledger, LedgerError
from chainette.ledger.store import StoredFailure

WRITER = """
import sys
from chainette import Completion, Ledger
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ledger = Ledger(path)
for i in range(n):
    # every process writes its own keys and a shared range, one transaction per put
    ledger.put([(f"{who}-{i}", "eng", "qa", Completion(text=f"{who} {i}", prompt_tokens=i)),
                (f"shared-{i}", "eng", "qa", Completion(text=f"shared {i}"))])
    assert ledger.get([f"{who}-{i}"])[f"{who}-{i}"].text == f"{who} {i}"
ledger.close()
"""


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        c = Completion(
            text='{"a": 1}', finish_reason="length", prompt_tokens=5, completion_tokens=7, reasoning="hm"
        )
        ledger.put([("k", "eng", "qa", c)])
        assert ledger.get(["k", "missing"]) == {"k": c}
        ledger.put([("k", "eng", "qa", Completion(text="other"))])
        assert ledger.get(["k"])["k"].text == '{"a": 1}'  # kept unless replacing
        ledger.put([("k", "eng", "qa", Completion(text="other"))], replace=True)
        assert ledger.get(["k"])["k"].text == "other"


def test_many_keys_in_one_lookup(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.put([(f"k{i}", "eng", "qa", Completion(text=str(i))) for i in range(1200)])
        found = ledger.get([f"k{i}" for i in range(1300)])  # more keys than one SELECT may bind
        assert len(found) == 1200 and found["k1199"].text == "1199"


def test_failures_are_remembered_and_forgotten(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        failure = StoredFailure("qa", "engine_error", "timed out", None, 1)
        ledger.put_failures([("f", failure)])
        assert ledger.get_failures(["f", "g"]) == {"f": failure}
        ledger.forget_failures(["f"])
        assert ledger.get_failures(["f"]) == {}


def test_two_processes_share_one_ledger_without_corrupting_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    Ledger(path).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), who, "300"], stderr=subprocess.PIPE)
        for who in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    with Ledger(path) as ledger:
        assert ledger.check() == "ok"
        info = ledger.info()
        assert info.completions == 900  # 300 + 300 own keys, 300 shared ones stored once
        found = ledger.get([f"{who}-{i}" for who in "ab" for i in range(300)])
        assert len(found) == 600 and found["b-299"].prompt_tokens == 299


def test_info_and_clear(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.put(
            [
                (f"k{i}", "eng", "qa" if i % 2 else "summary", Completion(text="x", prompt_tokens=2))
                for i in range(10)
            ]
        )
        info = ledger.info()
        assert info.completions == 10 and info.bytes > 0
        assert info.by_step["qa"] == {"completions": 5, "prompt_tokens": 10, "completion_tokens": 0}
        assert ledger.clear() == 10 and ledger.info().completions == 0


def test_an_unusable_path_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LedgerError, match=r"--ledger PATH.*--no-cache"):
        Ledger(blocker / "ledger.sqlite")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match=r"garbage\.sqlite"):
        Ledger(garbage)


def test_a_claim_is_granted_once_held_for_others_ended_by_the_answer_and_taken_over_when_expired(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as one, Ledger(path) as two:  # two processes' connections to one file
        assert one.claim(["a", "b"], "one", 60.0) == ({}, ["a", "b"], [])
        assert two.claim(["a", "b", "c"], "two", 60.0) == ({}, ["c"], ["a", "b"])  # one's leases are live
        assert one.claim(["a"], "one", 60.0) == ({}, ["a"], [])  # its own claim: still its to send
        one.put([("a", "e", "s", Completion(text="A"))])  # the answer ends the claim
        answers, granted, held = two.claim(["a", "b"], "two", 60.0)
        assert answers["a"].text == "A" and granted == [] and held == ["b"]
        one.release(["b"], "one")  # an error answer: the next claimant sends it
        assert two.claim(["b"], "two", 60.0) == ({}, ["b"], [])
        two.claim(["d"], "two", -1.0)  # a lease that already ran out: its owner died
        assert one.claim(["d"], "one", 60.0) == ({}, ["d"], [])  # taken over
        two.renew(["d"], "two", 60.0)  # no longer its claim: renewing does not take it back
        assert two.claim(["d"], "two", 60.0) == ({}, [], ["d"])
