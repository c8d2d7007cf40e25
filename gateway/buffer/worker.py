"""Runs a synchronous `Buffer` on one dedicated thread, with group commits.

One thread, not the default pool: SQLite connections are best used from a single thread, and the
calls must be serialised anyway. The thread is named and joined on ``close``.

Group commit: `stage` (called by the pollers) and ``end(accepted=True)`` (called by the publisher)
only collect work; it is written in one ``commit`` transaction at most ``commit_interval`` seconds
later. That bounds SD-card writes to one transaction per window, whatever the number of devices, at
the price of losing at most one window of readings on a power cut (``commit_interval = 0`` commits
each call at once). Acknowledged batches stay in flight until their deletion is committed, so they
are never handed out twice.

Storage failures (disk full, I/O error, a damaged page) never reach the pollers and lose nothing
at first: the failed window (readings and acknowledgements) stays in memory, ahead of what is
staged later, and the commit is retried every ``retry_delay`` seconds (or with the next window, if
later). What waits in memory is capped at ``max_retained`` readings: beyond it the oldest are given
up and counted in ``unstored`` (RAM is the scarcer resource on a Pi, and the newest readings are
the ones nothing else covers). A failure streak is logged once, naming its cause.

Any other exception from a commit is a bug (readings whose sequence numbers are not above the
stored ones, a value the storage cannot encode, an acknowledgement of a batch not in flight):
retrying would fail the same way and hold every later reading back, so that window is given up,
its readings counted in ``unstored``, and the exception logged with its traceback once per streak
(repeats at DEBUG). `append` raises it to its caller instead, as before. The acknowledgements of
such a window are not retried: those readings stay stored and go out again after a restart (a
duplicate, never a loss).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway.buffer.base import Batch, Buffer, Gap
from gateway.model import Reading

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Shortest wait before retrying a failed commit (a full disk stays full for a while).
RETRY_DELAY = 1.0
#: Most readings kept in memory while commits fail (about 10 MB); beyond it the oldest are lost.
MAX_RETAINED = 50_000


def _is_storage_error(exc: Exception) -> bool:
    """Whether ``exc`` is about the medium (full, unwritable, damaged), not about the statement."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return False
    return isinstance(exc, sqlite3.Error | OSError)


