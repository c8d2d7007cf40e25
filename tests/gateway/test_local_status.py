"""The local status when things go wrong (issue 8, build item 6).

The daemon runs in-process (`run_gateway`) with drivers written for these tests in place of the
configured devices (`gateway.app.build_driver` is patched), its status socket in tmp_path and no
broker (the uplink is down, which is the case the local status exists for):

- a bus task that hangs (a driver that ignores its timeout) turns ``/healthz`` into 503 naming
  that bus, not before its deadline (with bounds shortened for the test: `GUARD`, `GRACE`) and
  not the healthy bus; it is 200 before and after;
- a hung card does not hang ``/status``: the storage's figures come back null in bounded time,
  and the verdict names the buffer once one storage call has run past its deadline;
- no socket directory: one log line, and the daemon polls on; another gateway on the socket: one
  line, and the first keeps its socket;
- `gateway status` exits 3 with its one-line message when nothing runs (no socket, a stale one);
- the server answers nonsense with 4xx and survives a client that never finishes its request;
- without prometheus-client, `gateway check` says so in one line and ``/metrics`` answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import gateway.app
import gateway.scheduler
from gateway import cli, health
from gateway.app import GatewayRuntime, run_gateway
from gateway.buffer import SqliteBuffer
from gateway.config import GatewayConfig, parse_config
from gateway.errors import ConfigError
from gateway.local import client, metrics
from gateway.local.snapshot import STORAGE_TIMEOUT, take_snapshot
from gateway.model import MetricSpec, Reading, Value, utc_ms
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 0.2
TIMEOUT = 0.05
#: Shorter bounds than the real ones (a guard of 4 * timeout + 10 s per driver call, 10 s of
#: grace), so that a hung step's deadline comes within seconds; the logic is the same at any scale.
GUARD, GRACE = 1.0, 1.0
#: A step's deadline after it began: open, poll and close within their guards, and the grace.
DEADLINE = 3 * GUARD + GRACE


class MeterDriver:
    """Answers at once with a value per poll."""

    metrics: Mapping[str, MetricSpec] = {"power": MetricSpec(key="power", unit="W")}

    def __init__(self) -> None:
        self.polls = 0

    async def open(self) -> None:
        return None

    async def poll(self) -> Mapping[str, Value]:
        self.polls += 1
        return {"power": 1000.0 + self.polls}

    async def close(self) -> None:
        return None


class HangingDriver(MeterDriver):
    """From ``hang`` on, a poll never returns: it swallows the scheduler's timeout (as a driver
    stuck in a blocking call that is not cancellable would) until the test sets ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = False
        self.release = asyncio.Event()
        self.hung_at: float | None = None

    async def poll(self) -> Mapping[str, Value]:
        if self.hang and not self.release.is_set():
            self.hung_at = time.monotonic()
            while not self.release.is_set():
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    continue  # the defect under test: a cancellation that is ignored
        return await super().poll()


@pytest.fixture(autouse=True)
def quick_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """No broker here: do not wait the full drain on each stop (the drain is not under test);
    and the short bounds of `GUARD` and `GRACE`."""
    monkeypatch.setattr(gateway.app, "DRAIN_TIMEOUT", 0.2)
    monkeypatch.setattr(gateway.app, "device_guard", lambda timeout: GUARD)
    monkeypatch.setattr(gateway.scheduler, "PROGRESS_GRACE", GRACE)


def make_config(tmp_path: Path, devices: list[str], **local: str) -> GatewayConfig:
    """Modbus devices on one TCP endpoint each (one bus each); nothing listens there, the
    drivers are the test's (`use_drivers`)."""
    return parse_config(
        {
            "site": {"id": "kg-local"},
            "mqtt": {"host": "127.0.0.1", "port": free_port()},  # no broker: the uplink is down
            "buffer": {"path": str(tmp_path / "buffer.sqlite3"), "commit_interval": 0.2},
            "clock": {"sync": "none"},
            "local": {"socket": str(tmp_path / "gateway.sock"), **local},
            "devices": [
                {
                    "id": name,
                    "driver": "modbus",
                    "interval": INTERVAL,
                    "timeout": TIMEOUT,
                    "transport": {"kind": "tcp", "host": "127.0.0.1", "port": 1 + index},
                    "points": [
                        {"key": "power", "register": "input", "address": 0, "type": "float32"}
                    ],
                }
                for index, name in enumerate(devices)
            ],
        },
        source="test",
    )


