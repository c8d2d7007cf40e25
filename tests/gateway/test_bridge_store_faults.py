"""How the bridge answers each kind of "no" from the store, against a test peer that speaks the
InfluxDB v2 write API (tests/gateway/influx_peer.py) and real Mosquitto.

- a refusal (401, 403, 404, a 400 that is not about the content) holds the messages, raises the
  ``store_refused`` alarm, is logged once, never dead-letters; fixed, everything is written once;
- a rotated token file is read again without a restart;
- a content rejection (422, 400 "unable to parse") dead-letters only the offending message;
- 413 splits the request; a single point still too large is a content rejection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.bridge.influx import InfluxWriter, classify
from gateway.bridge.service import Bridge
from gateway.config import Credentials, parse_config
from gateway.telemetry import encode_telemetry
from tests.gateway.influx_peer import InfluxPeer, Request, accept, error
from tests.gateway.test_bridge import publish, readings, until
from tests.servers import ServerProcess
from tests.system.mqtt_capture import MqttCapture

ROOT = Path(__file__).resolve().parents[2]
ALARM_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((ROOT / "gateway" / "schema" / "alarm.json").read_text())
)
ALARM_TOPIC = "canary/kg/alarms/canary-bridge-kg/store_refused"
TOPIC = "canary/kg/telemetry/room-1"


@pytest.fixture
def peer() -> Iterator[InfluxPeer]:
    server = InfluxPeer()
    yield server
    server.stop()


def messages(count: int, per_message: int = 3, value: int | None = None) -> list[tuple[str, bytes]]:
    out = []
    for m in range(count):
        batch = readings("room-1", 1 + m * per_message, per_message)
        if value is not None and m == 1:
            batch = [replace(r, value=value) for r in batch]
        out.append((TOPIC, encode_telemetry("kg", "room-1", batch)))
    return out


def run(
    broker: ServerProcess,
    peer: InfluxPeer,
    body: Callable[[Bridge], Awaitable[None]],
    *,
    token: Any = None,
) -> None:
    config = parse_config(
        {
            "site": {"id": "kg"},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "influxdb": {"url": peer.url, "org": "o", "bucket": "b", "flush_interval": 0.05},
            "bridge": {"ack_delay": 0, "read_back": False},
        },
        source="test",
    )

    async def main() -> None:
        writer = InfluxWriter(url=peer.url, org="o", bucket="b", token=token, timeout_ms=2000)
        bridge = Bridge(config=config, writer=writer)
        task = asyncio.create_task(bridge.run())
        try:
            await asyncio.wait_for(bridge.subscribed.wait(), 10)
            await body(bridge)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def seqs_stored(peer: InfluxPeer) -> list[int]:
    """The seq field of every stored line, in the order stored."""
    _, stored = peer.snapshot()
    return [int(line.split("seq=")[1].split("i")[0]) for line in stored]


REFUSALS = [
    (401, "unauthorized", "unauthorized access"),
    (403, "forbidden", "insufficient permissions for write"),
    (404, "not found", 'bucket "b" not found'),
    # VictoriaMetrics on a wrong URL path: a 400 that is not about the content.
    (400, "invalid", 'unsupported path requested: "/x/api/v2/write"'),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=[str(r[0]) for r in REFUSALS])
def test_a_refusing_store_holds_everything_raises_the_alarm_and_dead_letters_nothing(
    broker: ServerProcess,
    peer: InfluxPeer,
    caplog: pytest.LogCaptureFixture,
    refusal: tuple[int, str, str],
) -> None:
    status, code, text = refusal
    caplog.set_level(logging.INFO, logger="gateway.bridge")
    peer.policy = lambda request: error(status, code, text)
    capture = MqttCapture(broker.port, "canary/kg/#").start()
    sent = messages(3)
    try:

        async def body(bridge: Bridge) -> None:
            await asyncio.to_thread(publish, broker.port, sent)
            await until(lambda: bridge.stats.write_failures >= 3, 20, "three refused attempts")
            assert bridge.stats.messages_acked == 0
            assert bridge.stats.dead_letters == 0
            assert bridge.held == 3
            assert bridge.alarm.active
            await until(
                lambda: any(m.topic == ALARM_TOPIC for m in capture.snapshot()), 10, "the alarm"
            )
            peer.policy = accept  # the administrator fixed the token / created the bucket
            await until(lambda: bridge.stats.messages_acked == 3, 30, "everything written")
            await until(
                lambda: (
                    [m.json()["state"] for m in capture.snapshot() if m.topic == ALARM_TOPIC]
                    == ["active", "clear"]
                ),
                10,
                "the alarm to clear",
            )

        run(broker, peer, body)
        seen = capture.snapshot()
    finally:
        capture.stop()

    assert not [m for m in seen if m.topic == "canary/kg/deadletter"]
    assert sorted(seqs_stored(peer)) == list(range(1, 10)), "every reading once"
    states = [m for m in seen if m.topic == ALARM_TOPIC]
    active, clear = (m.json() for m in states)
    for payload in (active, clear):
        ALARM_SCHEMA.validate(payload)
    assert (active["state"], active["value"], active["device"]) == (
        "active",
        status,
        "canary-bridge-kg",
    )
    assert (clear["state"], clear["value"]) == ("clear", 204)
    events = [m.json() for m in seen if m.topic == "canary/kg/events"]
    assert [(e["type"], e["alarm"], e["state"]) for e in events] == [
        ("alarm", "store_refused", "active"),
        ("alarm", "store_refused", "clear"),
    ]
    for event in events:
        ALARM_SCHEMA.validate(event)
    # One log line for the episode, one for its end, however many retries there were.
    refused = [r for r in caplog.records if "refuses writes" in r.getMessage()]
    again = [r for r in caplog.records if "accepting writes again" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR, refused
    assert str(status) in refused[0].getMessage() and text in refused[0].getMessage()
    assert len(again) == 1


def test_a_rotated_token_file_is_read_again_without_a_restart(
    broker: ServerProcess, peer: InfluxPeer, tmp_path: Path
) -> None:
    secret = tmp_path / "influx-token"
    secret.write_text("old-token\n")
    peer.policy = lambda r: (
        accept(r) if r.authorization == "Token new-token" else error(401, "unauthorized", "no")
    )

    async def body(bridge: Bridge) -> None:
        await asyncio.to_thread(publish, broker.port, messages(2))
        await until(lambda: bridge.stats.write_failures >= 2, 20, "refused attempts")
        assert bridge.stats.messages_acked == 0
        secret.write_text("new-token\n")
        await until(lambda: bridge.stats.messages_acked == 2, 60, "writes with the new token")

    run(broker, peer, body, token=Credentials(file=secret).resolve)
    assert sorted(seqs_stored(peer)) == list(range(1, 7))
    requests, _ = peer.snapshot()
    assert {r.authorization for r in requests} == {"Token old-token", "Token new-token"}


CONTENT = [
    (422, "unprocessable entity", "partial write: points beyond retention policy dropped=3"),
    (400, "invalid", "unable to parse 'co2,device=room-1 value=666': bad timestamp"),
]


@pytest.mark.parametrize(("status", "code", "text"), CONTENT, ids=[str(c[0]) for c in CONTENT])
def test_a_content_rejection_dead_letters_only_the_offending_message(
    broker: ServerProcess, peer: InfluxPeer, status: int, code: str, text: str
) -> None:
    def policy(request: Request) -> tuple[int, dict[str, Any] | None]:
        if any("value=666" in line for line in request.lines):
            return error(status, code, text)
        return accept(request)

    peer.policy = policy
    dead = MqttCapture(broker.port, "canary/kg/deadletter").start()
    try:

        async def body(bridge: Bridge) -> None:
            await asyncio.to_thread(publish, broker.port, messages(3, value=666))
            await until(lambda: bridge.stats.messages_acked == 3, 20, "all three settled")

        run(broker, peer, body)
        letters = [m.json() for m in dead.snapshot()]
    finally:
        dead.stop()
    assert sorted(seqs_stored(peer)) == [1, 2, 3, 7, 8, 9]
    assert len(letters) == 1
    assert letters[0]["reason"].startswith(
        f"rejected by the store: time-series store answered HTTP {status}"
    )
    assert text in letters[0]["reason"]
    assert '"value":666' in letters[0]["payload"]


def test_a_request_too_large_is_split_and_a_single_oversized_point_dead_lettered(
    broker: ServerProcess, peer: InfluxPeer
) -> None:
    def policy(request: Request) -> tuple[int, dict[str, Any] | None]:
        if len(request.lines) > 4 or any("value=777" in line for line in request.lines):
            return error(413, "request too large", "request too large")
        return accept(request)

    peer.policy = policy
    sent = [(TOPIC, encode_telemetry("kg", "room-1", readings("room-1", 1, 10)))]
    sent += messages(3, value=777)[1:2]  # one message whose points are always too large
    dead = MqttCapture(broker.port, "canary/kg/deadletter").start()
    try:

        async def body(bridge: Bridge) -> None:
            await asyncio.to_thread(publish, broker.port, sent)
            await until(lambda: bridge.stats.messages_acked == 2, 20, "both settled")

        run(broker, peer, body)
        letters = [m.json() for m in dead.snapshot()]
    finally:
        dead.stop()
    assert sorted(set(seqs_stored(peer))) == list(range(1, 11))
    assert len(letters) == 1
    assert "larger than the store accepts" in letters[0]["reason"]


@pytest.mark.parametrize(
    ("status", "message", "fault"),
    [
        (401, "unauthorized access", "refused"),
        (403, "forbidden", "refused"),
        (404, 'bucket "b" not found', "refused"),
        (405, "method not allowed", "refused"),
        (400, 'unsupported path requested: "/x"', "refused"),
        (400, "unable to parse 'x': missing fields", "content"),
        (422, "field type conflict", "content"),
        (413, "request too large", "too_large"),
        (408, "timeout", "busy"),
        (429, "too many requests", "busy"),
        (503, "unavailable", "busy"),
    ],
)
def test_classification(status: int, message: str, fault: str) -> None:
    assert classify(status, message) == fault
