"""An in-memory buffer: same contract as `SqliteBuffer` without durability.

Used where losing the buffer on restart is acceptable (tests of the sinks, benchmarks of the
publisher alone), and as the reference the shared buffer suite holds the SQLite buffer to. It honours
``max_readings`` and ``max_age``; ``max_bytes`` is about a file and is left to `SqliteBuffer`.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta

from gateway.buffer.base import Batch, BufferLimits, Gap, InflightTracker, check_sequence
from gateway.model import Reading, to_epoch_ms


class MemoryBuffer:
    """A `gateway.buffer.Buffer` kept in a dict plus a sorted list of sequence numbers."""

    def __init__(self, *, limits: BufferLimits | None = None) -> None:
        self._rows: dict[int, Reading] = {}
        self._order: list[int] = []
        self._last_seq = 0
        self._dropped = 0
        self._limits = limits or BufferLimits()
        self._track = InflightTracker()
        #: seq -> clock offset (ms) of held readings.
        self._held: dict[int, int] = {}
        self._reserved = 0

    def append(self, readings: Sequence[Reading]) -> None:
        self.commit(readings, ())

    def commit(
        self,
        readings: Sequence[Reading],
        accepted: Sequence[Batch],
        offsets: Mapping[int, int] | None = None,
        adopted: Sequence[Batch] = (),
    ) -> int:
        check_sequence(readings, self._last_seq)
        for batch in accepted:
            self._track.require(batch)
        for batch in adopted:
            self._track.adopt(batch)
        offsets = offsets or {}
        for reading in readings:
            self._rows[reading.seq] = reading
            self._order.append(reading.seq)
            if not reading.time_synced and reading.seq in offsets:
                self._held[reading.seq] = offsets[reading.seq]
                self._track.hold(reading.seq)
        if readings:
            self._last_seq = readings[-1].seq
        for batch in accepted:
            self._track.close(batch, accepted=True)
            for reading in batch.readings:
                self._delete(reading.seq)
        return self._enforce_limits()

    def _delete(self, seq: int) -> None:
        self._held.pop(seq, None)
        if self._rows.pop(seq, None) is not None:
            del self._order[bisect.bisect_left(self._order, seq)]

    def _enforce_limits(self) -> int:
        victims: list[int] = []
        limits = self._limits
        droppable = [s for s in self._order if s not in self._track.seqs]
        trusted = [s for s in self._order if self._rows[s].time_synced]
        if limits.max_age is not None and trusted:
            # Trusted timestamps only, on both sides (see `BufferLimits`).
            horizon = max(self._rows[s].ts for s in trusted) - limits.max_age
            victims = [
                s for s in droppable if self._rows[s].time_synced and self._rows[s].ts < horizon
            ]
        if limits.max_readings is not None:
            excess = len(self._order) - len(victims) - limits.max_readings
            if excess > 0:
                rest = [s for s in droppable if s not in set(victims)]
                victims.extend(rest[:excess])
        for seq in victims:
            self._delete(seq)
        self._track.forget_returned(victims)
        self._dropped += len(victims)
        return len(victims)

    def begin(self, limit: int, *, live: bool | None = None) -> Batch | None:
        track = self._track
        taken = track.take_returned(limit, live)
        for lane in track.lanes(live):
            after, upto = track.window(lane)
            index = bisect.bisect_right(self._order, after)
            while len(taken) < limit and index < len(self._order):
                seq = self._order[index]
                if upto is not None and seq > upto:
                    break
                track.examined(lane, seq)
                if seq not in track.seqs:
                    taken.append(self._rows[seq])
                index += 1
        return track.open(taken)

    def end(self, batch: Batch, *, accepted: bool) -> None:
        if accepted:
            self.commit((), (batch,))
        else:
            self._track.close(batch, accepted=False)

    def mark_live_boundary(self) -> None:
        self._track.move_boundary(self._last_seq)

    def restamp(self, offset_ms: int) -> int:
        for seq, then in self._held.items():
            reading = self._rows[seq]
            ts = reading.ts + timedelta(milliseconds=offset_ms - then)
            self._rows[seq] = replace(reading, ts=ts, time_synced=True)
        return self.release_unsynced()

    def release_unsynced(self) -> int:
        count = len(self._held)
        self._held.clear()
        self._track.held_from = None
        return count

    def pending(self) -> int:
        return len(self._rows)

    def oldest(self) -> tuple[int, int] | None:
        if not self._order:
            return None
        first = self._rows[self._order[0]]
        return first.seq, to_epoch_ms(first.ts)

    def last_seq(self) -> int:
        return self._last_seq

    def dropped(self) -> int:
        return self._dropped

    def held_from(self) -> int | None:
        return self._track.held_from

    def seq_floor(self) -> int:
        return max(self._reserved, self._last_seq)

    def reserve(self, upto: int, *, safe: int) -> None:
        self._reserved = max(self._reserved, upto)

    def finish(self, last: int) -> None:
        self._reserved = self._last_seq = max(last, self._last_seq)

    def declared_gaps(self) -> list[Gap]:
        return []  # nothing survives a restart, so nothing is declared

    def gap_published(self, gap: Gap) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()
        self._order.clear()