class BufferWorker:
    """Async facade over a `Buffer`; every storage call runs on the worker thread, in call order."""

    def __init__(
        self,
        buffer: Buffer,
        *,
        commit_interval: float = 0.0,
        max_retained: int = MAX_RETAINED,
        retry_delay: float = RETRY_DELAY,
    ) -> None:
        self.buffer = buffer
        self.commit_interval = commit_interval
        self.max_retained = max_retained
        self.retry_delay = retry_delay
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._staged: list[Reading] = []
        self._offsets: dict[int, int] = {}
        self._accepted: list[Batch] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._failing = False
        self._bug_logged = False
        #: Set after each commit that stored readings; the publisher waits on it instead of polling.
        self.appended = asyncio.Event()
        #: Readings given up (lost, and counted): beyond ``max_retained`` while the storage
        #: fails, or in a window whose commit failed for a bug (module docstring).
        self.unstored = 0
        #: Readings dropped by the buffer's limits since this worker started.
        self.dropped_now = 0
        #: Called with the number of readings the limits just dropped (status, alarms).
        self.on_dropped: Callable[[int], None] | None = None
        #: Monotonic time when the storage call now running on the buffer thread began (None:
        #: the thread is idle). A call that never ends is a hung card or a wedged SQLite lock:
        #: `gateway.health` reports it and the systemd watchdog stops being fed.
        self.busy_since: float | None = None

    async def _call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._timed, fn, args, kwargs)

    def _timed(
        self, fn: Callable[..., T], args: tuple[object, ...], kwargs: dict[str, object]
    ) -> T:
        """Runs on the buffer thread: ``fn`` with `busy_since` set while it runs."""
        self.busy_since = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.busy_since = None

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
        """Store ``readings`` now, together with anything staged, and return once committed.

        A storage error is not raised (the readings wait in memory, see the module docstring); an
        exception that is a bug, such as sequence numbers at or below the stored ones, is.
        """
        self._staged.extend(readings)
        await self._flush(reraise=True)

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

    @property
    def failing(self) -> bool:
        """True from a failed commit until the next one succeeds (local status)."""
        return self._failing

    @property
    def staged(self) -> int:
        """Readings polled but not committed yet (in memory: a crash loses them)."""
        return len(self._staged)

    def _schedule(self, delay: float | None = None) -> None:
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self.commit_interval if delay is None else delay
        if self._failing:  # while the storage fails, a new poll does not hurry the retry
            wait = max(wait, self.retry_delay)
        self._timer = loop.call_later(wait, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.flush(), name="buffer-commit")
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def flush(self) -> None:
        """Commit everything staged now; never raises (storage errors are retried, bugs logged)."""
        await self._flush(reraise=False)

    async def _flush(self, *, reraise: bool) -> None:
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
        except Exception as exc:  # storage errors and bugs (module docstring)
            if not _is_storage_error(exc):
                self._gave_up(exc, readings, reraise=reraise)
                return
            self._failed(exc, readings, accepted, offsets)
            return
        self._committed(dropped, stored=bool(readings))

    def _failed(
        self,
        exc: Exception,
        readings: list[Reading],
        accepted: list[Batch],
        offsets: dict[int, int],
    ) -> None:
        """A storage error: put the window back ahead of what was staged meanwhile, cap what
        waits in memory (oldest given up first), retry later."""
        self._staged = readings + self._staged
        self._offsets = {**offsets, **self._offsets}
        self._accepted = accepted + self._accepted
        overflow = len(self._staged) - self.max_retained
        if overflow > 0:
            lost, self._staged = self._staged[:overflow], self._staged[overflow:]
            for reading in lost:
                self._offsets.pop(reading.seq, None)
            self.unstored += overflow
        if not self._failing:
            log.error(
                "cannot write the buffer (%s); polling goes on, up to %d readings wait in memory "
                "and the commit is retried",
                exc,
                self.max_retained,
            )
        self._failing = True
        self._schedule(max(self.commit_interval, self.retry_delay))

    def _gave_up(self, exc: Exception, readings: list[Reading], *, reraise: bool) -> None:
        """A bug: the window cannot be stored as it is; count its readings, log, or re-raise."""
        self.unstored += len(readings)
        if reraise:
            raise exc
        if not self._bug_logged:
            log.error(
                "buffer commit failed (a bug); %d readings are lost", len(readings), exc_info=exc
            )
            self._bug_logged = True
        else:
            log.debug("buffer commit failed again; %d readings lost", len(readings), exc_info=exc)

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

    async def oldest(self) -> tuple[int, int] | None:
        """See `gateway.buffer.Buffer.oldest` (staged readings are newer)."""
        return await self._call(self.buffer.oldest)

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
        """Commit ``readings`` now, with the acknowledged batches, registering the ``adopted``
        batches as in flight: the write of `gateway.buffer.writebehind.WriteBehind`, which keeps
        the readings in its own memory and never uses `stage`. True once committed; False if it
        failed, and then nothing of ``readings`` is kept or counted here (the caller still holds
        them and tries again). A failure is logged once per streak (a bug with its traceback)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        accepted, self._accepted = self._accepted, []
        try:
            dropped = await self._call(
                self.buffer.commit, list(readings), accepted, offsets or {}, adopted
            )
        except Exception as exc:  # storage errors and bugs alike: the caller keeps the readings
            self._accepted = accepted + self._accepted
            if not self._failing:
                bug = None if _is_storage_error(exc) else exc
                log.error(
                    "cannot write the buffer (%s); readings stay in memory", exc, exc_info=bug
                )
            self._failing = True
            if self._accepted:
                self._schedule(max(self.commit_interval, self.retry_delay))
            return False
        self._committed(dropped, stored=bool(readings))
        return True

    def _committed(self, dropped: int, *, stored: bool) -> None:
        """After a successful commit: the recovery line, the drops, the publisher's wake-up."""
        self._bug_logged = False
        if self._failing:
            log.info("buffer accepts readings again (%d readings lost meanwhile)", self.unstored)
            self._failing = False
        if dropped:
            self.dropped_now += dropped
            log.warning("buffer full: dropped the %d oldest undelivered readings", dropped)
            if self.on_dropped is not None:
                self.on_dropped(dropped)
        if stored:
            self.appended.set()

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
        if self._staged:
            log.error("the buffer cannot store %d readings; they are lost", len(self._staged))
            self.unstored += len(self._staged)
            self._staged.clear()
        try:
            await self._call(self.buffer.close)
        finally:
            # Joining the thread waits for whatever still runs on it: not on the event loop.
            await asyncio.to_thread(self._pool.shutdown, wait=True)
