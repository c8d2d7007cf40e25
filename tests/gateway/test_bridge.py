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
from gateway.bridge.service import MAX_REWRITES, Bridge
from gateway.config import GatewayConfig, parse_config
from gateway.model import Reading, to_epoch_ms, utc_ms
from gateway.telemetry import encode_gap_event, encode_telemetry
from tests.servers import MosquittoServer, ServerProcess, vm_export
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


def bridge_config(
    broker: ServerProcess,
    tsdb: ServerProcess,
    *,
    influx: dict[str, Any] | None = None,
    **bridge: Any,
) -> GatewayConfig:
    """The bridge's configuration; acks held briefly (``ack_delay`` 0.5 s) unless told."""
    return parse_config(
        {
            "site": {"id": "kg"},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "influxdb": {
                "url": f"http://127.0.0.1:{tsdb.port}",
                "org": "o",
                "bucket": "b",
                "flush_interval": 0.1,
                **(influx or {}),
            },
            "bridge": {"ack_delay": 0.5, **bridge},
        },
        source="test",
    )


def run_bridge(
    broker: ServerProcess,
    tsdb: ServerProcess,
    body: Callable[[Bridge], Awaitable[None]],
    **bridge: Any,
) -> None:
    config = bridge_config(broker, tsdb, **bridge)

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
            done, _ = await asyncio.wait([task], timeout=20)
            if not done:  # a bridge that does not stop: show where every task waits
                for other in asyncio.all_tasks():
                    other.print_stack()
                raise AssertionError("the bridge did not stop within 20 s of its cancellation")

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


def test_acks_are_held_for_ack_delay_while_later_messages_keep_flowing(
    broker: ServerProcess, tsdb: ServerProcess
) -> None:
    """A 204 is not durable: the ack waits ``ack_delay`` after it, and the read-back found the
    points; meanwhile the next messages are written, not queued behind the held ones."""
    ack_delay = 3.0
    first, second = readings("room-1", 1, 10), readings("room-1", 11, 10)
    topic = "canary/kg/telemetry/room-1"

    async def body(bridge: Bridge) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(
            publish, broker.port, [(topic, encode_telemetry("kg", "room-1", first))]
        )
        await until(lambda: bridge.stats.points_written == 10, 10, "the first message written")
        written_at = loop.time()
        await asyncio.to_thread(
            publish, broker.port, [(topic, encode_telemetry("kg", "room-1", second))]
        )
        await until(lambda: bridge.stats.points_written == 20, 10, "the second message written")
        # Both are in the store, neither is acknowledged: the first is still within its hold.
        assert loop.time() - written_at < ack_delay
        assert len(await asyncio.to_thread(series, tsdb.port, "co2_seq")) == 20
        assert bridge.stats.messages_acked == 0
        assert bridge.held == 2
        await until(lambda: bridge.stats.messages_acked == 2, 15, "both acknowledged")
        assert loop.time() - written_at >= ack_delay
        assert bridge.stats.read_backs >= 1
        assert bridge.stats.rewrites == 0
        assert bridge.held == 0

    run_bridge(broker, tsdb, body, ack_delay=ack_delay)


def test_the_same_reading_sent_twice_is_stored_once(
    broker: ServerProcess, tsdb: ServerProcess
) -> None:
    """Store-side dedup (``-dedup.minScrapeInterval=1ms``): a replay adds nothing, and readings
    1 ms apart (closer than any poll interval allows) are still both kept."""
    batch = readings("room-1", 1, 5)
    close = [
        Reading(
            device="room-1",
            metric="co2",
            value=900 + i,
            unit="ppm",
            ts=T0 + timedelta(milliseconds=i),
            seq=100 + i,
        )
        for i in range(3)
    ]
    message = ("canary/kg/telemetry/room-1", encode_telemetry("kg", "room-1", batch + close))

    async def body(bridge: Bridge) -> None:
        await asyncio.to_thread(publish, broker.port, [message])
        await until(lambda: bridge.stats.points_written == 8, 10, "the first copy written")
        await asyncio.to_thread(publish, broker.port, [message])
        await until(lambda: bridge.stats.points_written == 16, 10, "the second copy written")

    run_bridge(broker, tsdb, body)
    rows = vm_export(tsdb.port, '{__name__="co2_seq"}')
    assert len(rows) == 1
    stored = dict(zip(rows[0]["timestamps"], rows[0]["values"], strict=True))
    assert len(rows[0]["timestamps"]) == 8, "a replayed reading was stored twice"
    assert stored == {to_epoch_ms(r.ts): float(r.seq) for r in batch + close}


