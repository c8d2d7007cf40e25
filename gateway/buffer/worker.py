"""Runs a synchronous `Buffer` on one dedicated thread, with group commits.

One thread, not the default pool: SQLite connections are best used from a single thread, and the
calls must be serialised anyway. The thread is named and joined on ``close``.

Group commit: `stage` (called by the pollers) and ``end(accepted=True)`` (called by the publisher)
only collect work; it is written in one ``commit`` transaction at most ``commit_interval`` seconds
later. That bounds SD-card writes to one transaction per window, whatever the number of devices, at
the price of losing at most one window of readings on a power cut (``commit_interval = 0`` commits
each call at once). Acknowledged batches stay in flight until their deletion is committed, so they
are never handed out twice.

Storage failures (disk full, I/O error) never reach the pollers: the readings of the failed window
are counted in ``unstored`` and logged once per failure streak, and acknowledged batches are retried
with the next window.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway.buffer.base import Batch, Buffer, Gap
from gateway.model import Reading

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Shortest wait before retrying a failed commit of acknowledged batches (a full disk stays full).
RETRY_DELAY = 1.0


class BufferWorker:
    """Async facade over a `Buffer`; every storage call runs on the worker thread, in call order."""

    def __init__(self, buffer: Buffer, *, commit_interval: float = 0.0) -> None:
        self.buffer = buffer
        self.commit_interval = commit_interval
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._staged: list[Reading] = []
        self._offsets: dict[int, int] = {}
        self._accepted: list[Batch] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._failing = False
        #: Set after each commit that stored readings; the publisher waits on it instead of polling.
        self.appended = asyncio.Event()
        #: Readings that could not be stored (storage failure); they are lost, and counted.
        self.unstored = 0
        #: Readings dropped by the buffer's limits since this worker started.
        self.dropped_now = 0
        #: Called with the number of readings the limits just dropped (status, alarms).
        self.on_dropped: Callable[[int], None] | None = None

    async def _call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def stage(self, readings: Sequence[Reading], *, clock_offset_ms: int | None = None) -> None:
        """Queue ``readings`` for the next commit; returns at once (never waits on the disk).

        ``clock_offset_ms`` (see `gateway.clock`) is kept with readings whose time is untrusted, so
        that they can be re-stamped later.
        """
        self._staged.extend(readings)
        if clock_offset_ms is not None:
            self._offsets.update((r.seq, clock_offset_ms) for r in readings if not r.time_synced)
        self._schedule()

    async def append(self, readings: Sequence[Reading]) -> None:
        """Store ``readings`` now, together with anything staged, and return once committed."""
        self._staged.extend(readings)
        await self.flush()

    async def end(self, batch: Batch, *, accepted: bool) -> None:
        """Acknowledge (deleted with the next commit) or reject (deliverable again at once)."""
        if accepted:
            self._accepted.append(batch)
            if self.commit_interval == 0:
                await self.flush()
            else:
                self._schedule()
        else:
            await self._call(self.buffer.end, batch, accepted=False)

    def _schedule(self, delay: float | None = None) -> None:
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self.commit_interval if delay is None else delay
        self._timer = loop.call_later(wait, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.flush(), name="buffer-commit")
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def flush(self) -> None:
        """Commit everything staged now; storage errors are counted, never raised."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        readings, self._staged = self._staged, []
        accepted, self._accepted = self._accepted, []
        offsets, self._offsets = self._offsets, {}
        if not readings and not accepted:
            return
        try:
            dropped = await self._call(self.buffer.commit, readings, accepted, offsets)
        except sqlite3.Error as exc:
            self._failed(exc, readings, accepted)
            return
        if self._failing:
            log.info("buffer accepts readings again (%d readings lost meanwhile)", self.unstored)
            self._failing = False
        if dropped:
            self.dropped_now += dropped
            log.warning("buffer full: dropped the %d oldest undelivered readings", dropped)
            if self.on_dropped is not None:
                self.on_dropped(dropped)
        if readings:
            self.appended.set()

    def _failed(self, exc: sqlite3.Error, readings: list[Reading], accepted: list[Batch]) -> None:
        self.unstored += len(readings)
        self._accepted = accepted + self._accepted  # deleting them is retried with the next window
        if self._accepted:
            self._schedule(max(self.commit_interval, RETRY_DELAY))
        if not self._failing:
            log.error(
                "cannot write the buffer (%s); polling goes on, readings are counted as lost", exc
            )
        self._failing = True

    async def begin(self, limit: int, *, live: bool | None = None) -> Batch | None:
        return await self._call(self.buffer.begin, limit, live=live)

    async def mark_live_boundary(self) -> None:
        await self._call(self.buffer.mark_live_boundary)

    async def restamp(self, offset_ms: int) -> int:
        """Commit what is staged, then re-stamp and release the held readings."""
        await self.flush()
        count = await self._call(self.buffer.restamp, offset_ms)
        self.appended.set()
        return count

    async def release_unsynced(self) -> int:
        """Commit what is staged, then release the held readings flagged as unsynced."""
        await self.flush()
        count = await self._call(self.buffer.release_unsynced)
        self.appended.set()
        return count

    async def pending(self) -> int:
        return await self._call(self.buffer.pending)

    async def last_seq(self) -> int:
        """Highest sequence number stored or staged."""
        stored = await self._call(self.buffer.last_seq)
        return max([stored, *(r.seq for r in self._staged[-1:])])

    async def dropped(self) -> int:
        return await self._call(self.buffer.dropped)

    async def store(
        self,
        readings: Sequence[Reading],
        *,
        adopted: Sequence[Batch] = (),
        offsets: dict[int, int] | None = None,
    ) -> bool:
        """Store ``readings`` now (with what is staged and acknowledged), registering the
        ``adopted`` batches as in flight; True once committed, False if the storage failed (the
        caller still holds the readings and tries again later; nothing is counted here)."""
        self._staged.extend(readings)
        self._offsets.update(offsets or {})
        staged, self._staged = self._staged, []
        accepted, self._accepted = self._accepted, []
        offsets_now, self._offsets = self._offsets, {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            dropped = await self._call(self.buffer.commit, staged, accepted, offsets_now, adopted)
        except sqlite3.Error as exc:
            self._accepted = accepted + self._accepted
            if self._accepted:
                self._schedule(max(self.commit_interval, RETRY_DELAY))
            if not self._failing:
                log.error("cannot write the buffer (%s); readings stay in memory meanwhile", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("buffer accepts readings again")
            self._failing = False
        if dropped:
            self._dropped(dropped)
        if staged:
            self.appended.set()
        return True

    def _dropped(self, dropped: int) -> None:
        self.dropped_now += dropped
        log.warning("buffer full: dropped the %d oldest undelivered readings", dropped)
        if self.on_dropped is not None:
            self.on_dropped(dropped)

    async def held_from(self) -> int | None:
        """See `gateway.buffer.Buffer.held_from`."""
        return await self._call(self.buffer.held_from)

    async def seq_floor(self) -> int:
        """See `gateway.buffer.Buffer.seq_floor`."""
        return await self._call(self.buffer.seq_floor)

    async def reserve(self, upto: int, *, safe: int) -> None:
        """See `gateway.buffer.Buffer.reserve`; raises the storage's error."""
        await self._call(self.buffer.reserve, upto, safe=safe)

    async def finish(self, last: int) -> None:
        """See `gateway.buffer.Buffer.finish`; raises the storage's error."""
        await self._call(self.buffer.finish, last)

    async def declared_gaps(self) -> list[Gap]:
        return await self._call(self.buffer.declared_gaps)

    async def gap_published(self, gap: Gap) -> None:
        await self._call(self.buffer.gap_published, gap)

    async def close(self) -> None:
        """Commit what is staged, then release the storage and join the thread."""
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        await self.flush()
        await self._call(self.buffer.close)
        self._pool.shutdown(wait=True)
