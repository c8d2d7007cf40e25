"""The bridge's alarm: ``store_refused``, published like every other alarm (gateway/schema/alarm.json).

Raised when the time-series store refuses writes or read-backs for a reason the bridge cannot fix
by waiting: 401/403 (credentials), 404 (bucket, org), a 4xx that is not about the content (a
wrong URL path). Meanwhile the bridge holds the messages and retries; nothing is dead-lettered.
Cleared by the first accepted request afterwards.

Topics: the retained state on ``P/<site>/alarms/<bridge>/store_refused`` and one event per
transition on ``P/<site>/events``, where ``<site>`` is the ``[site] id`` of the bridge's own
configuration and ``<bridge>`` its client id made an identifier. ``value`` is the HTTP status that
decided the state (e.g. 401 while active, 204 once clear), ``unit`` ``"HTTP status"``,
``threshold`` 400. The payloads are built by `gateway.status.publisher`, the same encoder the
gateway's own alarms use. The bridge publishes on its own MQTT connection: the state again after
every reconnect, events held meanwhile (at most `MAX_UNSENT_EVENTS`, oldest dropped).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from gateway.model import utc_ms
from gateway.status.alarms import AlarmState
from gateway.status.publisher import encode_alarm_event, encode_alarm_state
from gateway.telemetry import alarm_topic, events_topic

ALARM = "store_refused"
#: HTTP statuses from this one on are refusals.
THRESHOLD = 400
MAX_UNSENT_EVENTS = 100


def alarm_device(client_id: str) -> str:
    """``client_id`` as an alarm device id (lower-case letters, digits, '-', '_'; at most 63)."""
    ident = re.sub(r"[^a-z0-9_-]+", "-", client_id.lower()).strip("-_")
    return (ident or "bridge")[:63]


class StoreAlarm:
    """The state of ``store_refused``; `set` records it, `publish_all` (re)sends it."""

    def __init__(
        self,
        *,
        prefix: str,
        site: str,
        device: str,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._site = site
        self._wall = wall
        self.topic = alarm_topic(prefix, site, device, ALARM)
        self.events = events_topic(prefix, site)
        self._device = device
        self._state: AlarmState | None = None
        self._unsent: deque[AlarmState] = deque(maxlen=MAX_UNSENT_EVENTS)
        self._client: mqtt.Client | None = None

    @property
    def active(self) -> bool:
        """True while the store refuses."""
        return self._state is not None and self._state.active

    def attach(self, client: mqtt.Client | None) -> None:
        """Publish through ``client`` from now on (None while disconnected); sends what is due."""
        self._client = client
        if client is not None:
            self.publish_all()

    def set(self, *, active: bool, status: int) -> bool:
        """Record the state decided by an answer with HTTP ``status``; True on a transition.

        The first state known is published (retained) but is an event only when active, as
        for the gateway's alarms: a clear state after a restart replaces a stale active one.
        """
        was = self._state
        if was is not None and was.active == active:
            return False
        self._state = AlarmState(
            device=self._device,
            name=ALARM,
            active=active,
            value=float(status),
            unit="HTTP status",
            threshold=float(THRESHOLD),
            since=utc_ms(self._wall()),
        )
        event = was is not None or active
        if event:
            self._unsent.append(self._state)
        self.publish_all()
        return event

    def publish_all(self) -> None:
        """Send the retained state and the events not sent yet, if connected."""
        client = self._client
        if client is None or not client.is_connected():
            return
        if self._state is not None:
            client.publish(
                self.topic, encode_alarm_state(self._site, self._state), qos=1, retain=True
            )
        while self._unsent:
            client.publish(
                self.events, encode_alarm_event(self._site, self._unsent.popleft()), qos=1
            )
