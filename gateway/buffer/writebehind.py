"""Write-behind delivery: a polled reading is published from memory at once, and written to the
durable buffer only if the broker has not acknowledged it in time.

Why: waiting for a group commit before publishing made every live reading ~1 s late (p50), and
writing every reading to the SD card costs it 3-4x the payload in bytes. With a healthy broker a
reading is acknowledged within milliseconds and never touches the card; during an outage, or with
the in-flight window full, everything is written, as before.

Contract (on top of `gateway.buffer.BufferWorker`, whose interface it keeps for the publisher):

- `stage` keeps readings in memory and wakes the publisher (``appended``) at once.
- `begin(live=True)` serves the durable live lane first (older), then memory (newer), so the
  stream stays in sequence order; `begin(live=False)` is the durable backlog only.
- Every ``commit_interval / 2`` the readings staged at least that long ago and not acknowledged
  are written in one transaction, *including* those in flight: their batches are adopted by the
  durable buffer, so their acknowledgement deletes the rows. A reading therefore sits unwritten
  for at most one ``commit_interval``: the loss bound of a crash or power cut.
- Held readings (untrusted clock) are never served from memory; they are written and held by
  the durable buffer like before, so the stream stays in order.
- If the storage fails, the readings stay in memory (and are still published) and the write is
  retried at the next tick; above ``max_unwritten`` the oldest not in flight are dropped and
  counted in ``unstored``.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.buffer.base import Batch, Gap
from gateway.buffer.worker import BufferWorker
from gateway.errors import StorageError
from gateway.model import Reading, to_epoch_ms

log = logging.getLogger(__name__)

#: Readings kept in memory while the storage refuses them, before the oldest are dropped.
MAX_UNWRITTEN = 200_000


@dataclass(slots=True)
class _Staged:
    reading: Reading
    #: Loop time when it was staged.
    at: float
    #: Clock offset (ms) of a reading with an untrusted timestamp, else None.
    offset: int | None


class WriteBehind:
    """The buffer the gateway runs on: memory first, ``worker`` (durable) behind it."""

    def __init__(
        self,
        worker: BufferWorker,
        *,
        commit_interval: float,
        max_unwritten: int = MAX_UNWRITTEN,
    ) -> None:
        self.worker = worker
        self._period = commit_interval / 2
        self._max_unwritten = max_unwritten
        self._mem: dict[int, _Staged] = {}
        self._order: list[int] = []
        #: Seqs in flight in a memory batch.
        self._flying: set[int] = set()
        self._batches: dict[int, Batch] = {}
        #: Memory batches being written right now, with an acknowledgement that came meanwhile.
        self._adopting: dict[int, Batch] = {}
        self._early: dict[int, bool] = {}
        self._ids = itertools.count(-1, -1)  # the worker's batch ids are positive
        #: The first held reading (untrusted clock): nothing from it on goes out from memory,
        #: until `restamp` or `release_unsynced`, so the stream stays in order.
        self._held_from: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None
        self._lost = 0
        #: Readings written to the durable buffer / acknowledged from memory (benchmarks, tests).
        self.written = 0
        self.acked_from_memory = 0

    # -- what the pollers call -------------------------------------------------------------

    def stage(self, readings: Sequence[Reading], *, clock_offset_ms: int | None = None) -> None:
        """Keep ``readings`` in memory and wake the publisher; never waits on the disk."""
        now = self._now()
        for reading in readings:
            offset = None if reading.time_synced else clock_offset_ms
            if offset is not None and (self._held_from is None or reading.seq < self._held_from):
                self._held_from = reading.seq
            self._mem[reading.seq] = _Staged(reading, now, offset)
            if self._order and reading.seq < self._order[-1]:
                bisect.insort(self._order, reading.seq)
            else:
                self._order.append(reading.seq)
        self._trim()
        if readings:
            self.worker.appended.set()
            self._schedule()

    # -- what the publisher calls ----------------------------------------------------------

    @property
    def appended(self) -> asyncio.Event:
        """Set when there is something new to publish (staged or stored)."""
        return self.worker.appended

    async def begin(self, limit: int, *, live: bool | None = None) -> Batch | None:
        """Oldest readings of the lane not in flight: durable ones first, then memory."""
        batch = await self.worker.begin(limit, live=live)
        if batch is not None or live is False:
            return batch
        taken = [
            self._mem[seq].reading
            for seq in itertools.islice(self._servable(), limit)
            if seq in self._mem
        ]
        if not taken:
            return None
        batch = Batch(next(self._ids), tuple(taken))
        self._batches[batch.id] = batch
        self._flying.update(r.seq for r in taken)
        return batch

    def _servable(self) -> itertools.filterfalse[int]:
        ceiling = self._held_from
        order = (
            self._order
            if ceiling is None
            else self._order[: bisect.bisect_left(self._order, ceiling)]
        )
        return itertools.filterfalse(self._flying.__contains__, order)

    async def end(self, batch: Batch, *, accepted: bool) -> None:
        """Acknowledge or reject ``batch``, wherever it lives now."""
        if batch.id in self._adopting:
            self._early[batch.id] = accepted  # applied once the write that adopts it is done
        elif batch.id in self._batches:
            self._end_in_memory(batch, accepted=accepted)
        else:
            await self.worker.end(batch, accepted=accepted)

    def _end_in_memory(self, batch: Batch, *, accepted: bool) -> None:
        del self._batches[batch.id]
        for reading in batch.readings:
            self._flying.discard(reading.seq)
            if accepted and self._mem.pop(reading.seq, None) is not None:
                del self._order[bisect.bisect_left(self._order, reading.seq)]
                self.acked_from_memory += 1

    async def mark_live_boundary(self) -> None:
        """Everything stored so far becomes backlog; memory stays live (it is newer)."""
        await self.worker.mark_live_boundary()

    async def pending(self) -> int:
        """Readings not yet acknowledged: stored, and in memory."""
        return await self.worker.pending() + len(self._mem)

    async def oldest(self) -> tuple[int, int] | None:
        """(seq, ts_ms) of the oldest reading not yet acknowledged, stored or in memory."""
        stored = await self.worker.oldest()
        if self._order and (stored is None or self._order[0] < stored[0]):
            first = self._mem[self._order[0]].reading
            return first.seq, to_epoch_ms(first.ts)
        return stored

    @property
    def unwritten(self) -> int:
        """Readings only in memory: neither acknowledged nor written yet (a crash loses them)."""
        return len(self._mem)

    @property
    def oldest_unwritten_at(self) -> float | None:
        """Loop time (monotonic seconds) the oldest reading only in memory was staged, or None.

        The contract writes a reading within one ``commit_interval`` unless the broker
        acknowledged it first; a value much older than that means the writes stopped (a failing
        or hung storage), which `gateway.health` reports."""
        return self._mem[self._order[0]].at if self._order else None

    # -- writing behind ------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _schedule(self) -> None:
        if self._timer is None and self._writing is None:
            self._timer = asyncio.get_running_loop().call_later(self._period, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._writing = asyncio.get_running_loop().create_task(
            self._write_due(), name="write-behind"
        )
        self._writing.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writing = None
        if not task.cancelled() and task.exception() is not None:
            log.error("write-behind failed", exc_info=task.exception())
        if self._mem:
            self._schedule()

    async def _write_due(self) -> None:
        await self._write(self._now() - self._period)

    async def flush(self) -> None:
        """Write everything in memory now (stop, re-stamping); then the worker's own window."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
        await self._write(None)
        await self.worker.flush()

    def _cutoff(self, staged_before: float | None) -> int:
        """The highest seq to write now: everything staged before ``staged_before`` (all if
        None), extended so that no batch in flight is split (its acknowledgement must be able
        to delete it whole)."""
        cutoff = 0
        for seq in self._order:
            if staged_before is not None and self._mem[seq].at > staged_before:
                break
            cutoff = seq
        grown = bool(cutoff)
        while grown:
            grown = False
            for batch in self._batches.values():
                if batch.readings[0].seq <= cutoff < batch.readings[-1].seq:
                    cutoff, grown = batch.readings[-1].seq, True
        return cutoff

    async def _write(self, staged_before: float | None) -> None:
        """Write the readings staged before ``staged_before`` (all if None), whole batches."""
        cutoff = self._cutoff(staged_before)
        if not cutoff:
            return
        seqs = self._order[: bisect.bisect_right(self._order, cutoff)]
        adopting = [b for b in self._batches.values() if b.readings[-1].seq <= cutoff]
        for batch in adopting:
            self._adopting[batch.id] = batch
            del self._batches[batch.id]
        entries = [self._mem[s] for s in seqs]
        offsets = {e.reading.seq: e.offset for e in entries if e.offset is not None}
        ok = await self.worker.store(
            [e.reading for e in entries], adopted=adopting, offsets=offsets
        )
        early = {b.id: self._early.pop(b.id) for b in adopting if b.id in self._early}
        for batch in adopting:
            del self._adopting[batch.id]
        if not ok:  # still in memory: published from there, written at the next tick
            for batch in adopting:
                self._batches[batch.id] = batch
            for batch_id, accepted in early.items():
                self._end_in_memory(self._batches[batch_id], accepted=accepted)
            return
        for seq in seqs:
            del self._mem[seq]
            self._flying.discard(seq)
        del self._order[: len(seqs)]
        self.written += len(seqs)
        for batch in adopting:  # acknowledged while being written: now the worker's to end
            if batch.id in early:
                await self.worker.end(batch, accepted=early[batch.id])

    def _trim(self) -> None:
        """Keep memory bounded while the storage refuses writes: drop the oldest idle readings."""
        excess = len(self._mem) - self._max_unwritten
        if excess <= 0:
            return
        victims = [s for s in self._order if s not in self._flying][:excess]
        for seq in victims:
            del self._mem[seq]
        gone = set(victims)
        self._order = [s for s in self._order if s not in gone]
        if self._lost == 0:
            log.error("the buffer cannot be written: dropping the oldest readings from memory")
        self._lost += len(victims)

    # -- the rest of the buffer's interface ------------------------------------------------

    async def start(self) -> None:
        """Learn whether the durable buffer holds readings from before (same boot, clock still
        untrusted): then nothing newer may go out from memory until they are released."""
        self._held_from = await self.worker.held_from()

    async def restamp(self, offset_ms: int) -> int:
        """Write what is in memory, then re-stamp and release the held readings."""
        await self.flush()
        count = await self.worker.restamp(offset_ms)
        self._held_from = None
        return count

    async def release_unsynced(self) -> int:
        """Write what is in memory, then release the held readings flagged as unsynced."""
        await self.flush()
        count = await self.worker.release_unsynced()
        self._held_from = None
        return count

    async def reserve(self, upto: int, *, last: int) -> None:
        """Reserve numbers up to ``upto`` durably; ``last`` is the last number handed out.

        Every reading up to the oldest one still only in memory is stored or delivered, which
        bounds the gap a crash would declare.
        """
        safe = self._order[0] - 1 if self._order else last
        try:
            await self.worker.reserve(upto, safe=safe)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot reserve sequence numbers up to {upto}: {exc}") from exc

    async def seq_floor(self) -> int:
        return await self.worker.seq_floor()

    async def finish(self, last: int) -> None:
        """Write what is in memory and record a clean stop after ``last``."""
        await self.flush()
        await self.worker.finish(last)

    async def declared_gaps(self) -> list[Gap]:
        return await self.worker.declared_gaps()

    async def gap_published(self, gap: Gap) -> None:
        await self.worker.gap_published(gap)

    async def last_seq(self) -> int:
        """Highest sequence number stored or in memory."""
        stored = await self.worker.last_seq()
        return max(stored, self._order[-1] if self._order else 0)

    async def dropped(self) -> int:
        return await self.worker.dropped()

    @property
    def unstored(self) -> int:
        """Readings lost because the buffer could not be written."""
        return self.worker.unstored + self._lost

    @property
    def on_dropped(self) -> Callable[[int], None] | None:
        return self.worker.on_dropped

    @on_dropped.setter
    def on_dropped(self, callback: Callable[[int], None] | None) -> None:
        self.worker.on_dropped = callback

    async def close(self) -> None:
        """Write what is in memory, then close the durable buffer."""
        await self.flush()
        await self.worker.close()
