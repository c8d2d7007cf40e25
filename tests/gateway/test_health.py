"""The health verdict (gateway/health.py): a hung storage call is seen on the buffer's own thread.

A real `BufferWorker` over a real `SqliteBuffer` whose commit blocks (a card that stopped
answering): while the call runs, ``busy_since`` says since when, and the verdict turns bad only
past `STORAGE_DEADLINE`. A commit that fails quickly (a full card) is not a hang.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.buffer import BufferWorker, SqliteBuffer
from gateway.health import STORAGE_DEADLINE, judge
from gateway.model import Quality, Reading


class StuckCard(SqliteBuffer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.fail = False

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            raise sqlite3.OperationalError("database or disk is full")
        self.release.wait(30)
        return super().commit(*args, **kwargs)


def reading(seq: int) -> Reading:
    return Reading(
        device="d",
        metric="m",
        value=1.0,
        unit="1",
        ts=datetime.now(UTC).replace(microsecond=0),
        seq=seq,
        quality=Quality.GOOD,
    )


def test_a_storage_call_that_never_returns_fails_the_verdict(tmp_path: Path) -> None:
    async def main() -> None:
        card = StuckCard(tmp_path / "b.sqlite3")
        worker = BufferWorker(card, commit_interval=0)
        assert worker.busy_since is None
        write = asyncio.create_task(worker.append([reading(1)]))
        while worker.busy_since is None:  # noqa: ASYNC110 - set on the buffer thread
            await asyncio.sleep(0.01)
        started = worker.busy_since
        assert judge([], started, started + 1).ok, "a slow call is not yet a hang"
        late = judge([], started, started + STORAGE_DEADLINE + 1)
        assert not late.ok and "storage call has run" in late.problems[0]
        card.release.set()
        await write
        assert worker.busy_since is None
        assert judge([], worker.busy_since, time.monotonic() + 1e6).ok
        card.fail = True  # fails fast: retried by the worker, never a hang
        worker.stage([reading(2)])
        await asyncio.sleep(0.2)
        assert worker.busy_since is None or time.monotonic() - worker.busy_since < 1
        await worker.close()

    asyncio.run(main())
