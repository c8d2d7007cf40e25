"""The publisher with ``payload = "v2"`` against a real Mosquitto: every message validates
against its schema, every sequence number is rebuilt from the compact messages, the retained
descriptions go out before the telemetry of a connection, again after a broker that lost them,
and again when a batch holds a metric they did not name."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.buffer import BufferWorker, SqliteBuffer
from gateway.config import MqttConfig
from gateway.describe import Described
from gateway.model import Reading, utc_ms
from gateway.sinks.mqtt import MqttPublisher
from gateway.telemetry import DeviceDescription, MetricDescription
from tests.gateway.test_mqtt_publisher import _empty, _not, wait_for
from tests.servers import MosquittoServer, wait_until
from tests.system.mqtt_capture import MqttCapture

DEVICES = ("meter-0", "meter-1")


def polls(
    first_seq: int, count: int, metrics: tuple[str, ...] = ("current", "power")
) -> list[Reading]:
    """``count`` polls of each device, numbered in key order as the scheduler does."""
    ts0 = utc_ms(datetime.now(UTC))
    out, seq = [], first_seq
    for n in range(count):
        for device in DEVICES:
            for metric in sorted(metrics):
                value = 230.0 + seq / 8
                out.append(
                    Reading(
                        device=device,
                        metric=metric,
                        value=value,
                        unit="W",
                        ts=ts0 + timedelta(seconds=n),
                        seq=seq,
                    )
                )
                seq += 1
    return out


class Directory:
    """A `describe` callback whose metrics can grow (a SunSpec device after its discovery)."""

    def __init__(self) -> None:
        self.metrics = ("current", "power")
        self.calls = 0

    def __call__(self) -> Mapping[str, Described]:
        self.calls += 1
        return {
            device: Described(
                DeviceDescription(
                    site="kg",
                    device=device,
                    driver="modbus",
                    metrics={m: MetricDescription(unit="W") for m in self.metrics},
                ),
                frozenset(self.metrics),
            )
            for device in DEVICES
        }


def run_v2(
    tmp_path: Path,
    port: int,
    directory: Directory,
    body: Callable[[BufferWorker, MqttPublisher], Awaitable[None]],
) -> None:
    async def main() -> None:
        buffer = BufferWorker(SqliteBuffer(tmp_path / "buffer.sqlite3"))
        config = MqttConfig(host="127.0.0.1", port=port, max_inflight=20, payload="v2")
        publisher = MqttPublisher(
            config=config, site="kg", buffer=buffer, batch_size=100, describe=directory
        )
        task = asyncio.create_task(publisher.run())
        try:
            await body(buffer, publisher)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await buffer.close()

    asyncio.run(main())


def _first_index(topics: list[str], part: str) -> int:
    return next(i for i, t in enumerate(topics) if part in t)


def test_v2_messages_validate_and_carry_every_sequence_number(
    tmp_path: Path, broker: MosquittoServer
) -> None:
    capture = MqttCapture(broker.port, "canary/kg/#").start()
    directory = Directory()
    try:

        async def body(buffer: BufferWorker, publisher: MqttPublisher) -> None:
            await buffer.append(polls(1, 150))  # 600 readings: batches of 100, several polls each
            await wait_for(lambda: _empty(buffer), within=30, what="the buffer to drain")
            assert publisher.stats.readings_acked == 600
            # 2 values per poll: the bytes per value are dominated by the poll's header here.
            assert publisher.stats.payload_bytes / 600 < 40

        run_v2(tmp_path, broker.port, directory, body)
        assert capture.invalid == []
        assert capture.versions == {2}
        assert sorted(r["seq"] for r in capture.readings()) == list(range(1, 601))
        assert {r["unit"] for r in capture.readings()} == {"W"}
        topics = [m.topic for m in capture.snapshot()]
        for device in DEVICES:
            assert _first_index(topics, f"devices/{device}") < _first_index(
                topics, f"telemetry/{device}"
            )
        # Several polls of a device in one message (a batch), not one message per poll.
        assert any(b'"polls"' in m.payload for m in capture.snapshot() if "/telemetry/" in m.topic)
    finally:
        capture.stop()
    late = MqttCapture(broker.port, "canary/kg/devices/+").start()
    try:
        wait_until(lambda: len(late.snapshot()) == 2, timeout=10, what="the retained descriptions")
        assert all(m.retain for m in late.snapshot())
        assert late.invalid == []
    finally:
        late.stop()


def test_descriptions_are_sent_again_after_the_broker_lost_them_and_when_metrics_grow(
    tmp_path: Path, broker: MosquittoServer
) -> None:
    directory = Directory()

    def retained() -> list[bytes]:
        probe = MqttCapture(broker.port, "canary/kg/devices/+").start()
        try:
            wait_until(lambda: len(probe.snapshot()) >= 2, timeout=10, what="retained descriptions")
            return sorted(m.payload for m in probe.snapshot())
        finally:
            probe.stop()

    async def body(buffer: BufferWorker, publisher: MqttPublisher) -> None:
        await buffer.append(polls(1, 2))
        await wait_for(lambda: _empty(buffer), within=30, what="the first readings to go out")
        assert len(await asyncio.to_thread(retained)) == 2
        # A broker restart without its persistence file: the retained messages are gone.
        broker.stop()
        broker.persistence_file.unlink()
        await wait_for(_not(publisher.connected.is_set), within=10, what="the disconnect")
        broker.start()
        await wait_for(lambda: _now(publisher.connected.is_set()), within=30, what="reconnect")
        assert len(await asyncio.to_thread(retained)) == 2
        # A metric the descriptions did not name: described again before its telemetry.
        capture = MqttCapture(broker.port, "canary/kg/#").start()
        try:
            directory.metrics = ("current", "power", "voltage")
            await buffer.append(polls(100, 1, metrics=directory.metrics))
            await wait_for(lambda: _empty(buffer), within=30, what="the new metric to go out")
            await asyncio.to_thread(
                wait_until,
                lambda: len(capture.readings()) == 6,
                timeout=10,
                what="the new poll to be received",
            )
            assert capture.invalid == []
            assert {r["unit"] for r in capture.readings()} == {"W"}  # units known: described first
            assert all(b"voltage" in p for p in await asyncio.to_thread(retained))
        finally:
            capture.stop()

    run_v2(tmp_path, broker.port, directory, body)


async def _now(value: bool) -> bool:
    return value
