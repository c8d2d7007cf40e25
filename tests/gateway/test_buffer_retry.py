"""`BufferWorker` when a commit fails: the window is kept and retried, never silently dropped.

A wrapper around a real `SqliteBuffer` makes ``commit`` raise on demand (an I/O error, a full disk,
or an exception that is no storage error at all, i.e. a bug). Pinned: every reading staged while
commits fail is stored once they succeed, in order, and acknowledged batches are deleted; what
waits in memory is capped, the oldest given up first and counted in ``unstored``; each failure
streak is logged once, with the traceback when it is a bug.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.buffer import Batch, BufferWorker, SqliteBuffer
from gateway.model import Reading, utc_ms

DEADLINE = 10.0


def readings(first: int, count: int) -> list[Reading]:
    ts = utc_ms(datetime.now(UTC))
    return [
        Reading(device="meter", metric="power", value=float(s), unit="W", ts=ts, seq=s)
        for s in range(first, first + count)
    ]


class FailingBuffer(SqliteBuffer):
    """A real SQLite buffer whose ``commit`` raises ``failures`` in turn, then works again;
    ``broken`` makes every commit fail until cleared."""

    def __init__(self, path: Path, failures: Sequence[Exception] = ()) -> None:
        super().__init__(path)
        self.failures = list(failures)
        self.broken: Exception | None = None
        self.attempts = 0

    def commit(
        self,
        readings: Sequence[Reading],
        accepted: Sequence[Batch],
        offsets: Mapping[int, int] | None = None,
    ) -> int:
        self.attempts += 1
        if self.broken is not None:
            raise self.broken
        if self.failures:
            raise self.failures.pop(0)
        return super().commit(readings, accepted, offsets)


def stored_seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [s for (s,) in db.execute("SELECT seq FROM readings ORDER BY seq")]


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition`` holds (checked every 10 ms), at most `DEADLINE` seconds."""
    try:
        async with asyncio.timeout(DEADLINE):
            while not condition():  # noqa: ASYNC110 - the worker signals no event for these
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def worker_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.buffer.worker"]


def test_a_failed_commit_keeps_its_window_and_retries_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.buffer.worker")
    path = tmp_path / "buffer.sqlite3"
    failures = [sqlite3.OperationalError("disk I/O error")] * 3

    async def main() -> FailingBuffer:
        storage = FailingBuffer(path)
        worker = BufferWorker(storage, commit_interval=0.02, retry_delay=0.05)
        await worker.append(readings(1, 5))
        batch = await worker.begin(2)
        assert batch is not None
        storage.failures = list(failures)
        await worker.end(batch, accepted=True)  # its deletion falls into the failing windows
        worker.stage(readings(6, 5))
        await until(lambda: storage.attempts >= 2, "a retry")
        worker.stage(readings(11, 5))  # staged while the failed window waits for its retry
        await until(lambda: not storage.failures and worker.staged == 0, "recovery")
        assert await worker.pending() == 13
        assert worker.unstored == 0
        await worker.close()
        return storage

    storage = asyncio.run(main())

    assert storage.attempts >= 5
    assert stored_seqs(path) == list(range(3, 16)), "every reading stored, the ack applied"
    records = worker_records(caplog)
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in records]
    assert "disk I/O error" in errors[0].getMessage()
    assert errors[0].exc_info is None, "a storage error is expected: one line, no traceback"
    assert any("accepts readings again (0 readings lost" in r.getMessage() for r in records)


def test_a_bug_in_a_timed_commit_is_logged_with_its_traceback_and_counted_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception that is no storage error would fail again on every retry and hold back every
    later reading: the window is given up and counted, and the bug logged once per streak with
    its traceback (repeats at DEBUG); the next window is stored as usual."""
    caplog.set_level(logging.DEBUG, logger="gateway.buffer.worker")
    path = tmp_path / "buffer.sqlite3"

    async def main() -> BufferWorker:
        storage = FailingBuffer(path, [RuntimeError("a bug in the storage code")] * 2)
        worker = BufferWorker(storage, commit_interval=0.02, retry_delay=0.05)

        async def window(first: int, count: int, attempts: int) -> None:
            worker.stage(readings(first, count))  # committed by the worker's own timer task
            await until(lambda: storage.attempts >= attempts and worker.staged == 0, "a commit")

        await window(1, 10, 1)  # fails: a bug
        await window(11, 10, 2)  # fails again: the same streak
        await window(21, 10, 3)  # stored
        await window(5, 2, 4)  # numbers at or below the stored ones: a bug of the caller
        await window(31, 5, 5)  # stored
        await worker.close()
        return worker

    worker = asyncio.run(main())

    assert stored_seqs(path) == list(range(21, 36))
    assert worker.unstored == 22
    records = worker_records(caplog)
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert [type(r.exc_info[1]) for r in errors if r.exc_info] == [RuntimeError, ValueError]
    assert len(errors) == 2, [r.getMessage() for r in records]
    repeats = [r for r in records if r.levelno == logging.DEBUG]
    assert len(repeats) == 1 and repeats[0].exc_info is not None, "the repeat only at DEBUG"


def test_readings_kept_while_commits_fail_are_capped_oldest_first_and_counted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "buffer.sqlite3"
    cap = 25

    async def main() -> BufferWorker:
        storage = FailingBuffer(path)
        worker = BufferWorker(storage, commit_interval=0, retry_delay=0.05, max_retained=cap)
        storage.broken = sqlite3.OperationalError("database or disk is full")
        for first in range(1, 101, 10):
            await worker.append(readings(first, 10))  # never raises: a poller must go on
        assert worker.staged == cap
        assert worker.unstored == 100 - cap
        assert await worker.last_seq() == 100
        storage.broken = None
        await until(lambda: worker.staged == 0, "the retained readings to be stored")
        await worker.close()
        return worker

    worker = asyncio.run(main())

    # Everything polled is stored or counted; what was given up is exactly the oldest.
    assert stored_seqs(path) == list(range(100 - cap + 1, 101))
    assert worker.unstored == 100 - cap
