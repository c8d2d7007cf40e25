"""An in-memory buffer: same contract as `SqliteBuffer` without durability.

Used where losing the buffer on restart is acceptable (tests of the sinks, benchmarks of the
publisher alone) and as the reference the shared buffer suite compares against.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.buffer.base import Batch, InflightTracker
from gateway.model import Reading


class MemoryBuffer:
    """A `gateway.buffer.Buffer` kept in a dict ordered by sequence number."""

    def __init__(self) -> None:
        self._rows: dict[int, Reading] = {}
        self._last_seq = 0
        self._track = InflightTracker()

    def append(self, readings: Sequence[Reading]) -> None:
        for reading in readings:
            if reading.seq <= self._last_seq:
                raise ValueError(f"sequence {reading.seq} is not above {self._last_seq}")
            self._rows[reading.seq] = reading
            self._last_seq = reading.seq

    def begin(self, limit: int) -> Batch | None:
        taken = self._track.take_returned(limit)
        if len(taken) < limit:
            fresh = (r for seq, r in self._rows.items() if seq > self._track.cursor)
            for reading in fresh:
                taken.append(reading)
                if len(taken) == limit:
                    break
        return self._track.open(taken)

    def end(self, batch: Batch, *, accepted: bool) -> None:
        self._track.close(batch, accepted=accepted)
        if accepted:
            for reading in batch.readings:
                self._rows.pop(reading.seq, None)

    def pending(self) -> int:
        return len(self._rows)

    def last_seq(self) -> int:
        return self._last_seq

    def close(self) -> None:
        self._rows.clear()
