"""The driver contract shared by every device type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

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