def test_two_bridges_split_the_sites_and_write_everything_once(
    broker: ServerProcess, tsdb: ServerProcess
) -> None:
    """Scaling out without ``$share``: each bridge its own persistent session and its own sites."""
    sites = {"bridge-a": ["kg-1", "kg-2"], "bridge-b": ["kg-3"]}
    per_message, per_device = 5, 6
    messages = [
        (
            f"canary/{site}/telemetry/{device}",
            encode_telemetry(
                site, device, readings(device, 1 + d * 1000 + m * per_message, per_message)
            ),
        )
        for site in ("kg-1", "kg-2", "kg-3")
        for d, device in enumerate(("room-1", "room-2"))
        for m in range(per_device)
    ]
    total = len(messages) * per_message

    def config(client_id: str) -> GatewayConfig:
        return bridge_config(
            broker,
            tsdb,
            influx={"flush_interval": 0.05, "batch_size": 5},
            client_id=client_id,
            sites=sites[client_id],
        )

    async def main() -> list[Bridge]:
        bridges = [
            Bridge(
                config=config(name),
                writer=InfluxWriter(
                    url=f"http://127.0.0.1:{tsdb.port}", org="o", bucket="b", token=None
                ),
            )
            for name in sites
        ]
        tasks = [asyncio.create_task(b.run()) for b in bridges]
        try:
            for bridge in bridges:
                await asyncio.wait_for(bridge.subscribed.wait(), 10)
            await asyncio.to_thread(publish, broker.port, messages)
            await until(
                lambda: sum(b.stats.messages_acked for b in bridges) >= len(messages),
                30,
                "both bridges to acknowledge everything",
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return bridges

    bridges = asyncio.run(main())
    written = [b.stats.points_written for b in bridges]
    assert written == [total * 2 // 3, total // 3], written
    rows = vm_export(tsdb.port, '{__name__="co2_seq"}')
    per_site: dict[str, int] = {}
    for row in rows:
        site = row["metric"]["site"]
        per_site[site] = per_site.get(site, 0) + len(row["values"])
    assert per_site == {"kg-1": total // 3, "kg-2": total // 3, "kg-3": total // 3}


def test_a_bridge_given_sites_drops_the_catch_all_its_session_used_to_have(
    broker: ServerProcess, tsdb: ServerProcess
) -> None:
    """A session keeps its subscriptions: a bridge that took every site and is restarted with
    ``sites`` must not keep receiving the others (they belong to another bridge now)."""

    async def nothing(bridge: Bridge) -> None:
        pass

    run_bridge(broker, tsdb, nothing, client_id="bridge-x")  # subscribes canary/+/telemetry/+
    mine = readings("room-1", 1, 3)
    theirs = readings("room-9", 1, 3)

    async def body(bridge: Bridge) -> None:
        await asyncio.to_thread(
            publish,
            broker.port,
            [
                ("canary/other/telemetry/room-9", encode_telemetry("other", "room-9", theirs)),
                ("canary/kg/telemetry/room-1", encode_telemetry("kg", "room-1", mine)),
            ],
        )
        await until(lambda: bridge.stats.messages_acked >= 1, 15, "its own site's message")

    # The catch-all is dropped on connect, before anything is published.
    run_bridge(broker, tsdb, body, client_id="bridge-x", sites=["kg"])
    sites = {row["metric"]["site"] for row in vm_export(tsdb.port, '{__name__="co2_seq"}')}
    assert sites == {"kg"}


def test_a_point_the_store_accepts_but_never_keeps_is_dead_lettered_not_held_forever(
    broker: ServerProcess, tsdb: ServerProcess
) -> None:
    """VictoriaMetrics answers 204 to a sample more than 2 days ahead of its clock and drops it.
    The read-back misses it every time; after `MAX_REWRITES` the message is dead-lettered with
    the reason, and the stream behind it is not blocked."""
    future = Reading(
        device="room-1",
        metric="co2",
        value=1.0,
        unit="ppm",
        ts=utc_ms(datetime.now(UTC) + timedelta(days=30)),
        seq=1,
    )
    later = readings("room-1", 2, 3)
    dead = MqttCapture(broker.port, "canary/kg/deadletter").start()
    try:

        async def body(bridge: Bridge) -> None:
            await asyncio.to_thread(
                publish,
                broker.port,
                [
                    ("canary/kg/telemetry/room-1", encode_telemetry("kg", "room-1", [future])),
                    ("canary/kg/telemetry/room-1", encode_telemetry("kg", "room-1", later)),
                ],
            )
            await until(lambda: bridge.stats.messages_acked == 2, 30, "both settled")
            assert bridge.stats.rewrites == MAX_REWRITES
            assert bridge.stats.dead_letters == 1

        run_bridge(broker, tsdb, body, ack_delay=0.2)
        letters = [m.json() for m in dead.snapshot()]
    finally:
        dead.stop()
    assert len(letters) == 1
    assert "does not keep them" in letters[0]["reason"]
    assert sorted(series(tsdb.port, "co2_seq").values()) == [2.0, 3.0, 4.0]


def test_held_messages_survive_a_broker_restart_and_are_acknowledged_once_after_it(
    broker: MosquittoServer, tsdb: ServerProcess
) -> None:
    """Acks held when the connection drops are never sent on the new connection (its packet ids
    name other messages); the broker redelivers, the bridge writes again, the store keeps one."""
    batch = [readings("room-1", 1 + 5 * m, 5) for m in range(4)]
    messages = [("canary/kg/telemetry/room-1", encode_telemetry("kg", "room-1", b)) for b in batch]

    async def body(bridge: Bridge) -> None:
        await asyncio.to_thread(publish, broker.port, messages)
        await until(lambda: bridge.stats.points_written == 20, 10, "all four written")
        assert bridge.stats.messages_acked == 0
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)
        await until(
            lambda: bridge.stats.messages_acked == 4 and bridge.held == 0,
            30,
            "the redelivered copies acknowledged",
        )
        assert bridge.stats.points_written == 40  # written again after the redelivery

    run_bridge(broker, tsdb, body, ack_delay=2)
    assert sorted(series(tsdb.port, "co2_seq").values()) == [float(s) for s in range(1, 21)]


def test_a_declared_gap_is_stored_and_alarm_events_are_acknowledged_without_a_point(
    broker: ServerProcess, tsdb: ServerProcess
) -> None:
    """The events topic: a ``readings_lost`` declaration becomes a ``gap`` point (read back like
    any point), an alarm event is acknowledged and not stored, a broken declaration is
    dead-lettered with the reason."""
    dead = MqttCapture(broker.port, "canary/kg/deadletter").start()
    gap = encode_gap_event("kg", from_seq=1001, to_seq=2000, reason="unclean_stop", ts=T0)
    alarm = json.dumps({"type": "alarm", "alarm": "co2_high", "state": "active"}).encode()
    broken = json.dumps({"v": 1, "type": "readings_lost", "site": "kg", "from_seq": 9}).encode()
    messages = [
        ("canary/kg/events", gap),
        ("canary/kg/events", alarm),
        ("canary/kg/events", broken),
        ("canary/kg/events", gap),  # re-announced after a reconnect: stored once
    ]
    try:

        async def body(bridge: Bridge) -> None:
            await asyncio.to_thread(publish, broker.port, messages)
            await until(
                lambda: bridge.stats.messages_acked == 3 and bridge.stats.events_ignored == 1,
                20,
                "the four events acknowledged",
            )
            assert bridge.stats.dead_letters == 1

        run_bridge(broker, tsdb, body)
        assert series(tsdb.port, "gap_first") == {("gateway", to_epoch_ms(T0)): 1001.0}
        assert series(tsdb.port, "gap_last") == {("gateway", to_epoch_ms(T0)): 2000.0}
        names = {row["metric"]["__name__"] for row in vm_export(tsdb.port)}
        assert names == {"gap_first", "gap_last"}  # the alarm event left no point
        (reason,) = [json.loads(m.payload)["reason"] for m in dead.snapshot()]
        assert "to_seq" in reason
    finally:
        dead.stop()
