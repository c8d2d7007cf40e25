"""TLS with a client certificate, and the MQTT password from the environment or a file.

Everything runs against a real Mosquitto whose only listener requires a client certificate signed
by a throwaway CA *and* a user name and password (`tests.tls`). What is checked is what a site
would see: readings arrive and leave the buffer only with the right credentials; a wrong password
or a missing certificate keeps every reading in the buffer, and the refusal is logged, not raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.bridge.influx import InfluxWriter
from gateway.bridge.service import Bridge
from gateway.buffer import BufferWorker, SqliteBuffer
from gateway.config import MqttConfig, parse_config
from gateway.model import Reading, utc_ms
from gateway.sinks.mqtt import MqttPublisher
from tests.servers import ServerProcess, vm_export, wait_until
from tests.system.mqtt_capture import MqttCapture
from tests.tls import Pki, broker_log, make_pki, secure_mosquitto

USER = "canary-gw"
PASSWORD = "correct horse battery staple"
PASSWORD_ENV = "CANARY_TEST_MQTT_PASSWORD"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One CA with server and client certificates for the whole module (certificates are inert)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def secure_broker(tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    """Mosquitto requiring a client certificate and ``USER``/``PASSWORD``, stopped after the test."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    server = secure_mosquitto(workdir, pki, {USER: PASSWORD})
    server.start()
    yield server
    server.stop()


