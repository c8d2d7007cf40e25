"""The bridge against real Mosquitto and real VictoriaMetrics (InfluxDB v2 write API)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.bridge.influx import InfluxWriter
from gateway.bridge.service import Bridge
from gateway.config import parse_config
from gateway.model import Reading, to_epoch_ms, utc_ms
from gateway.telemetry import encode_telemetry
from tests.servers import ServerProcess, vm_export
from tests.system.mqtt_capture import MqttCapture

T0 = utc_ms(datetime(2026, 11, 2, 8, 0, tzinfo=UTC))


def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish with QoS 1 and wait for every PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def readings(device: str, first_seq: int, count: int) -> list[Reading]:
    return [
        Reading(
            device=device,
            metric="co2",
            value=400 + i,
            unit="ppm",
            ts=T0 + timedelta(seconds=5 * (first_seq + i)),
            seq=first_seq + i,
        )
        for i in range(count)
    ]


def series(vm_port: int, name: str) -> dict[tuple[str, int], float]:
    """(device, timestamp ms) -> value for the VictoriaMetrics series ``name``."""
    out: dict[tuple[str, int], float] = {}
    for row in vm_export(vm_port, f'{{__name__="{name}"}}'):
        for value, ts in zip(row["values"], row["timestamps"], strict=True):
            out[(row["metric"]["device"], ts)] = value
    return out


def run_bridge(
    broker: ServerProcess,
    tsdb: ServerProcess,
    body: Callable[[Bridge], Awaitable[None]],
    **bridge: Any,
) -> None:
    config = parse_config(
        {
            "site": {"id": "kg"},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "influxdb": {
                "url": f"http://127.0.0.1:{tsdb.port}",
                "org": "o",
                "bucket": "b",
                "flush_interval": 0.1,
            },
            "bridge": bridge,
        },
        source="test",
    )

    async def main() -> None:
        writer = InfluxWriter(
            url=f"http://127.0.0.1:{tsdb.port}", org="o", bucket="b", token=None, timeout_ms=2000
        )
        service = Bridge(config=config, writer=writer)
        task = asyncio.create_task(service.run())
        try:
            await asyncio.wait_for(service.subscribed.wait(), 10)
            await body(service)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_points_land_with_their_own_timestamps_and_bad_payloads_are_dead_lettered(
    broker: ServerProcess, tsdb: ServerProcess
) -> None:
    dead = MqttCapture(broker.port, "canary/kg/deadletter").start()
    good = readings("room-1", 1, 20)
    messages = [
        ("canary/kg/telemetry/room-1", encode_telemetry("kg", "room-1", good[:10])),
        ("canary/kg/telemetry/room-1", b"{not json"),
        ("canary/kg/telemetry/room-1", encode_telemetry("kg", "room-1", good[10:])),
        ("canary/kg/telemetry/room-2", encode_telemetry("kg", "room-1", good[:1])),
    ]
    try:

        async def body(bridge: Bridge) -> None:
            await asyncio.to_thread(publish, broker.port, messages)
            await until(
                lambda: bridge.stats.messages_acked == 4, 20, "all four messages to be acknowledged"
            )
            assert bridge.stats.points_written == 20
            assert bridge.stats.dead_letters == 2

        run_bridge(broker, tsdb, body)
        stored = series(tsdb.port, "co2_value")
        assert stored == {("room-1", to_epoch_ms(r.ts)): float(r.value) for r in good}  # type: ignore[arg-type]
        seqs = series(tsdb.port, "co2_seq")
        assert sorted(seqs.values()) == [float(r.seq) for r in good]
        reasons = sorted(json.loads(m.payload)["reason"] for m in dead.snapshot())
        assert reasons[0].startswith("not JSON")
        assert "payload names kg/room-1 but arrived on kg/room-2" in reasons[1]
    finally:
        dead.stop()


def test_store_down_keeps_messages_unacknowledged_until_it_is_back(
    broker: ServerProcess, tsdb: ServerProcess
) -> None:
    batch = readings("room-1", 1, 30)

    async def body(bridge: Bridge) -> None:
        tsdb.stop()
        await asyncio.to_thread(
            publish,
            broker.port,
            [("canary/kg/telemetry/room-1", encode_telemetry("kg", "room-1", batch))],
        )
        await until(
            lambda: bridge.stats.write_failures >= 2, 20, "failed writes while the store is down"
        )
        assert bridge.stats.messages_acked == 0
        await asyncio.to_thread(tsdb.start)
        await until(
            lambda: bridge.stats.messages_acked == 1,
            30,
            "the write to succeed after the store is back",
        )

    run_bridge(broker, tsdb, body)
    assert len(series(tsdb.port, "co2_value")) == 30


def test_two_bridges_share_the_load_and_write_everything_once(
    broker: ServerProcess, tsdb: ServerProcess
) -> None:
    """Issue 5, acceptance 7: `$share/<group>/...` splits the stream between two bridges."""

    def config(client_id: str) -> Any:
        return parse_config(
            {
                "site": {"id": "kg"},
                "mqtt": {"host": "127.0.0.1", "port": broker.port},
                "influxdb": {
                    "url": f"http://127.0.0.1:{tsdb.port}",
                    "org": "o",
                    "bucket": "b",
                    "flush_interval": 0.05,
                    "batch_size": 5,
                },
                "bridge": {"client_id": client_id, "share_group": "writers"},
            },
            source="test",
        )

    devices = [f"room-{i}" for i in range(8)]
    per_message, per_device = 5, 12
    messages = [
        (
            f"canary/kg/telemetry/{device}",
            encode_telemetry(
                "kg",
                device,
                readings(device, 1 + d * 1000 + m * per_message, per_message),
            ),
        )
        for d, device in enumerate(devices)
        for m in range(per_device)
    ]
    total = len(messages) * per_message

    async def main() -> list[Bridge]:
        bridges = [
            Bridge(
                config=config(name),
                writer=InfluxWriter(
                    url=f"http://127.0.0.1:{tsdb.port}", org="o", bucket="b", token=None
                ),
            )
            for name in ("bridge-a", "bridge-b")
        ]
        tasks = [asyncio.create_task(b.run()) for b in bridges]
        try:
            for bridge in bridges:
                await asyncio.wait_for(bridge.subscribed.wait(), 10)
            await asyncio.to_thread(publish, broker.port, messages)
            await until(
                lambda: sum(b.stats.messages_acked for b in bridges) >= len(messages),
                20,
                "both bridges to acknowledge everything",
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return bridges

    bridges = asyncio.run(main())
    written = [b.stats.points_written for b in bridges]
    assert all(w > 0 for w in written), f"one bridge did all the work: {written}"
    assert sum(written) == total
    assert len(series(tsdb.port, "co2_seq")) == total
