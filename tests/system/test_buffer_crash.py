"""Issue 5, acceptance 4: SIGKILL in the middle of buffer commits, again and again.

Every time: SQLite's full ``PRAGMA integrity_check`` is clean, and every reading whose commit was
reported durable and that was not acknowledged is still there.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import RUNNING

KILLS = 100


def _run_and_kill(path: Path, rng: random.Random) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.system.buffer_writer", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    RUNNING.add(proc)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("start"), first
        time.sleep(rng.uniform(0.0, 0.06))  # a random moment inside the commit loop
        proc.send_signal(signal.SIGKILL)
        lines = [first, *proc.stdout.read().splitlines()]
    finally:
        proc.wait()
        RUNNING.discard(proc)
    return lines


@pytest.mark.system
def test_sigkill_during_commits_never_corrupts_or_loses(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    rng = random.Random(5)
    durable_max = 0
    deleted: set[int] = set()
    for kill in range(KILLS):
        lines = _run_and_kill(path, rng)
        maybe_deleted: set[int] = set()
        for line in lines:
            word, *rest = line.split()
            if word == "appended":
                durable_max = int(rest[0])
            elif word == "deleting":
                maybe_deleted = {int(s) for s in rest}
            elif word == "deleted":
                deleted |= maybe_deleted
                maybe_deleted = set()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], f"kill {kill}"
            present = {seq for (seq,) in db.execute("SELECT seq FROM readings")}
            last_seq = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0]
        # Durable and not acknowledged: must be there. An acknowledgement cut short may or may not
        # have been committed; anything newer than the last report may or may not exist.
        must_exist = set(range(1, durable_max + 1)) - deleted - maybe_deleted
        assert must_exist <= present, f"kill {kill}: lost {sorted(must_exist - present)[:10]}"
        assert not (present & deleted), f"kill {kill}: acknowledged readings came back"
        assert last_seq >= durable_max and (not present or max(present) <= last_seq)
        # Continue numbering where the file says, as the gateway does.
        durable_max = max(durable_max, last_seq)
        deleted |= maybe_deleted - present  # acknowledgements cut short that did commit
    assert durable_max > KILLS * 50, "the writer made progress between kills"
