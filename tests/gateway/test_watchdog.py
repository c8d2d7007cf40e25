"""Issue 8, acceptance 2: the systemd watchdog is fed only while the daemon makes progress.

The daemon runs in-process with a systemd stand-in on ``NOTIFY_SOCKET`` (`tests.notify_peer`,
written from sd_notify(3)) and ``WATCHDOG_USEC`` of `WATCHDOG` seconds. Two buses: one healthy
device, and one whose driver hangs: after `HANG_AFTER` good polls its poll never answers (the
scheduler's guard tries to cancel it, and the driver swallows the cancellation (a driver bug of
a kind no timeout can contain). That bus task is then hung: it never comes back to its loop.

The test proves: READY=1 comes only after both bus tasks opened their devices and started their
grids; pings come every half interval while all is well; and the pings stop within one watchdog
interval of the hung task's deadline, while the STATUS= line names the hung bus. It also proves
the control: with no hang, pings go on (the test would otherwise pass with a watchdog that simply
stops after a while).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import gateway.app
from gateway.app import GatewayRuntime, run_gateway
from gateway.config import parse_config
from gateway.errors import DeviceTimeout
from gateway.model import MetricSpec, Value
from gateway.notify import Notifier
from gateway.scheduler import PROGRESS_GRACE
from tests.notify_peer import NotifyPeer
from tests.servers import free_port

WATCHDOG = 2.0  # seconds (WATCHDOG_USEC / 1e6)
HANG_AFTER = 3
OPEN_DELAY = 0.5
GUARD = 1.0  # seconds per driver call (see run())  # each driver's open() takes this long, so READY has something to wait for


class FakeDriver:
    """A driver written for this test: one metric, a slow open, an optional hang."""

    def __init__(self, *, hang: bool) -> None:
        self._hang = hang
        self.polls = 0
        self.hung_at: float | None = None
        self.opened_at: float | None = None
        self.released = asyncio.Event()

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        return {"value": MetricSpec(key="value", unit="1")}

    async def open(self) -> None:
        await asyncio.sleep(OPEN_DELAY)
        self.opened_at = time.monotonic()

    async def poll(self) -> Mapping[str, Value]:
        self.polls += 1
        if self._hang and self.polls > HANG_AFTER:
            self.hung_at = time.monotonic()
            while not self.released.is_set():
                # The bug: it swallows the guard's cancellation, so the bus task hangs.
                with contextlib.suppress(asyncio.CancelledError):
                    await self.released.wait()
            raise DeviceTimeout("released by the test")
        return {"value": float(self.polls)}

    async def close(self) -> None:
        pass


def config(tmp_path: Path) -> Any:
    device = {"driver": "modbus", "profile": "sdm120", "unit_id": 1, "interval": 1, "timeout": 0.1}
    return parse_config(
        {
            "site": {"id": "kg"},
            "mqtt": {"host": "127.0.0.1", "port": free_port()},  # no broker: readings buffer
            "buffer": {"path": str(tmp_path / "buffer.sqlite3")},
            "clock": {"sync": "none"},
            "devices": [
                {
                    **device,
                    "id": "healthy",
                    "transport": {"kind": "tcp", "host": "127.0.0.1", "port": 1502},
                },
                {
                    **device,
                    "id": "hanging",
                    "transport": {"kind": "tcp", "host": "127.0.0.1", "port": 1503},
                },
            ],
        },
        source="test",
    )


def run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, hang: bool, seconds: float
) -> tuple[NotifyPeer, dict[str, FakeDriver], GatewayRuntime]:
    drivers = {"healthy": FakeDriver(hang=False), "hanging": FakeDriver(hang=hang)}
    monkeypatch.setattr(gateway.app, "build_driver", lambda device, buses: drivers[device.id])
    # Shorter bounds than the real ones (4 x timeout + 10 s per driver call), so that the hang's
    # deadline comes within seconds: the logic under test is the same at any scale.
    monkeypatch.setattr(gateway.app, "device_guard", lambda timeout: GUARD)
    peer = NotifyPeer()
    notifier = Notifier.from_environment(
        {"NOTIFY_SOCKET": peer.path, "WATCHDOG_USEC": str(int(WATCHDOG * 1e6))}
    )
    runtimes: list[GatewayRuntime] = []
    deadlines: dict[str, float] = {}  # each bus task's deadline at the end, before the release

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_gateway(config(tmp_path), stop=stop, started=runtimes.append, notifier=notifier)
        )
        await asyncio.sleep(seconds)
        deadlines.update((p.name, p.deadline) for p in runtimes[0].pollers)
        for driver in drivers.values():
            driver.released.set()  # the test's hang ends, so that the daemon can stop
        stop.set()
        async with asyncio.timeout(30):
            await task

    try:
        asyncio.run(main())
    finally:
        notifier.close()
    time.sleep(0.2)  # the last datagrams
    peer.close()
    return peer, drivers, deadlines


def test_ready_after_the_grids_started_and_pings_while_healthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer, drivers, _ = run(tmp_path, monkeypatch, hang=False, seconds=6)
    ready = peer.with_field("READY", "1")
    assert len(ready) == 1, peer.snapshot()
    opened = max(d.opened_at or 0 for d in drivers.values())
    assert ready[0].at >= opened, "READY=1 came before every device was opened"
    pings = [m.at for m in peer.with_field("WATCHDOG", "1")]
    after_ready = [t for t in pings if t >= ready[0].at]
    # 6 s run, a ping every WATCHDOG / 2 = 1 s: no gap longer than one half interval and a margin.
    assert len(after_ready) >= 4, pings
    assert max(b - a for a, b in itertools.pairwise(after_ready)) < WATCHDOG / 2 + 0.5
    assert peer.with_field("STOPPING", "1"), "a clean stop tells systemd"
    assert "2 devices (0 failing)" in ready[0].fields["STATUS"]


def test_pings_stop_within_one_interval_of_a_hung_bus_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hung bus's deadline: three guards and the grace (10 s) after the hang.
    peer, drivers, deadlines = run(tmp_path, monkeypatch, hang=True, seconds=3 * GUARD + 20)
    hung_at = drivers["hanging"].hung_at
    assert hung_at is not None, "the hanging driver never hung"
    pinged = [m.at for m in peer.with_field("WATCHDOG", "1")]
    before = [t for t in pinged if t < hung_at]
    assert len(before) >= 2, "pings came while the daemon was healthy"
    deadline = next(d for name, d in deadlines.items() if name.endswith(":1503"))
    assert deadline <= hung_at + 3 * GUARD + PROGRESS_GRACE, "the deadline is the hung step's"
    last_ping = max(pinged)
    assert last_ping <= deadline + WATCHDOG, (
        f"pings went on {last_ping - deadline:.1f} s past the hung task's deadline"
    )
    # Pings went on until shortly before the deadline: the stop is the hang's doing, not a
    # watchdog that stops by itself.
    assert last_ping >= deadline - WATCHDOG
    statuses = [m.fields.get("STATUS", "") for m in peer.snapshot() if m.at > deadline]
    assert any("HUNG" in s and ":1503" in s for s in statuses), statuses
    assert drivers["healthy"].polls > HANG_AFTER + 10, "the healthy bus kept polling"
