"""The buffer contract, shared by every implementation and checked by one parametrised test suite.

Life of a reading: ``append`` (or ``commit``) stores it; ``begin`` hands the oldest readings not
already in flight to a sink as a `Batch`; ``end(batch, accepted=True)`` forgets them and
``end(batch, accepted=False)`` returns them, so that the next ``begin`` delivers them again before
newer ones. A reading that was begun but never ended (the process died) is delivered again after a
restart: delivery is at-least-once, and duplicates are bounded by what was in flight.

Lanes: the *live boundary* splits the buffer into the backlog (``seq <= boundary``) and live readings
(``seq > boundary``). ``begin(live=True)`` serves only live readings and ``begin(live=False)`` only
the backlog, so a publisher can send fresh readings ahead of a long backlog and drain the backlog at
its own pace. ``begin()`` without a lane is oldest-first across both. `mark_live_boundary` moves the
boundary to the newest stored reading; a publisher calls it when it (re)connects.

Held readings: a reading with ``time_synced=False`` is stored with the clock offset of its poll
(``offsets``, see `gateway.clock`) and *held*: ``begin`` serves nothing at or after the first held
reading, so the stream stays in order, until `restamp` corrects the held readings' timestamps
(once the clock is trusted again) or `release_unsynced` lets them go flagged.

Limits: `BufferLimits` bounds the buffer. When a commit takes it over a limit, the oldest readings
that are not in flight are dropped, and the drops are counted in `dropped`, which persists across
restarts. What is in flight has most likely reached the broker already, so it is never counted as a
drop.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from gateway.model import Reading


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings handed to a sink together, in sequence order. ``id`` is unique per buffer instance."""

    id: int
    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class Gap:
    """A range of sequence numbers that may hold readings lost in an unclean stop.

    Declared by the buffer when it opens after a crash or power cut: every number in
    ``[from_seq, to_seq]`` may have been handed out to a reading that was neither stored durably
    nor acknowledged by the broker. Numbers above ``to_seq`` are new. ``ts_ms`` is when the gap
    was declared (wall clock, epoch ms).
    """

    from_seq: int
    to_seq: int
    reason: str
    ts_ms: int


@dataclass(frozen=True, slots=True)
class BufferLimits:
    """Caps on the buffer; ``None`` means unbounded.

    ``max_age`` is measured against the newest stored reading with a trusted timestamp, not the
    wall clock, so a Pi whose clock is wrong after a power cut neither drops everything nor keeps
    everything. Only readings with trusted timestamps are compared: a held reading (or one
    released unsynced) may carry any time, say a year ahead, which must neither set the horizon
    nor make it look old. The count and size caps apply to every reading alike.
    """

    max_readings: int | None = None
    max_bytes: int | None = None
    max_age: timedelta | None = None


class Buffer(Protocol):
    """Synchronous buffer API. Implementations are not thread-safe; `BufferWorker` serialises calls."""

    def append(self, readings: Sequence[Reading]) -> None:
        """Store ``readings`` durably, in one transaction, before returning."""

    def commit(
        self,
        readings: Sequence[Reading],
        accepted: Sequence[Batch],
        offsets: Mapping[int, int] | None = None,
        adopted: Sequence[Batch] = (),
    ) -> int:
        """One transaction: store ``readings``, forget the ``accepted`` batches, apply the limits.

        ``offsets`` maps the seq of each reading with ``time_synced=False`` to the clock offset
        (ms) of its poll; such readings are held. One without an offset is stored released.
        ``adopted`` are batches a sink already holds (handed out from memory before they were
        stored, see `gateway.buffer.writebehind`): their readings are among ``readings`` and are
        registered as in flight under the same batch, so ``end(batch)`` works on them.

        Returns how many readings the limits dropped. The accepted batches leave the in-flight set
        only when the transaction succeeded; on failure nothing changes.
        """

    def begin(self, limit: int, *, live: bool | None = None) -> Batch | None:
        """Up to ``limit`` of the oldest readings of the lane that are not in flight, or ``None``."""

    def end(self, batch: Batch, *, accepted: bool) -> None:
        """Forget ``batch`` (accepted) or make it deliverable again (not accepted)."""

    def mark_live_boundary(self) -> None:
        """Everything stored so far becomes backlog; what is stored later is live."""

    def restamp(self, offset_ms: int) -> int:
        """Re-stamp held readings as ``ts + (offset_ms - their offset)``, mark them synced and
        release them; returns how many."""

    def release_unsynced(self) -> int:
        """Release held readings as they are (flagged ``time_synced=False``); returns how many."""

    def pending(self) -> int:
        """Readings stored, in flight or not."""

    def oldest(self) -> tuple[int, int] | None:
        """(seq, ts_ms) of the oldest stored reading, in flight or not; None when empty. For
        the local status: how far behind delivery is."""

    def last_seq(self) -> int:
        """Highest sequence number ever stored (0 for a new buffer), surviving deletes and restarts;
        after a clean stop also the last number handed out (see `finish`)."""

    def held_from(self) -> int | None:
        """The first held reading's seq while readings are held (see above), else None."""

    def seq_floor(self) -> int:
        """Numbering continues above this: every number at or below it may have been used.

        The maximum of `last_seq` and the durable reservation (`reserve`), so that numbers handed
        out but never stored (a crash, a power cut) are never used again.
        """

    def reserve(self, upto: int, *, safe: int) -> None:
        """Durably record that numbers up to ``upto`` may be handed out, and that every reading
        numbered up to ``safe`` is stored or delivered.

        Durable whatever ``synchronous`` says (the reservation is synced to the card), so that the
        floor after a power cut is never below a number that was used.
        """

    def finish(self, last: int) -> None:
        """Record a clean stop after ``last`` was the last number handed out: the next start
        continues at ``last + 1`` and declares no gap."""

    def declared_gaps(self) -> list[Gap]:
        """Gaps declared after unclean stops and not yet confirmed delivered (`gap_published`)."""

    def gap_published(self, gap: Gap) -> None:
        """Forget ``gap``: the broker acknowledged its announcement."""

    def dropped(self) -> int:
        """Readings dropped by the limits, ever (persisted)."""

    def close(self) -> None:
        """Release the storage; further calls are errors."""


