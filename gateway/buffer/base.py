"""The buffer contract, shared by every implementation and checked by one parametrised test suite.

Life of a reading: ``append`` stores it; ``begin`` hands the oldest readings not already in flight
to a sink as a `Batch`; ``end(batch, accepted=True)`` forgets them, ``end(batch, accepted=False)``
returns them so that the next ``begin`` delivers them again, ahead of newer ones. A reading that was
begun but never ended (the process died) is delivered again after a restart: delivery is
at-least-once and duplicates are bounded by what was in flight.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.model import Reading


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings handed to a sink together, in sequence order. ``id`` is unique per buffer instance."""

    id: int
    readings: tuple[Reading, ...]


class Buffer(Protocol):
    """Synchronous buffer API. Implementations are not thread-safe; `BufferWorker` serialises calls."""

    def append(self, readings: Sequence[Reading]) -> None:
        """Store ``readings`` durably (one transaction) before returning."""

    def begin(self, limit: int) -> Batch | None:
        """Up to ``limit`` of the oldest readings not in flight, or ``None`` when there are none."""

    def end(self, batch: Batch, *, accepted: bool) -> None:
        """Forget ``batch`` (accepted) or make it deliverable again (not accepted)."""

    def pending(self) -> int:
        """Readings stored, in flight or not."""

    def last_seq(self) -> int:
        """Highest sequence number ever appended (0 for a new buffer), surviving deletes and restarts."""

    def close(self) -> None:
        """Release the storage; further calls are errors."""


@dataclass
class InflightTracker:
    """Bookkeeping of what is in flight, shared by the implementations.

    ``cursor`` is the highest sequence number handed out by ``begin``; ``returned`` holds readings of
    rejected batches (kept sorted by seq) that must go out before anything past the cursor.
    """

    cursor: int = 0
    returned: list[Reading] = field(default_factory=list)
    inflight: dict[int, Batch] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def take_returned(self, limit: int) -> list[Reading]:
        """Pop up to ``limit`` returned readings, oldest first."""
        taken, self.returned = self.returned[:limit], self.returned[limit:]
        return taken

    def open(self, readings: Sequence[Reading]) -> Batch | None:
        """Register a batch made of ``readings`` (already in seq order) and advance the cursor."""
        if not readings:
            return None
        batch = Batch(next(self._ids), tuple(readings))
        self.inflight[batch.id] = batch
        self.cursor = max(self.cursor, batch.readings[-1].seq)
        return batch

    def close(self, batch: Batch, *, accepted: bool) -> None:
        """Deregister ``batch``; if rejected, queue its readings for redelivery in seq order."""
        if self.inflight.pop(batch.id, None) is None:
            raise ValueError(f"batch {batch.id} is not in flight")
        if not accepted:
            for reading in batch.readings:
                bisect.insort(self.returned, reading, key=lambda r: r.seq)
