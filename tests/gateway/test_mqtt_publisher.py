"""The publisher against a real Mosquitto: a reading leaves the buffer only after the broker's PUBACK."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import gateway.app
import gateway.sinks.mqtt
from gateway.app import _publisher_runs
from gateway.buffer import BufferWorker, SqliteBuffer
from gateway.config import MqttConfig
from gateway.model import Reading, utc_ms
from gateway.sinks.mqtt import MqttPublisher
from gateway.status.alarms import AlarmState
from tests.servers import ServerProcess, wait_until
from tests.system.mqtt_capture import Captured, MqttCapture


def make_readings(first: int, count: int) -> list[Reading]:
    ts = utc_ms(datetime.now(UTC))
    return [
        Reading(
            device=f"meter-{seq % 3}", metric="power", value=float(seq), unit="W", ts=ts, seq=seq
        )
        for seq in range(first, first + count)
    ]


async def wait_for(condition: Callable[[], Awaitable[bool]], *, within: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def run_with_publisher(
    tmp_path: Path, port: int, body: Callable[[BufferWorker, MqttPublisher], Awaitable[None]]
) -> None:
    async def main() -> None:
        buffer = BufferWorker(SqliteBuffer(tmp_path / "buffer.sqlite3"))
        config = MqttConfig(host="127.0.0.1", port=port, max_inflight=20)
        publisher = MqttPublisher(config=config, site="kg", buffer=buffer, batch_size=100)
        task = asyncio.create_task(publisher.run())
        try:
            await body(buffer, publisher)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await buffer.close()

    asyncio.run(main())


def test_every_reading_published_then_forgotten(tmp_path: Path, broker: ServerProcess) -> None:
    capture = MqttCapture(broker.port, "canary/kg/#").start()
    try:

        async def body(buffer: BufferWorker, publisher: MqttPublisher) -> None:
            await buffer.append(make_readings(1, 1000))
            await wait_for(lambda: _empty(buffer), within=30, what="the buffer to drain")
            assert publisher.stats.readings_acked == 1000

        run_with_publisher(tmp_path, broker.port, body)
        seqs = sorted(r["seq"] for r in capture.readings())
        assert sorted(set(seqs)) == list(range(1, 1001))
        statuses = [m.json()["state"] for m in capture.snapshot() if m.topic == "canary/kg/status"]
        assert statuses[0] == "online" and statuses[-1] == "offline"
    finally:
        capture.stop()


def test_nothing_leaves_the_buffer_while_the_broker_is_down(
    tmp_path: Path, broker: ServerProcess
) -> None:
    capture = MqttCapture(broker.port, "canary/kg/telemetry/#", client_id="test-capture").start()
    try:

        async def body(buffer: BufferWorker, publisher: MqttPublisher) -> None:
            await buffer.append(make_readings(1, 50))
            await wait_for(lambda: _empty(buffer), within=30, what="the first readings to go out")
            broker.stop()
            await wait_for(_not(publisher.connected.is_set), within=10, what="the disconnect")
            sent = publisher.stats.messages_sent
            await buffer.append(make_readings(51, 200))  # committed: the publisher is woken
            # Nobody can acknowledge: until paho has tried and failed to reconnect, and after,
            # nothing may be deleted or even handed to paho.
            await wait_for(
                lambda: _now(publisher.connect_failures >= 1),
                within=10,
                what="a failed reconnection attempt",
            )
            assert await buffer.pending() == 200
            assert publisher.stats.messages_sent == sent
            broker.start()
            await wait_for(lambda: _empty(buffer), within=60, what="the backlog to drain")

        run_with_publisher(tmp_path, broker.port, body)
        wait_until(
            lambda: len({r["seq"] for r in capture.readings()}) >= 250,
            timeout=10,
            what="the persistent subscriber to receive all readings",
        )
        assert sorted(set(r["seq"] for r in capture.readings())) == list(range(1, 251))
    finally:
        capture.stop()


def test_a_crashed_publisher_is_restarted_afresh_and_delivers_what_it_had_begun(
    tmp_path: Path, broker: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug crashes the publisher after it had begun a batch: the supervisor's restart must run
    a fresh publisher (a reused one stays half-stopped: no status, stale in-flight maps), the
    begun batch must be delivered, and the status topic and the alarm states go on."""
    monkeypatch.setattr(gateway.app, "RESTART_PAUSE", 0.05)
    real_encode = gateway.sinks.mqtt.encode_telemetry
    crashes = 0

    def encode_with_a_bug(*args: Any, **kwargs: Any) -> bytes:
        nonlocal crashes
        if crashes == 0:  # the first batch only, begun and never published
            crashes += 1
            raise RuntimeError("a bug while encoding")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(gateway.sinks.mqtt, "encode_telemetry", encode_with_a_bug)
    capture = MqttCapture(broker.port, "canary/kg/#").start()
    alarm = AlarmState(
        device="gateway",
        name="buffer_dropped",
        active=True,
        value=3,
        unit="readings",
        threshold=0,
        since=utc_ms(datetime.now(UTC)),
    )
    try:

        async def main() -> None:
            buffer = BufferWorker(SqliteBuffer(tmp_path / "buffer.sqlite3"))
            config = MqttConfig(host="127.0.0.1", port=broker.port, max_inflight=20)
            first = MqttPublisher(config=config, site="kg", buffer=buffer, batch_size=100)
            first.publish_alarm(alarm, event=True)  # raised while not connected yet
            holder = SimpleNamespace(publisher=first)
            await buffer.append(make_readings(1, 300))
            task = asyncio.create_task(gateway.app._supervise("mqtt", _publisher_runs(holder)))  # type: ignore[arg-type]
            try:
                await wait_for(lambda: _empty(buffer), within=30, what="the buffer to drain")
                assert crashes == 1
                assert holder.publisher is not first, "the restart built a new publisher"
                holder.publisher.publish_status({"marker": "after the restart"})
                await wait_for(
                    lambda: _now(any(_marked(m) for m in capture.snapshot())),
                    within=10,
                    what="the status published after the restart",
                )
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await buffer.close()

        asyncio.run(main())
        assert sorted(set(r["seq"] for r in capture.readings())) == list(range(1, 301))
        alarm_topic = "canary/kg/alarms/gateway/buffer_dropped"
        assert [m.json()["state"] for m in capture.snapshot() if m.topic == alarm_topic]
        events = [m.json() for m in capture.snapshot() if m.topic == "canary/kg/events"]
        assert [e["alarm"] for e in events] == ["buffer_dropped"], "the event survived, once"
    finally:
        capture.stop()


def _marked(message: Captured) -> bool:
    return message.topic == "canary/kg/status" and message.json().get("marker") is not None


async def _now(value: bool) -> bool:
    return value


async def _empty(buffer: BufferWorker) -> bool:
    return await buffer.pending() == 0


def _not(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not predicate()

    return check