def use_drivers(monkeypatch: pytest.MonkeyPatch, drivers: Mapping[str, MeterDriver]) -> None:
    monkeypatch.setattr(gateway.app, "build_driver", lambda device, buses: drivers[device.id])


def run_daemon(
    config: GatewayConfig,
    body: Callable[[GatewayRuntime], Awaitable[None]],
    *,
    ready: Callable[[GatewayRuntime], bool] = lambda runtime: True,
) -> None:
    """Run the daemon until ``ready``, then ``body``, then stop it (within 30 s)."""

    async def scenario() -> None:
        stop = asyncio.Event()
        runtimes: list[GatewayRuntime] = []
        task = asyncio.create_task(run_gateway(config, stop=stop, started=runtimes.append))
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while not (runtimes and ready(runtimes[0])):
                assert not task.done(), task
                assert asyncio.get_running_loop().time() < deadline, "never ready"
                await asyncio.sleep(0.02)
            await body(runtimes[0])
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task

    asyncio.run(scenario())


def polled(*devices: str, times: int = 2) -> Callable[[GatewayRuntime], bool]:
    def check(runtime: GatewayRuntime) -> bool:
        states = {s.id: s for p in runtime.pollers for s in p.devices}
        return all(states[d].polls >= times for d in devices)

    return check


