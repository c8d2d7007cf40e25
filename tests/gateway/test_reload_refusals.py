"""A reload that cannot be applied changes nothing, and never kills the daemon.

In-process daemon, drivers written for the test (`gateway.app.build_driver` patched), a systemd
stand-in on ``NOTIFY_SOCKET``, no broker:

- a new device whose driver cannot be built: the reload is refused in one line, the bus it would
  have replaced keeps polling with its old driver;
- a reload that needs an in-process restart while the card refuses writes: refused (a restart's
  clean finish would fail and take what waits in memory with it);
- a SIGHUP during start-up (before every bus runs its grid): no READY=1 from the reload;
- a bus task closing a slow driver stays within its deadline (each close has its own bound).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import gateway.app
import gateway.scheduler
from gateway.app import GatewayRuntime, run_gateway
from gateway.buffer import SqliteBuffer
from gateway.config import GatewayConfig, parse_config
from gateway.health import judge
from gateway.model import MetricSpec, Value
from gateway.notify import Notifier
from gateway.reload import Reloads
from gateway.scheduler import BusPoller, DeviceState, SequenceCounter
from tests.notify_peer import NotifyPeer
from tests.servers import free_port


class Meter:
    metrics: Mapping[str, MetricSpec] = {"power": MetricSpec(key="power", unit="W")}

    def __init__(self, open_delay: float = 0.0) -> None:
        self.polls = 0
        self.open_delay = open_delay

    async def open(self) -> None:
        await asyncio.sleep(self.open_delay)

    async def poll(self) -> Mapping[str, Value]:
        self.polls += 1
        return {"power": float(self.polls)}

    async def close(self) -> None:
        return None


#: No broker listens there: readings wait in the buffer.
BROKER = free_port()


def site(tmp_path: Path, *, interval: float = 0.2, commit_interval: float = 0.2) -> dict[str, Any]:
    return {
        "site": {"id": "kg"},
        "mqtt": {"host": "127.0.0.1", "port": BROKER},
        "buffer": {"path": str(tmp_path / "buffer.sqlite3"), "commit_interval": commit_interval},
        "clock": {"sync": "none"},
        "local": {"socket": ""},
        "devices": [
            {
                "id": "meter",
                "driver": "modbus",
                "profile": "sdm120",
                "unit_id": 1,
                "interval": interval,
                "transport": {"kind": "tcp", "host": "127.0.0.1", "port": 1502},
            }
        ],
    }


def run(
    config: GatewayConfig,
    reloads: Reloads,
    body: Any,
    notifier: Notifier | None = None,
) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        runtimes: list[GatewayRuntime] = []
        task = asyncio.create_task(
            run_gateway(
                config, stop=stop, started=runtimes.append, reloads=reloads, notifier=notifier
            )
        )
        try:
            while not runtimes:  # noqa: ASYNC110 - filled by the daemon's callback
                await asyncio.sleep(0.01)
            await body(runtimes[0])
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task

    asyncio.run(main())


@pytest.fixture(autouse=True)
def quick_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.app, "DRAIN_TIMEOUT", 0.2)


async def until(condition: Any, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - conditions on the daemon's state
            await asyncio.sleep(0.02)


def test_a_driver_that_cannot_be_built_refuses_the_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    old = Meter()

    def build(device: Any, buses: Any) -> Meter:
        if device.interval != 0.2:
            raise ValueError("no such register map")  # the new file's device
        return old

    monkeypatch.setattr(gateway.app, "build_driver", build)
    data = site(tmp_path)
    changed = site(tmp_path, interval=0.5)
    reloads = Reloads(load=lambda: parse_config(changed, source="new.toml"))

    async def body(runtime: GatewayRuntime) -> None:
        await until(lambda: old.polls >= 2)
        reloads.request()
        await until(lambda: any("reload refused" in r.getMessage() for r in caplog.records))
        before = old.polls
        await until(lambda: old.polls >= before + 3)  # the old bus polls on
        assert len(runtime.pollers) == 1 and runtime.pollers[0].devices[0].driver is old

    with caplog.at_level(logging.INFO, logger="gateway.app"):
        run(parse_config(data, source="old.toml"), reloads, body)
    refused = [r for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(refused) == 1 and "no such register map" in refused[0].getMessage()
    assert refused[0].exc_info is None, "one line, no traceback"


class FullCard(SqliteBuffer):
    """Refuses every commit, as a full card does (sqlite3's own error)."""

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")


def test_a_restart_is_refused_while_the_card_refuses_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    meter = Meter()
    monkeypatch.setattr(gateway.app, "build_driver", lambda device, buses: meter)
    monkeypatch.setattr(gateway.app, "SqliteBuffer", FullCard)
    changed = site(tmp_path, commit_interval=0.5)  # [buffer]: a restart
    reloads = Reloads(load=lambda: parse_config(changed, source="new.toml"))
    runs: list[GatewayRuntime] = []

    async def body(runtime: GatewayRuntime) -> None:
        runs.append(runtime)
        await until(lambda: runtime.buffer.worker.failing)
        reloads.request()
        await until(lambda: any("reload refused" in r.getMessage() for r in caplog.records))
        before = meter.polls
        await until(lambda: meter.polls >= before + 2)
        assert runtime.buffer.unwritten > 0, "the readings wait in memory"

    with caplog.at_level(logging.INFO, logger="gateway.app"):
        run(parse_config(site(tmp_path), source="old.toml"), reloads, body)
    assert not any("restarting in-process" in r.getMessage() for r in caplog.records)
    assert any("cannot write to its card" in r.getMessage() for r in caplog.records)


def test_a_sighup_during_start_up_does_not_claim_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meter = Meter(open_delay=1.5)  # the grid starts 1.5 s after the daemon
    monkeypatch.setattr(gateway.app, "build_driver", lambda device, buses: meter)
    data = site(tmp_path)
    reloads = Reloads(load=lambda: parse_config(data, source="same.toml"))
    peer = NotifyPeer()
    notifier = Notifier(peer.path, watchdog_usec=2_000_000)
    opened: list[float] = []

    async def body(runtime: GatewayRuntime) -> None:
        reloads.request()  # before the device is open
        await until(lambda: runtime.ready)
        opened.append(time.monotonic())
        await asyncio.sleep(0.3)

    try:
        run(parse_config(data, source="same.toml"), reloads, body, notifier=notifier)
        time.sleep(0.2)
    finally:
        notifier.close()
        peer.close()
    ready = peer.with_field("READY", "1")
    assert len(ready) == 1, [m.fields for m in peer.snapshot()]
    assert peer.with_field("RELOADING", "1")[0].fields["MONOTONIC_USEC"].isdigit()


def test_closing_slow_drivers_on_a_stop_stays_within_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A short grace, so that three closes of 1.5 s would pass a deadline set only once.
    monkeypatch.setattr(gateway.scheduler, "PROGRESS_GRACE", 1.0)

    class SlowClose(Meter):
        async def close(self) -> None:
            await asyncio.sleep(1.5)  # below its guard, above the grace left after a sleep

    async def main() -> list[bool]:
        async def sink(readings: Any) -> None:
            return None

        states = [
            DeviceState(id=f"d{i}", driver=SlowClose(), interval=0.1, guard=2.0) for i in range(3)
        ]
        poller = BusPoller(name="bus a", devices=states, sink=sink, sequence=SequenceCounter(0))
        verdicts: list[bool] = []
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(0.5)
        task.cancel()
        end = time.monotonic() + 4.8
        while time.monotonic() < end and not task.done():
            verdicts.append(judge([poller], None, time.monotonic()).ok)
            await asyncio.sleep(0.1)
        await asyncio.gather(task, return_exceptions=True)
        return verdicts

    verdicts = asyncio.run(main())
    assert verdicts and all(verdicts), "a bus closing its drivers was taken for hung"
