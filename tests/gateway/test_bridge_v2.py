"""The bridge with payload v2 (real Mosquitto, real VictoriaMetrics): v1 and v2 gateways at the
same time store the same points, a v2 message that arrives before its device's description is
held (not acknowledged, not dead-lettered) and stored once the description comes, and a replayed
v2 message adds nothing."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from gateway.bridge.service import Bridge
from gateway.model import Quality, Reading
from gateway.telemetry import (
    DeviceDescription,
    MetricDescription,
    encode_telemetry,
    encode_telemetry_v2,
)
from tests.gateway.test_bridge import T0, publish, run_bridge, until
from tests.servers import ServerProcess, vm_export

METRICS = {"current": "A", "energy": "kWh", "power": "W", "voltage": "V"}


def poll(device: str, first_seq: int, n: int) -> list[Reading]:
    """Poll ``n`` of a meter: one reading per metric, numbered in key order."""
    out = []
    for i, metric in enumerate(sorted(METRICS)):
        value = None if (metric == "current" and n == 1) else 100.0 * n + i
        out.append(
            Reading(
                device=device,
                metric=metric,
                value=value,
                unit=METRICS[metric],
                ts=T0 + timedelta(seconds=n),
                seq=first_seq + i,
                quality=Quality.GOOD if value is not None else Quality.NO_VALUE,
            )
        )
    return out


def description(site: str, device: str) -> bytes:
    return DeviceDescription(
        site=site,
        device=device,
        driver="modbus",
        metrics={k: MetricDescription(unit=u) for k, u in METRICS.items()},
    ).encode()


def stored_points(tsdb: int, site: str) -> set[tuple[str, str, str, int, float, float | None]]:
    """(device, metric, unit, ts, seq, value) of every reading stored for ``site``."""
    rows: dict[tuple[str, str, str, int], dict[str, float]] = {}
    for row in vm_export(tsdb, f'{{site="{site}"}}'):
        name = row["metric"]["__name__"]
        metric, _, field = name.rpartition("_")
        for value, ts in zip(row["values"], row["timestamps"], strict=True):
            key = (row["metric"]["device"], metric, row["metric"].get("unit", ""), ts)
            rows.setdefault(key, {})[field] = value
    return {(*key, fields["seq"], fields.get("value")) for key, fields in rows.items()}


def test_v1_and_v2_gateways_at_the_same_time_store_the_same_points(
    broker: ServerProcess, tsdb: ServerProcess
) -> None:
    polls = [poll("meter-1", 1 + 4 * n, n + 1) for n in range(3)]  # seq 1..12
    flat = [r for p in polls for r in p]
    messages = [
        ("canary/kg-a/devices/meter-1", description("kg-a", "meter-1")),
        # A live poll, then a backlog batch of two polls in one message.
        ("canary/kg-a/telemetry/meter-1", encode_telemetry_v2(polls[0])),
        ("canary/kg-a/telemetry/meter-1", encode_telemetry_v2(polls[1] + polls[2])),
        ("canary/kg-b/telemetry/meter-1", encode_telemetry("kg-b", "meter-1", flat[:5])),
        ("canary/kg-b/telemetry/meter-1", encode_telemetry("kg-b", "meter-1", flat[5:])),
    ]

    async def body(bridge: Bridge) -> None:
        await asyncio.to_thread(publish, broker.port, messages)
        await until(lambda: bridge.stats.messages_acked == 4, 20, "four telemetry messages acked")
        assert bridge.stats.points_written == 24
        assert bridge.stats.dead_letters == 0

    run_bridge(broker, tsdb, body)
    v2 = stored_points(tsdb.port, "kg-a")
    assert len(v2) == 12
    assert v2 == stored_points(tsdb.port, "kg-b")
    assert {p[4] for p in v2} == {float(s) for s in range(1, 13)}
    assert (
        "meter-1",
        "current",
        "A",
        int((T0 + timedelta(seconds=1)).timestamp() * 1000),
        1.0,
        None,
    ) in v2


def test_a_v2_message_before_its_description_is_held_then_stored(
    broker: ServerProcess, tsdb: ServerProcess
) -> None:
    readings = poll("meter-9", 1, 1) + poll("meter-9", 5, 2)

    async def body(bridge: Bridge) -> None:
        telemetry = ("canary/kg/telemetry/meter-9", encode_telemetry_v2(readings))
        await asyncio.to_thread(publish, broker.port, [telemetry])
        await until(lambda: bridge.undescribed == 1, 10, "the message to wait for its units")
        # Held, not written, not dead-lettered, not acknowledged, while no description exists.
        assert bridge.held == 1
        assert (bridge.stats.points_written, bridge.stats.dead_letters) == (0, 0)
        assert bridge.stats.messages_acked == 0
        devices = ("canary/kg/devices/meter-9", description("kg", "meter-9"))
        await asyncio.to_thread(publish, broker.port, [devices])
        await until(lambda: bridge.stats.messages_acked == 1, 20, "the message to be stored")
        assert bridge.stats.points_written == 8
        # A replay of the same message is stored again on the same points: nothing added.
        await asyncio.to_thread(publish, broker.port, [telemetry])
        await until(lambda: bridge.stats.messages_acked == 2, 20, "the replay to be acked")

    run_bridge(broker, tsdb, body)
    points = stored_points(tsdb.port, "kg")
    assert {(p[1], p[2], p[4]) for p in points} == {
        (r.metric, r.unit, float(r.seq)) for r in readings
    }
    assert len(points) == 8
