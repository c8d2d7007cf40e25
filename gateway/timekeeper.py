"""Connects `gateway.clock.ClockMonitor` to the buffer: hold, re-stamp, release.

Contract: while the wall clock is untrusted, readings are staged with their clock offset and held
(not published). When the clock becomes trusted, every held reading is re-stamped from its offset
and released in one transaction. If the clock stays untrusted for ``hold_seconds``, the held
readings are released flagged ``time_synced=false``, and later untrusted readings go out flagged
at once (no more holding) until the clock is trusted again. A site whose NTP is blocked therefore
still delivers, and says its timestamps are doubtful, rather than holding data for ever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.buffer.writebehind import WriteBehind
from gateway.clock import ClockMonitor

log = logging.getLogger(__name__)


class TimeKeeper:
    """Owns the hold / re-stamp / release policy; run ``run()`` as a task."""

    def __init__(
        self,
        *,
        monitor: ClockMonitor,
        buffer: WriteBehind,
        hold_seconds: float,
        period: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.monitor = monitor
        self._buffer = buffer
        self._hold = hold_seconds
        self._period = period
        self._monotonic = monotonic
        self._untrusted_since: float | None = None if monitor.trusted else monotonic()
        self._was_trusted = monitor.trusted
        #: Readings re-stamped / released flagged since start (status topic, tests).
        self.restamped = 0
        self.released = 0

    def offset_for_stage(self) -> int | None:
        """The clock offset to stage untrusted readings with (held), or None (not held)."""
        if self.monitor.trusted or self._hold_expired():
            return None
        return self.monitor.offset_ms

    @property
    def untrusted_since(self) -> float | None:
        """Monotonic time the clock became untrusted (None while trusted); local status."""
        return self._untrusted_since

    @property
    def holding(self) -> bool:
        """Whether untrusted readings are held now (False once ``hold_seconds`` passed)."""
        return self.offset_for_stage() is not None

    def _hold_expired(self) -> bool:
        since = self._untrusted_since
        return since is not None and self._monotonic() - since >= self._hold

    async def run(self) -> None:
        """Observe the clock every ``period`` seconds and apply the policy."""
        if not self.monitor.trusted:
            log.warning(
                "wall clock not known to be synchronised; holding readings up to %.0f s", self._hold
            )
        while True:
            await self.step()
            await asyncio.sleep(self._period)

    async def step(self) -> None:
        """One observation (exposed for tests that drive the clock)."""
        self.monitor.observe()
        trusted = self.monitor.trusted
        if trusted and not self._was_trusted:
            count = await self._buffer.restamp(self.monitor.offset_ms)
            self.restamped += count
            self._untrusted_since = None
            log.info("wall clock synchronised; re-stamped %d held readings", count)
        elif not trusted and self._was_trusted:
            self._untrusted_since = self._monotonic()
            log.warning(
                "wall clock stepped without a synchronisation; holding readings up to %.0f s",
                self._hold,
            )
        elif not trusted and self._hold_expired() and self._untrusted_since is not None:
            count = await self._buffer.release_unsynced()
            if count:
                self.released += count
                log.warning(
                    "wall clock still not synchronised after %.0f s; released %d "
                    "readings flagged time_synced=false",
                    self._hold,
                    count,
                )
        self._was_trusted = trusted
