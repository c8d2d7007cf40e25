"""Alarm states and events on MQTT (contract: docs/mqtt.md, schema: gateway/schema/alarm.json).

- ``P/S/alarms/D/A``, QoS 1, **retained**: the current state of alarm A of device D, so a backend
  or a dashboard that connects later learns at once what is active.
- ``P/S/events``, QoS 1, not retained: one message per transition (raised, cleared).

The publisher has its own paho client (client id ``<gateway client id>-status``, clean session):
alarms must not queue behind a telemetry backlog in the durable buffer, and they are state, not
history. While the broker is away nothing is handed to paho; on every (re)connect the publisher
publishes the state of every known alarm, then the events that happened meanwhile, so the broker's
retained view is whole again after any outage. Callbacks are marshalled with `LoopBridge`.

The events waiting for the broker are bounded (`EventQueue`): a long outage with a flapping alarm
must neither fill the memory nor push out the one raise of another alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt

from gateway.config import MqttConfig
from gateway.model import iso_ms
from gateway.mqtt_client import LoopBridge, make_client, reason_text
from gateway.status.alarms import AlarmChange, AlarmState
from gateway.telemetry import SCHEMA_VERSION, alarm_topic, events_topic

log = logging.getLogger(__name__)

#: Alarm events kept while the broker is away (see `EventQueue`).
MAX_UNSENT_EVENTS = 100


def _body(site: str, state: AlarmState) -> dict[str, Any]:
    """The v1 keys; rules other than the three v1 alarms add ``severity`` and ``message``."""
    body = {
        "v": SCHEMA_VERSION,
        "site": site,
        "device": state.device,
        "alarm": state.name,
        "state": "active" if state.active else "clear",
        "value": state.value,
        "unit": state.unit,
        "threshold": state.threshold,
        "since": iso_ms(state.since),
    }
    if state.severity is not None:
        body["severity"] = state.severity
    if state.message is not None:
        body["message"] = state.message
    return body


def encode_alarm_state(site: str, state: AlarmState) -> bytes:
    """The retained payload of ``P/S/alarms/D/A``."""
    return json.dumps(_body(site, state), separators=(",", ":"), allow_nan=False).encode()


def encode_alarm_event(site: str, state: AlarmState) -> bytes:
    """The ``P/S/events`` payload of a transition to ``state``."""
    body = {"type": "alarm", **_body(site, state)}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


class EventQueue:
    """Alarm transitions waiting for the broker, at most ``limit`` of them, oldest first.

    When full, the alarm with the most waiting events loses its oldest one (among equals, the
    alarm whose oldest event is oldest): a flapping alarm gives up its own history, never the
    single raise of a rare one, and every alarm keeps its newest transitions. Only when ``limit``
    different alarms each have one event waiting does the oldest event go. What a facility manager
    needs survives either way: the retained state topic carries every alarm's current state, and
    the events say which alarms fired while the gateway was cut off. Drops are counted in
    ``dropped``.
    """

    def __init__(self, limit: int = MAX_UNSENT_EVENTS) -> None:
        self.limit = limit
        self.dropped = 0
        self._events: list[AlarmState] = []

    def __len__(self) -> int:
        return len(self._events)

    def append(self, state: AlarmState) -> None:
        """Queue ``state``; drop one older event if the queue is full."""
        self._events.append(state)
        if len(self._events) <= self.limit:
            return
        counts = Counter((e.device, e.name) for e in self._events)
        most = max(counts.values())
        victim = next(i for i, e in enumerate(self._events) if counts[(e.device, e.name)] == most)
        del self._events[victim]
        self.dropped += 1

    def drain(self) -> list[AlarmState]:
        """Every waiting event, oldest first; the queue is empty afterwards."""
        events, self._events = self._events, []
        return events


class AlarmPublisher:
    """Publishes `AlarmChange` objects; run ``run()`` as a task and cancel it to stop."""

    def __init__(self, *, config: MqttConfig, site: str) -> None:
        self._config = config
        self._site = site
        self._client_id = f"{config.client_id or f'canary-gw-{site}'}-status"
        self._states: dict[tuple[str, str], AlarmState] = {}
        self._events = EventQueue()
        self._client: mqtt.Client | None = None
        self.connected = asyncio.Event()
        self.published = 0
        #: Alarm events dropped from the bounded queue while the broker was away, ever.
        self.events_dropped = 0

    def publish(self, change: AlarmChange) -> None:
        """Record ``change`` and send it now if connected (else on the next connect)."""
        state = change.state
        self._states[(state.device, state.name)] = state
        if change.event:
            self._events.append(state)
        if self.connected.is_set() and self._client is not None:
            self._flush(self._client, [state])

    async def run(self) -> None:
        """Connect (paho retries in the background) and publish until cancelled."""
        bridge = LoopBridge()
        client = make_client(self._config, client_id=self._client_id, clean_session=True)
        client.on_connect = lambda c, u, f, rc, p: bridge.call(self._on_connect, c, rc)
        client.on_disconnect = lambda c, u, f, rc, p: bridge.call(self.connected.clear)
        client.connect_async(self._config.host, self._config.port, keepalive=self._config.keepalive)
        client.loop_start()
        self._client = client
        try:
            await asyncio.Event().wait()
        finally:
            self._client = None
            self.connected.clear()
            with contextlib.suppress(OSError):
                client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    def _on_connect(self, client: mqtt.Client, reason_code: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            log.warning(
                "alarm publisher: broker refused the connection: %s", reason_text(reason_code)
            )
            return
        self.connected.set()
        self._flush(client, list(self._states.values()))

    def _flush(self, client: mqtt.Client, states: list[AlarmState]) -> None:
        prefix = self._config.topic_prefix
        for state in states:
            topic = alarm_topic(prefix, self._site, state.device, state.name)
            client.publish(topic, encode_alarm_state(self._site, state), qos=1, retain=True)
            self.published += 1
        if self._events.dropped:
            log.warning(
                "alarm publisher: %d alarm events were dropped while the broker was away "
                "(the oldest of the alarms with the most); the retained states are current",
                self._events.dropped,
            )
            self.events_dropped += self._events.dropped
            self._events.dropped = 0
        for state in self._events.drain():
            client.publish(
                events_topic(prefix, self._site), encode_alarm_event(self._site, state), qos=1
            )
            self.published += 1