async def get(path: Path, route: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(client.fetch, path, route)


def test_healthz_names_a_hung_bus_after_its_deadline_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hanging, healthy = HangingDriver(), MeterDriver()
    use_drivers(monkeypatch, {"meter-hung": hanging, "meter-ok": healthy})
    config = make_config(tmp_path, ["meter-hung", "meter-ok"])
    sock = tmp_path / "gateway.sock"
    seen: dict[str, Any] = {}

    async def scenario(runtime: GatewayRuntime) -> None:
        seen["before"] = await get(sock, "/healthz")
        hanging.hang = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE + 20
        try:
            while (answer := await get(sock, "/healthz"))[0] == 200:
                assert loop.time() < deadline, "/healthz never reported the hung bus"
                seen["last_200"] = time.monotonic()
                await asyncio.sleep(0.1)
            seen["first_503"], seen["during"] = time.monotonic(), answer
            seen["healthy_polls"] = healthy.polls
            seen["snapshot"] = await take_snapshot(runtime)
        finally:
            hanging.release.set()  # also on failure: else the daemon could never stop
        while (answer := await get(sock, "/healthz"))[0] != 200:
            assert loop.time() < deadline + 10, "/healthz never recovered"
            await asyncio.sleep(0.05)
        seen["after"] = answer

    run_daemon(config, scenario, ready=polled("meter-hung", "meter-ok"))

    assert seen["before"] == (200, b"ok\n")
    assert hanging.hung_at is not None
    # Not before the bus's deadline: the hung step began just before the driver hung.
    assert seen["first_503"] - hanging.hung_at >= DEADLINE - 0.05
    status, body = seen["during"]
    assert status == 503
    (problem,) = body.decode().splitlines()
    assert problem.startswith("bus modbus-tcp://127.0.0.1:1: no progress for "), problem
    assert problem.endswith(" s past its deadline"), problem
    assert seen["healthy_polls"] > DEADLINE / INTERVAL / 2, "the other bus polled on meanwhile"
    snapshot = seen["snapshot"]
    assert not snapshot.health.ok and snapshot.health.problems == [problem]
    stalled = {bus.name: bus.stalled for bus in snapshot.buses}
    assert stalled == {"bus modbus-tcp://127.0.0.1:1": True, "bus modbus-tcp://127.0.0.1:2": False}
    assert seen["after"] == (200, b"ok\n")


class HungCard(SqliteBuffer):
    """A real buffer whose commits block the storage thread while ``HungCard.stuck`` is set."""

    stuck = threading.Event()
    entered = threading.Event()
    free = threading.Event()

    def commit(self, *args: Any, **kwargs: Any) -> int:
        if HungCard.stuck.is_set():
            HungCard.entered.set()
            HungCard.free.wait(60)
        return super().commit(*args, **kwargs)


def test_a_hung_card_does_not_hang_the_status_and_the_verdict_names_the_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for event in (HungCard.stuck, HungCard.entered, HungCard.free):
        event.clear()
    monkeypatch.setattr(gateway.app, "SqliteBuffer", HungCard)
    config = make_config(tmp_path, [])
    sock = tmp_path / "gateway.sock"
    seen: dict[str, Any] = {}

    async def scenario(runtime: GatewayRuntime) -> None:
        HungCard.stuck.set()
        ts = utc_ms(datetime.now(UTC))
        runtime.buffer.stage(
            [
                Reading(
                    device="m", metric="p", value=1.0, unit="W", ts=ts, seq=runtime.sequence.next()
                )
                for _ in range(3)
            ]
        )
        staged = time.monotonic()
        # The write-behind tick hands them to the storage thread, which hangs there.
        assert await asyncio.to_thread(HungCard.entered.wait, 10)
        started = time.monotonic()
        code, body = await get(sock, "/status")
        seen["elapsed"] = time.monotonic() - started
        seen["status"] = code, client.parse(body)
        busy = runtime.buffer.worker.busy_since
        assert busy is not None and busy >= staged
        seen["early"] = health.verdict(runtime, busy + health.STORAGE_DEADLINE - 1)
        seen["late"] = health.verdict(runtime, busy + health.STORAGE_DEADLINE + 1)
        seen["healthz"] = await get(sock, "/healthz")
        HungCard.free.set()

    try:
        run_daemon(config, scenario)
    finally:
        HungCard.free.set()

    code, snapshot = seen["status"]
    assert code == 200
    assert seen["elapsed"] < STORAGE_TIMEOUT + 1.5, "the status waited on the hung card"
    buffer = snapshot.buffer
    assert (buffer.pending, buffer.dropped, buffer.oldest_pending) == (None, None, None)
    assert buffer.storage_answering is False and buffer.unwritten == 3
    assert seen["early"] == health.Verdict(ok=True, problems=())
    assert not seen["late"].ok
    (problem,) = seen["late"].problems
    assert problem.startswith("buffer: one storage call has run for "), problem
    assert seen["healthz"] == (200, b"ok\n"), "within the deadline in real time"
    assert "the storage does not answer (3 readings only in memory)" in client.render(snapshot)


def test_without_the_socket_directory_one_line_and_the_daemon_polls_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.local")
    meter = MeterDriver()
    use_drivers(monkeypatch, {"meter": meter})
    missing = tmp_path / "run" / "canary-gateway" / "gateway.sock"
    config = make_config(tmp_path, ["meter"], socket=str(missing))

    async def nothing(runtime: GatewayRuntime) -> None:
        return None

    run_daemon(config, nothing, ready=polled("meter", times=3))

    records = [r for r in caplog.records if r.name.startswith("gateway.local")]
    assert [r.getMessage() for r in records] == [
        f"local status socket off: {missing.parent} does not exist (the unit creates it; "
        "`gateway status` needs it)"
    ]
    assert not missing.parent.exists()
    assert meter.polls >= 3


def test_a_second_gateway_leaves_the_first_ones_socket_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.local")
    use_drivers(monkeypatch, {"first": MeterDriver(), "second": MeterDriver()})
    sock = tmp_path / "gateway.sock"
    first = make_config(tmp_path, ["first"])
    (tmp_path / "two").mkdir()
    second = make_config(tmp_path / "two", ["second"], socket=str(sock))
    seen: dict[str, Any] = {}

    async def start_second(runtime: GatewayRuntime) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_gateway(second, stop=stop))
        deadline = asyncio.get_running_loop().time() + 20
        while not any("another gateway" in r.getMessage() for r in caplog.records):
            assert asyncio.get_running_loop().time() < deadline, "the second never noticed"
            await asyncio.sleep(0.05)
        stop.set()
        await task
        code, body = await get(sock, "/status")
        seen["after"] = code, client.parse(body)

    run_daemon(first, start_second, ready=polled("first"))

    code, snapshot = seen["after"]
    assert code == 200 and [d.id for d in snapshot.devices] == ["first"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"local status socket off: another gateway already answers on {sock}"]
    assert not sock.exists(), "the first removed its socket on its clean stop"


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def test_gateway_status_exits_3_with_how_to_start_it_when_no_daemon_runs(tmp_path: Path) -> None:
    sock = tmp_path / "gateway.sock"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[site]\nid = "kg"\n\n[local]\nsocket = "{sock}"\n')
    missing = run_status("--config", str(config))
    # A socket file left behind by a daemon that was killed: connecting is refused.
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(sock))
    refused = run_status("--config", str(config), "--json")

    for result in (missing, refused):
        assert result.returncode == 3
        assert result.stdout == ""
        assert result.stderr == (
            f"gateway status: the gateway daemon is not running (nothing answers on {sock}); "
            "start it with `sudo systemctl start gateway`, and see `systemctl status gateway` "
            "for why it stopped\n"
        )


