"""Shared fixtures: real servers, and a check that no test leaks threads or processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves threads or server processes behind (pymodbus' system_health_check)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        # asyncio's default executor threads end with their loop; pool threads may linger briefly.
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    procs = [p for p in servers.RUNNING if p.poll() is None]
    assert not procs, f"test left server processes running: {[p.args for p in procs]}"
    assert not extra, f"test left threads running: {[t.name for t in extra]}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[servers.MosquittoServer]:
    """A real Mosquitto broker on a free loopback port, stopped after the test.

    Its persistence is checked: it fails to start unless it can write its persistence file, and
    a clean stop fails unless it saved (see `servers.MosquittoServer`)."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    server = servers.mosquitto(workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tsdb(tmp_path: Path) -> Iterator[servers.ServerProcess]:
    """A real VictoriaMetrics (InfluxDB v2 write API at /api/v2/write) on a free loopback port,
    deduplicating identical timestamps as docs/mqtt.md deploys it."""
    workdir = tmp_path / "vm"
    workdir.mkdir()
    server = servers.victoria_metrics(workdir)
    server.start()
    yield server
    server.stop()