def mqtt_settings(
    port: int, pki: Pki, *, password: dict[str, str], client_cert: bool = True
) -> dict[str, Any]:
    """The ``[mqtt]`` table as the TOML loader would hand it over (paths as strings)."""
    tls = {"ca_file": str(pki.ca_cert)}
    if client_cert:
        tls |= {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    return {
        "host": "127.0.0.1",
        "port": port,
        "username": USER,
        "password": password,
        "tls": tls,
        "max_inflight": 20,
    }


def password_in_env(monkeypatch: pytest.MonkeyPatch, value: str = PASSWORD) -> dict[str, str]:
    monkeypatch.setenv(PASSWORD_ENV, value)
    return {"env": PASSWORD_ENV}


def password_in_file(path: Path) -> dict[str, str]:
    path.write_text(
        PASSWORD + "\n"
    )  # as `echo secret > file` writes it: the newline is not part of it
    path.chmod(0o600)
    return {"file": str(path)}


def tls_capture(port: int, pki: Pki, topic: str) -> MqttCapture:
    """A test subscriber that authenticates like the gateway: client certificate and password."""
    capture = MqttCapture(port, topic)
    capture.client.tls_set(
        ca_certs=str(pki.ca_cert), certfile=str(pki.client_cert), keyfile=str(pki.client_key)
    )
    capture.client.username_pw_set(USER, PASSWORD)
    return capture.start()


def make_readings(first: int, count: int) -> list[Reading]:
    # One timestamp per reading: the store keeps one sample per series and millisecond.
    ts = utc_ms(datetime.now(UTC))
    return [
        Reading(
            device="meter-1",
            metric="power",
            value=float(seq),
            unit="W",
            ts=ts + timedelta(milliseconds=seq),
            seq=seq,
        )
        for seq in range(first, first + count)
    ]


async def until(condition: Callable[[], bool], *, within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def drained(buffer: BufferWorker, *, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while await buffer.pending():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for the buffer to drain")
        await asyncio.sleep(0.05)


def run_with_publisher(
    tmp_path: Path,
    settings: dict[str, Any],
    body: Callable[[BufferWorker, MqttPublisher], Awaitable[None]],
) -> None:
    """Run ``body`` while a publisher drains a fresh buffer; the publisher must survive ``body``."""

    async def main() -> None:
        buffer = BufferWorker(SqliteBuffer(tmp_path / "buffer.sqlite3"))
        config = MqttConfig.model_validate(settings)
        publisher = MqttPublisher(config=config, site="kg", buffer=buffer, batch_size=100)
        task = asyncio.create_task(publisher.run(), name="publisher")
        try:
            await body(buffer, publisher)
            assert not task.done(), f"the publisher stopped: {task}"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await buffer.close()

    asyncio.run(main())


@pytest.mark.parametrize("source", ["env", "file"])
def test_readings_go_out_over_tls_with_certificate_and_password(
    source: str,
    tmp_path: Path,
    pki: Pki,
    secure_broker: ServerProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if source == "env":
        password = password_in_env(monkeypatch)
    else:
        password = password_in_file(tmp_path / "mqtt-password")
    capture = tls_capture(secure_broker.port, pki, "canary/kg/telemetry/#")
    try:

        async def body(buffer: BufferWorker, publisher: MqttPublisher) -> None:
            await buffer.append(make_readings(1, 30))
            await drained(buffer, within=15)
            assert publisher.stats.readings_acked == 30
            assert publisher.stats.connects == 1

        run_with_publisher(
            tmp_path, mqtt_settings(secure_broker.port, pki, password=password), body
        )
        wait_until(
            lambda: len(capture.readings()) >= 30, timeout=10, what="the readings at the subscriber"
        )
        assert sorted(r["seq"] for r in capture.readings()) == list(range(1, 31))
    finally:
        capture.stop()


def test_a_wrong_password_is_logged_and_keeps_the_readings(
    tmp_path: Path,
    pki: Pki,
    secure_broker: ServerProcess,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = mqtt_settings(
        secure_broker.port, pki, password=password_in_env(monkeypatch, "not the password")
    )

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno >= logging.WARNING]

    async def body(buffer: BufferWorker, publisher: MqttPublisher) -> None:
        await buffer.append(make_readings(1, 10))
        # paho retries with backoff (1 s, 2 s, ...); wait for several refused attempts.
        await until(lambda: publisher.connect_failures >= 3, within=15, what="three refusals")
        assert await buffer.pending() == 10
        assert publisher.stats.messages_sent == 0
        assert not publisher.connected.is_set()

    run_with_publisher(tmp_path, settings, body)
    # Logged once for the whole outage, with the cause; no traceback.
    (only,) = warnings()
    assert "cannot connect to MQTT broker" in only.getMessage()
    assert "not authori" in only.getMessage().lower()
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"
    assert "not authorised" in broker_log(secure_broker)


def test_without_a_client_certificate_nothing_is_published(
    tmp_path: Path,
    pki: Pki,
    secure_broker: ServerProcess,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = mqtt_settings(
        secure_broker.port, pki, password=password_in_env(monkeypatch), client_cert=False
    )

    def rejected() -> bool:
        return "peer did not return a certificate" in broker_log(secure_broker)

    async def body(buffer: BufferWorker, publisher: MqttPublisher) -> None:
        await buffer.append(make_readings(1, 10))
        await until(rejected, within=10, what="the broker to reject the handshake")
        assert await buffer.pending() == 10
        assert publisher.stats.connects == 0
        assert publisher.stats.messages_sent == 0
        assert not publisher.connected.is_set()
        await until(lambda: publisher.connect_failures >= 2, within=15, what="two failures")

    run_with_publisher(tmp_path, settings, body)
    # A TLS rejection is not silent: one warning for the outage, naming the TLS failure.
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "cannot connect to MQTT broker" in warnings[0].getMessage()
    assert "certificate" in warnings[0].getMessage().lower()


def test_the_bridge_subscribes_over_tls_and_writes_what_arrives(
    tmp_path: Path,
    pki: Pki,
    secure_broker: ServerProcess,
    tsdb: ServerProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway_settings = mqtt_settings(secure_broker.port, pki, password=password_in_env(monkeypatch))
    bridge_password = password_in_file(tmp_path / "bridge-password")
    config = parse_config(
        {
            "site": {"id": "kg"},
            "mqtt": mqtt_settings(secure_broker.port, pki, password=bridge_password),
            "influxdb": {
                "url": f"http://127.0.0.1:{tsdb.port}",
                "org": "o",
                "bucket": "b",
                "flush_interval": 0.1,
            },
        },
        source="test",
    )

    async def body(buffer: BufferWorker, publisher: MqttPublisher) -> None:
        writer = InfluxWriter(
            url=f"http://127.0.0.1:{tsdb.port}", org="o", bucket="b", token=None, timeout_ms=2000
        )
        bridge = Bridge(config=config, writer=writer)
        task = asyncio.create_task(bridge.run(), name="bridge")
        try:
            await asyncio.wait_for(bridge.subscribed.wait(), 10)
            await buffer.append(make_readings(1, 5))
            await drained(buffer, within=15)
            await until(lambda: bridge.stats.points_written == 5, within=15, what="the points")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run_with_publisher(tmp_path, gateway_settings, body)
    rows = vm_export(tsdb.port, '{__name__="power_value"}')
    assert [row["metric"]["device"] for row in rows] == ["meter-1"]
    assert sorted(rows[0]["values"]) == [1.0, 2.0, 3.0, 4.0, 5.0]
