"""Issue 5: a full disk gives a clear error, polling goes on, and every lost reading is counted.

Since issue 16 a failed commit keeps its readings in memory (capped) and retries, so a short
outage of the card loses nothing; what the cap gives up is counted as before.

The buffer lives on a real 512 KiB tmpfs that fills up, not on a simulated error. Mounting needs
root, which the test command (scripts/test, CI) has.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.buffer import BufferWorker, SqliteBuffer
from gateway.model import Reading, utc_ms


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root (scripts/test and CI run as root)")
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def readings(first: int, count: int) -> list[Reading]:
    ts = utc_ms(datetime.now(UTC))
    return [
        Reading(device="meter", metric="power", value=float(s), unit="W", ts=ts, seq=s)
        for s in range(first, first + count)
    ]


def test_disk_full_is_counted_logged_once_and_recovers(
    tiny_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the disk is full, polls wait in memory up to ``max_retained`` readings; beyond that
    the oldest are given up and counted. Once there is room, everything retained is stored."""
    filler = tiny_fs / "filler"
    filler.write_bytes(b"\0" * 160_000)  # space we can give back later
    path = tiny_fs / "buffer.sqlite3"
    caplog.set_level(logging.INFO, logger="gateway.buffer.worker")
    cap, polled_while_full = 300, 500

    async def scenario() -> tuple[int, int, int, int]:
        worker = BufferWorker(SqliteBuffer(path), commit_interval=0, max_retained=cap)
        seq, first_unstored, staged_while_full = 1, 0, 0
        for _ in range(400):  # poll after poll until the disk is full, and then some more
            await worker.append(readings(seq, 100))  # never raises: a poller must go on
            if worker.staged and not first_unstored:
                first_unstored = seq  # this poll is the first the disk could not take
            if first_unstored:
                staged_while_full += 100
            seq += 100
            if staged_while_full >= polled_while_full:
                break
        assert first_unstored, "the disk never filled up"
        assert worker.staged == cap
        assert worker.unstored == staged_while_full - cap
        filler.unlink()  # the disk has room again
        await worker.append(readings(seq, 100))
        seq += 100
        assert worker.staged == 0
        stored = await worker.pending()
        await worker.close()
        return seq - 1, stored, worker.unstored, first_unstored

    polled, stored, unstored, first_unstored = asyncio.run(scenario())
    # Every reading polled is either stored or counted as lost; nothing vanishes silently.
    assert stored + unstored == polled
    assert unstored == polled_while_full - cap
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write the buffer" in errors[0].getMessage()
    assert "full" in errors[0].getMessage(), "the log names the cause"
    assert any("accepts readings again" in r.getMessage() for r in caplog.records)
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        seqs = [s for (s,) in db.execute("SELECT seq FROM readings ORDER BY seq")]
    finally:
        db.close()
    # Exactly the oldest readings of the outage were given up; the rest, newest poll included,
    # is stored.
    lost = range(first_unstored, first_unstored + unstored)
    assert seqs == [s for s in range(1, polled + 1) if s not in lost]