def test_gateway_status_with_the_socket_off_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[site]\nid = "kg"\n\n[local]\nsocket = ""\n')

    assert cli.main(["status", "--config", str(config)]) == cli.EXIT_CONFIG
    assert capsys.readouterr().err == (
        f'config error: {config}: local.socket: the status socket is off ("")\n'
    )


def raw_request(path: Path, data: bytes, *, read: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        if not read:
            return b""
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_the_server_answers_nonsense_with_4xx_and_outlives_a_silent_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_drivers(monkeypatch, {"meter": MeterDriver()})
    config = make_config(tmp_path, ["meter"])
    sock = tmp_path / "gateway.sock"
    seen: dict[str, Any] = {}

    async def scenario(runtime: GatewayRuntime) -> None:
        def exchange() -> None:
            with socket.socket(socket.AF_UNIX) as silent:  # connects, never sends a request
                silent.connect(str(sock))
                seen["404"] = raw_request(sock, b"GET /nothing HTTP/1.1\r\n\r\n")
                seen["405"] = raw_request(sock, b"POST /status HTTP/1.1\r\n\r\n")
                seen["400"] = raw_request(sock, b"HELLO\r\n\r\n")
                seen["huge"] = raw_request(sock, b"GET /status HTTP/1.1\r\nX: " + b"a" * 20000)
                seen["ok"] = client.fetch(sock, "/healthz")

        await asyncio.to_thread(exchange)

    run_daemon(config, scenario, ready=polled("meter"))

    assert seen["404"].startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert seen["405"].startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert seen["400"].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert seen["huge"] == b"", "an oversized request is dropped unanswered"
    assert seen["ok"] == (200, b"ok\n")


def test_without_prometheus_client_check_says_so_and_metrics_answers_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(metrics, "available", lambda: False)
    use_drivers(monkeypatch, {"meter": MeterDriver()})
    port = free_port()
    path = tmp_path / "gateway.toml"
    path.write_text(f'[site]\nid = "kg"\n\n[local]\nhttp = "127.0.0.1:{port}"\n')

    assert cli.main(["check", "--config", str(path)]) == cli.EXIT_CONFIG
    assert capsys.readouterr().err == f"config error: {path}: local.http: {metrics.MISSING}\n"

    config = make_config(tmp_path, ["meter"])
    seen: dict[str, Any] = {}

    async def scrape(runtime: GatewayRuntime) -> None:
        seen["metrics"] = await get(tmp_path / "gateway.sock", "/metrics")
        seen["healthz"] = await get(tmp_path / "gateway.sock", "/healthz")

    run_daemon(config, scrape, ready=polled("meter"))

    assert seen["metrics"] == (503, f"{metrics.MISSING}\n".encode())
    assert seen["healthz"] == (200, b"ok\n")


@pytest.mark.parametrize(
    ("local", "message"),
    [
        (
            {"socket": "gateway.sock"},
            'local.socket: expected an absolute path, or "" to turn the socket off',
        ),
        ({"socket": "/" + "x" * 120}, "local.socket: a unix socket path has at most 107 bytes"),
        ({"http": "9108"}, "local.http: expected HOST:PORT, e.g. \"127.0.0.1:9108\" (got '9108')"),
        (
            {"http": "127.0.0.1:99999"},
            "local.http: expected HOST:PORT, e.g. \"127.0.0.1:9108\" (got '127.0.0.1:99999')",
        ),
        ({"port": 9108}, "local.port: unknown key (check the spelling; see docs/configuration.md)"),
    ],
)
def test_local_section_errors_name_the_key(local: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"site": {"id": "kg"}, "local": local}, source="gw.toml")
    assert str(error.value) == f"gw.toml: {message}"


def test_local_section_defaults_and_addresses() -> None:
    default = parse_config({"site": {"id": "kg"}}, source="gw.toml").local
    assert default.socket_path == Path("/run/canary-gateway/gateway.sock")
    assert default.http_address is None
    local = parse_config(
        {"site": {"id": "kg"}, "local": {"socket": "", "http": "[::1]:9108"}}, source="gw.toml"
    ).local
    assert local.socket_path is None and local.http_address == ("::1", 9108)
