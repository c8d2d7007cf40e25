"""Is the wall clock right? A Raspberry Pi has no battery-backed clock.

After a power cut a Pi boots with the time it last saved (or 1970) and keeps it until NTP answers;
an administrator may also step the clock by hand. Polls are scheduled on the monotonic clock, so none
of that changes *when* devices are polled. It does change the timestamps readings get, and this
module decides which timestamps can be trusted.

Contract of `ClockMonitor`:

- The clock is *trusted* once the sync source reports a synchronisation, and stays trusted until a
  *step* is seen: ``wall - monotonic`` moving by more than ``step_tolerance`` seconds between two
  observations. After a step it is untrusted until the sync source reports a *newer*
  synchronisation. A step seen in the same observation as a new synchronisation is the
  synchronisation itself (NTP stepping the clock), so trust is kept.
- `stamp` returns the wall-clock time for a reading and whether it is trusted; `offset_ms` is
  ``wall - monotonic`` in milliseconds at that moment. The buffer stores it with untrusted
  readings so that, once trusted again, each is re-stamped as ``ts + (offset_now - offset_then)``:
  the time the monotonic clock says it was taken, on the corrected wall clock.

The sync source is a function returning a *generation* (any value that changes with each
synchronisation, e.g. a file's mtime) or ``None`` while there has been none. systemd-timesyncd
touches ``/run/systemd/timesync/synchronized`` on each synchronisation (``/run`` is emptied at boot);
`file_generation` reads such a flag file. A gateway with a real-time clock uses `always_synced`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from gateway.model import to_epoch_ms, utc_ms

#: systemd-timesyncd's flag file.
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")

SyncGeneration = Callable[[], object | None]


def file_generation(path: Path) -> SyncGeneration:
    """Sync source from a flag file: its modification time, or None while it does not exist."""

    def generation() -> object | None:
        try:
            return os.stat(path).st_mtime_ns
        except OSError:
            return None

    return generation


def always_synced() -> object | None:
    """Sync source for a gateway whose clock is always right (a real-time clock, GPS)."""
    return 0


class ClockMonitor:
    """Tracks trust in the wall clock; see the module docstring."""

    def __init__(
        self,
        *,
        sync_generation: SyncGeneration,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        step_tolerance: float = 1.0,
    ) -> None:
        self._generation = sync_generation
        self._wall = wall_clock
        self._monotonic = monotonic
        self._tolerance_ms = int(step_tolerance * 1000)
        self._seen = sync_generation()
        self.trusted = self._seen is not None
        self.offset_ms = self._measure()
        #: Steps seen since start (for the status topic and the logs).
        self.steps = 0

    def _measure(self) -> int:
        return to_epoch_ms(self._wall()) - int(self._monotonic() * 1000)

    def observe(self) -> bool:
        """Re-check the clock; return True when it became trusted by this observation."""
        before = self.trusted
        generation = self._generation()
        fresh_sync = generation is not None and generation != self._seen
        self._seen = generation
        offset = self._measure()
        stepped = abs(offset - self.offset_ms) > self._tolerance_ms
        self.offset_ms = offset
        if stepped:
            self.steps += 1
        if fresh_sync:
            self.trusted = True
        elif stepped:
            self.trusted = False
        return self.trusted and not before

    def stamp(self) -> tuple[datetime, bool]:
        """(wall-clock time for a reading, whether it is trusted), after a fresh `observe`."""
        self.observe()
        return utc_ms(self._wall()), self.trusted
