"""The publisher against a real Mosquitto: a reading leaves the buffer only after the broker's PUBACK."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from gateway.buffer import BufferWorker, SqliteBuffer
from gateway.config import MqttConfig
from gateway.model import Reading, utc_ms
from gateway.sinks.mqtt import MqttPublisher
from tests.servers import ServerProcess
from tests.system.mqtt_capture import MqttCapture


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
            await buffer.append(make_readings(51, 200))
            await asyncio.sleep(
                1.5
            )  # a window in which nothing may be deleted: nobody acknowledged
            assert await buffer.pending() == 200
            broker.start()
            await wait_for(lambda: _empty(buffer), within=60, what="the backlog to drain")

        run_with_publisher(tmp_path, broker.port, body)
        wait = asyncio.run(_settle(capture, 250))
        assert wait, "the persistent subscriber did not receive all readings"
        assert sorted(set(r["seq"] for r in capture.readings())) == list(range(1, 251))
    finally:
        capture.stop()


async def _settle(capture: MqttCapture, count: int) -> bool:
    for _ in range(200):
        if len({r["seq"] for r in capture.readings()}) >= count:
            return True
        await asyncio.sleep(0.05)
    return False


async def _empty(buffer: BufferWorker) -> bool:
    return await buffer.pending() == 0


def _not(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not predicate()

    return check
