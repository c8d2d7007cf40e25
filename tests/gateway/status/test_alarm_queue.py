"""Alarm events raised while the broker is away are bounded (`EventQueue`, `AlarmPublisher`).

A classroom sensor hovering at the CO2 threshold during a week-long outage flaps thousands of
times. Pinned: the waiting events never exceed the cap; the flapping alarm gives up its own oldest
events, never the single raise of another alarm; drops are counted and logged once on connect;
every alarm's current state is still published (retained) on connect.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from gateway.config import MqttConfig
from gateway.status.alarms import AlarmChange, AlarmState
from gateway.status.publisher import AlarmPublisher, EventQueue

T0 = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)


def state(device: str, name: str, n: int, *, active: bool | None = None) -> AlarmState:
    return AlarmState(
        device=device,
        name=name,
        active=n % 2 == 0 if active is None else active,
        value=float(n),
        unit="ppm",
        threshold=1400.0,
        since=T0 + timedelta(seconds=n),
    )


def test_a_flapping_alarm_gives_up_its_own_oldest_events_never_another_alarms() -> None:
    queue = EventQueue(limit=10)
    queue.append(state("room-a", "pm25_high", 0, active=True))  # the one rare event
    for n in range(1, 501):
        queue.append(state("room-b", "co2_high", n))
    queue.append(state("room-c", "silent", 501, active=True))
    assert len(queue) == 10
    assert queue.dropped == 492
    events = queue.drain()
    assert [(e.device, e.value) for e in events] == [
        ("room-a", 0.0),
        *[("room-b", float(n)) for n in range(493, 501)],  # the newest transitions, in order
        ("room-c", 501.0),
    ]
    assert len(queue) == 0


def test_with_only_distinct_alarms_waiting_the_oldest_event_goes() -> None:
    queue = EventQueue(limit=3)
    for n in range(5):
        queue.append(state(f"room-{n}", "co2_high", n))
    assert [e.device for e in queue.drain()] == ["room-2", "room-3", "room-4"]
    assert queue.dropped == 2


@dataclass
class RecordingClient:
    """Stands in for paho's client: records what would be published."""

    published: list[tuple[str, dict[str, object], bool]] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.published.append((topic, json.loads(payload), retain))


def test_the_offline_alarm_publisher_keeps_a_bounded_queue_and_sends_every_state_on_connect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.status.publisher")
    publisher = AlarmPublisher(config=MqttConfig(host="127.0.0.1", port=1), site="kg")
    publisher.publish(AlarmChange(state=state("room-a", "pm25_high", 0, active=True), event=True))
    for n in range(1, 10_001):  # a week of flapping while the broker is away
        publisher.publish(AlarmChange(state=state("room-b", "co2_high", n), event=True))

    client = RecordingClient()
    publisher._on_connect(client, reason_code=0)  # type: ignore[arg-type]

    events = [body for topic, body, _ in client.published if topic == "canary/kg/events"]
    states = {
        topic: body for topic, body, retain in client.published if "/alarms/" in topic and retain
    }
    assert len(events) == 100
    assert events[0]["alarm"] == "pm25_high" and events[0]["state"] == "active"
    assert [e["value"] for e in events[1:]] == [float(n) for n in range(9_902, 10_001)]
    assert states["canary/kg/alarms/room-b/co2_high"]["value"] == 10_000.0
    assert states["canary/kg/alarms/room-a/pm25_high"]["state"] == "active"
    assert publisher.events_dropped == 10_001 - 100
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "9901 alarm events were dropped" in warnings[0].getMessage()