def check_sequence(readings: Sequence[Reading], last_seq: int) -> None:
    """Raise ValueError unless the sequence numbers increase strictly and start above ``last_seq``."""
    previous = last_seq
    for reading in readings:
        if reading.seq <= previous:
            raise ValueError(
                f"sequence numbers must increase and exceed {last_seq}; got {reading.seq} "
                f"after {previous}"
            )
        previous = reading.seq


@dataclass
class InflightTracker:
    """Bookkeeping of what is in flight, shared by the implementations.

    Each lane has a cursor: the highest sequence number it has examined. A reading at or below a
    lane's cursor was handed out, deleted, or sits in ``returned`` (rejected, to go out first). The
    ``seqs`` set lets a lane skip readings another lane handed out, which happens after the
    boundary moved.
    """

    boundary: int = 0
    #: First held reading's seq; nothing at or above it is served while set.
    held_from: int | None = None
    backlog_cursor: int = 0
    live_cursor: int = 0
    returned: list[Reading] = field(default_factory=list)
    inflight: dict[int, Batch] = field(default_factory=dict)
    seqs: set[int] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def lanes(self, live: bool | None) -> list[bool]:
        """The lanes to serve for ``live``, oldest first."""
        return [False, True] if live is None else [live]

    def window(self, lane: bool) -> tuple[int, int | None]:
        """(exclusive lower bound, inclusive upper bound or None) still to be examined in ``lane``."""
        ceiling = None if self.held_from is None else self.held_from - 1
        if lane:
            return max(self.live_cursor, self.boundary), ceiling
        upto = self.boundary if ceiling is None else min(self.boundary, ceiling)
        return self.backlog_cursor, upto

    def examined(self, lane: bool, seq: int) -> None:
        """Advance ``lane``'s cursor past ``seq``."""
        if lane:
            self.live_cursor = max(self.live_cursor, seq)
        else:
            self.backlog_cursor = max(self.backlog_cursor, seq)

    def take_returned(self, limit: int, live: bool | None) -> list[Reading]:
        """Pop up to ``limit`` rejected readings belonging to the lane(s), oldest first."""
        taken: list[Reading] = []
        kept: list[Reading] = []
        for reading in self.returned:
            in_lane = live is None or (reading.seq > self.boundary) == live
            if self.held_from is not None and reading.seq >= self.held_from:
                in_lane = False
            (taken if in_lane and len(taken) < limit else kept).append(reading)
        self.returned = kept
        return taken

    def move_boundary(self, last_seq: int) -> None:
        """Make everything up to ``last_seq`` backlog."""
        self.boundary = max(self.boundary, last_seq)
        self.live_cursor = max(self.live_cursor, self.boundary)

    def adopt(self, batch: Batch) -> None:
        """Register ``batch``, handed out before it was stored, as in flight."""
        self.inflight[batch.id] = batch
        self.seqs.update(r.seq for r in batch.readings)

    def open(self, readings: Sequence[Reading]) -> Batch | None:
        """Register a batch made of ``readings`` (in seq order)."""
        if not readings:
            return None
        batch = Batch(next(self._ids), tuple(sorted(readings, key=lambda r: r.seq)))
        self.inflight[batch.id] = batch
        self.seqs.update(r.seq for r in batch.readings)
        return batch

    def require(self, batch: Batch) -> None:
        """Raise ValueError unless ``batch`` is in flight."""
        if batch.id not in self.inflight:
            raise ValueError(f"batch {batch.id} is not in flight")

    def close(self, batch: Batch, *, accepted: bool) -> None:
        """Deregister ``batch``; if rejected, queue its readings for redelivery in seq order."""
        self.require(batch)
        del self.inflight[batch.id]
        self.seqs.difference_update(r.seq for r in batch.readings)
        if not accepted:
            for reading in batch.readings:
                bisect.insort(self.returned, reading, key=lambda r: r.seq)

    def hold(self, seq: int) -> None:
        """Hold everything from ``seq`` on (the first unsynced reading)."""
        if self.held_from is None or seq < self.held_from:
            self.held_from = seq

    def forget_returned(self, seqs: Iterable[int]) -> None:
        """Drop returned readings that were deleted from storage (by the limits)."""
        gone = set(seqs)
        self.returned = [r for r in self.returned if r.seq not in gone]
