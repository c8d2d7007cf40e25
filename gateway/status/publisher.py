"""Alarm states and events on MQTT (contract: docs/mqtt.md, schema: gateway/schema/alarm.json).

- ``P/S/alarms/D/A``, QoS 1, **retained**: the current state of alarm A of device D, so a backend
  or a dashboard that connects later learns at once what is active.
- ``P/S/events``, QoS 1, not retained: one message per transition (raised, cleared).

The publisher has its own paho client (client id ``<gateway client id>-status``, clean session):
alarms must not queue behind a telemetry backlog in the durable buffer, and they are state, not
history. While the broker is away nothing is handed to paho; on every (re)connect the publisher
publishes the state of every known alarm, then the events that happened meanwhile, so the broker's
retained view is whole again after any outage. Callbacks are marshalled with `LoopBridge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import paho.mqtt.client as mqtt

from gateway.config import MqttConfig
from gateway.model import iso_ms
from gateway.mqtt_client import LoopBridge, make_client, reason_text
from gateway.status.alarms import AlarmChange, AlarmState
from gateway.telemetry import SCHEMA_VERSION, alarm_topic, events_topic

log = logging.getLogger(__name__)


def _body(site: str, state: AlarmState) -> dict[str, Any]:
    return {
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


def encode_alarm_state(site: str, state: AlarmState) -> bytes:
    """The retained payload of ``P/S/alarms/D/A``."""
    return json.dumps(_body(site, state), separators=(",", ":"), allow_nan=False).encode()


def encode_alarm_event(site: str, state: AlarmState) -> bytes:
    """The ``P/S/events`` payload of a transition to ``state``."""
    body = {"type": "alarm", **_body(site, state)}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


class AlarmPublisher:
    """Publishes `AlarmChange` objects; run ``run()`` as a task and cancel it to stop."""

    def __init__(self, *, config: MqttConfig, site: str) -> None:
        self._config = config
        self._site = site
        self._client_id = f"{config.client_id or f'canary-gw-{site}'}-status"
        self._states: dict[tuple[str, str], AlarmState] = {}
        self._events: list[AlarmState] = []
        self._client: mqtt.Client | None = None
        self.connected = asyncio.Event()
        self.published = 0

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
        events, self._events = self._events, []
        for state in events:
            client.publish(
                events_topic(prefix, self._site), encode_alarm_event(self._site, state), qos=1
            )
            self.published += 1
