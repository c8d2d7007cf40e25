"""The last reading of every (device, metric), for the local status.

Fed from the daemon's sink with every poll's readings (`gateway.app`); it keeps a reference to
the newest `Reading` per key and nothing older, so its size is bounded by the site's metrics and
a poll costs one dict assignment per reading (no object is made on the hot path).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.model import Reading


class LatestValues:
    """The newest reading per device and metric; see the module docstring."""

    def __init__(self) -> None:
        self._by_device: dict[str, dict[str, Reading]] = {}

    def observe(self, readings: Iterable[Reading]) -> None:
        """Take one poll's readings; a reading without a value replaces a number (never stale)."""
        for reading in readings:
            metrics = self._by_device.get(reading.device)
            if metrics is None:
                metrics = self._by_device[reading.device] = {}
            metrics[reading.metric] = reading

    def of(self, device: str) -> list[Reading]:
        """``device``'s newest readings, in the order its metrics were first seen."""
        return list(self._by_device.get(device, {}).values())
