"""The driver contract shared by every device type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from gateway.model import MetricSpec, Value


class Driver(Protocol):
    """A device the scheduler can poll.

    ``open`` acquires the transport (and may raise `DeviceError` if the device is absent; the
    scheduler retries with backoff). ``poll`` returns one value per metric key listed in
    ``metrics``; a metric the device could not provide this time maps to ``None``. It raises a
    `gateway.errors.DeviceError` subclass when the device as a whole did not answer usably.
    ``close`` releases the transport and never raises.

    Blocking I/O never runs on the event loop: drivers either use asyncio transports or move
    blocking calls to a worker thread.
    """

    @property
    def metrics(self) -> Mapping[str, MetricSpec]: ...

    async def open(self) -> None: ...

    async def poll(self) -> Mapping[str, Value]: ...

    async def close(self) -> None: ...


@runtime_checkable
class ReportsFaults(Protocol):
    """A driver (or transport) that counts the faults its answers had, by detailed class.

    ``faults`` returns the counts since start for this device, keyed by the classes of
    `gateway.errors.FAULT_CLASSES` and ``exception-0xNN``. It includes faults that did not fail
    a poll (a stale frame discarded while the right answer still came), which is why it is
    separate from the scheduler's per-poll error counts. A copy; cheap enough to call every
    status period.
    """

    def faults(self) -> Mapping[str, int]: ...


@runtime_checkable
class ReportsCounters(Protocol):
    """A shared transport (an RS-485 line, a Modbus TCP endpoint) with counters of its own:
    transactions, stray frames, discarded bytes, reconnects. ``name`` says which one it is."""

    @property
    def name(self) -> str: ...

    def counters(self) -> Mapping[str, int]: ...
