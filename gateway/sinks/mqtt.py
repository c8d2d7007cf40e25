"""Publishes buffered readings with QoS 1 and forgets them only after the broker's PUBACK.

Flow: take the oldest batch not in flight from the buffer, publish one message per device, and
``end(batch, accepted=True)`` once every message of the batch has been acknowledged. While the
broker is away, paho keeps the unacknowledged messages and resends them on reconnect; if the
process dies, the buffer still holds them and they are published again on start (at-least-once,
with duplicates bounded by the in-flight window).

A publisher runs once. After ``run`` ended (a crash, or a stop) the object is half-stopped: its
client is stopped and its in-flight bookkeeping belongs to that client. A supervisor that restarts
publishing calls `release_inflight` (the batches go back to the buffer, to be delivered again)
and runs a `successor`, which takes over only what the status topic needs to remember.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt

from gateway import __version__
from gateway.buffer import Batch
from gateway.buffer.base import Gap
from gateway.buffer.writebehind import WriteBehind
from gateway.config import MqttConfig
from gateway.describe import Described
from gateway.model import from_epoch_ms
from gateway.mqtt_client import ConnectionReporter, LoopBridge, make_client, reason_text
from gateway.status.alarms import AlarmState
from gateway.status.publisher import EventQueue, encode_alarm_event, encode_alarm_state
from gateway.telemetry import (
    alarm_topic,
    devices_topic,
    encode_gap_event,
    encode_status,
    encode_telemetry,
    encode_telemetry_v2,
    events_topic,
    group_by_device,
    status_topic,
    telemetry_topic,
)

log = logging.getLogger(__name__)

#: Readings per batch taken from the buffer (one message per device of the batch).
BATCH_SIZE = 500


@dataclass
class _Pending:
    batch: Batch
    mids: set[int] = field(default_factory=set)
    #: paho refused part of the batch: hand it back instead of acknowledging it.
    refused: bool = False


@dataclass
class LinkState:
    """The broker link as the local status shows it, in monotonic seconds: since when it is up
    (or down), and the last PUBACK. Kept across publisher restarts, so that a crash loop does not
    make a long outage look new."""

    since: float = field(default_factory=time.monotonic)
    last_puback: float | None = None


@dataclass
class StatusMemory:
    """What a publisher remembers for the status topic; handed on to a `MqttPublisher.successor`."""

    details: dict[str, Any] = field(default_factory=dict)
    alarms: dict[tuple[str, str], AlarmState] = field(default_factory=dict)
    unsent_events: EventQueue = field(default_factory=EventQueue)
    link: LinkState = field(default_factory=LinkState)
    #: The device descriptions, by device id (sent retained on every connect).
    devices: dict[str, Described] = field(default_factory=dict)


@dataclass
class PublisherStats:
    """Counters for the status page and the tests."""

    messages_sent: int = 0
    #: Payload bytes and readings handed to the broker (for bytes-per-reading figures).
    payload_bytes: int = 0
    readings_sent: int = 0
    messages_acked: int = 0
    readings_acked: int = 0
    connects: int = 0


class MqttPublisher:
    """Drains a `WriteBehind` buffer into the broker. Run ``run()`` as a task; cancel it to stop."""

    def __init__(
        self,
        *,
        config: MqttConfig,
        site: str,
        buffer: WriteBehind,
        batch_size: int = BATCH_SIZE,
        memory: StatusMemory | None = None,
        describe: Callable[[], Mapping[str, Described]] | None = None,
    ) -> None:
        """``memory`` is what a predecessor remembered for the status topic (`successor`).

        ``describe`` returns the current device descriptions (`gateway.describe`); it is asked
        again when a batch holds a metric the last descriptions did not name (a SunSpec device
        after its discovery), and by `refresh_devices`.
        """
        self._config = config
        self._site = site
        self._buffer = buffer
        self._batch_size = batch_size
        self._client_id = config.client_id or f"canary-gw-{site}"
        self._status_topic = status_topic(config.topic_prefix, site)
        self._by_mid: dict[int, _Pending] = {}
        #: Batches begun and not yet handed to ``buffer.end``, by id (`release_inflight`).
        self._begun: dict[int, Batch] = {}
        #: Gap announcements in flight, by message id (see `_announce_gaps`).
        self._gap_mids: dict[int, Gap] = {}
        self._inflight_messages = 0
        self._window_open = asyncio.Event()
        self._window_open.set()
        self._end_tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._client: mqtt.Client | None = None
        memory = memory or StatusMemory()
        self._details = memory.details
        #: Counters for the offline status of a clean stop (set by the caller before it cancels
        #: `run`); the last will, fixed at connect, carries none.
        self.final_details: Mapping[str, Any] | None = None
        self._alarms = memory.alarms
        #: Alarm events raised while disconnected, sent on connect (bounded, see `EventQueue`).
        self._unsent_events = memory.unsent_events
        #: Read by the local status (`gateway.local`); written by the callbacks below only.
        self.link = memory.link
        self._report = ConnectionReporter(logger=log, host=config.host, port=config.port)
        self._progress = asyncio.Event()
        self.connected = asyncio.Event()
        self.stats = PublisherStats()
        self._describe = describe
        self._devices = memory.devices
        #: What the broker was sent on the current connection, per device topic.
        self._sent_devices: dict[str, bytes] = {}
        self._compact = config.payload == "v2"

    def successor(self) -> MqttPublisher:
        """A new publisher with the same settings, for a restart after this one's ``run`` ended.

        It takes over the status memory (the last counters, the alarm states and the alarm events
        not sent yet), so that a restart neither forgets an active alarm nor its events; nothing
        of this publisher's client or in-flight bookkeeping.
        """
        link = self.link
        if self.connected.is_set():  # its client is gone: the link is down from now on
            link = LinkState(last_puback=link.last_puback)
        memory = StatusMemory(
            details=self._details,
            alarms=self._alarms,
            unsent_events=self._unsent_events,
            link=link,
            devices=self._devices,
        )
        return MqttPublisher(
            config=self._config,
            site=self._site,
            buffer=self._buffer,
            batch_size=self._batch_size,
            memory=memory,
            describe=self._describe,
        )

    async def release_inflight(self) -> None:
        """Hand every batch still in flight back to the buffer (not acknowledged).

        For a restart: this publisher's client is gone, so no acknowledgement will come for them,
        and in the buffer they would stay in flight (never handed out again) until the process
        restarts. Returned, the successor publishes them again first (duplicates, not losses).
        """
        if self._end_tasks:
            await asyncio.gather(*self._end_tasks, return_exceptions=True)
        batches, self._begun = list(self._begun.values()), {}
        self._by_mid.clear()
        self._inflight_messages = 0
        for batch in batches:
            await self._buffer.end(batch, accepted=False)

    async def run(self) -> None:
        """Connect (retrying forever in the background) and publish until cancelled."""
        bridge = LoopBridge()
        client = make_client(self._config, client_id=self._client_id, clean_session=False)
        offline = encode_status(self._site, "offline", version=__version__, ts=datetime.now(UTC))
        client.will_set(self._status_topic, offline, qos=1, retain=True)
        client.on_connect = lambda c, u, f, rc, p: bridge.call(self._on_connect, c, rc)
        client.on_disconnect = lambda c, u, f, rc, p: bridge.call(self._on_disconnect, rc)
        client.on_connect_fail = lambda c, u: bridge.call(self._report.failed)
        client.on_log = self._report.paho_log
        client.on_publish = lambda c, u, mid, rc, p: bridge.call(self._on_puback, mid)
        client.connect_async(self._config.host, self._config.port, keepalive=self._config.keepalive)
        client.loop_start()
        try:
            await self._publish_forever(client)
        finally:
            await self._shutdown(client)

    async def _publish_forever(self, client: mqtt.Client) -> None:
        """Live readings first; the backlog through a token bucket of ``backlog_rate`` readings/s."""
        buffer = self._buffer
        rate = self._config.backlog_rate
        loop = asyncio.get_running_loop()
        tokens, refilled = float(self._batch_size), loop.time()
        while True:
            # Nothing is begun while disconnected: it could not go out anyway, and what stays in the
            # buffer is what the limits may drop (oldest first), not what sits in paho's queue.
            await self.connected.wait()
            await self._window_open.wait()
            buffer.appended.clear()
            batch = await buffer.begin(self._batch_size, live=True)
            if batch is None:
                now = loop.time()
                if rate:
                    tokens = min(float(self._batch_size), tokens + (now - refilled) * rate)
                refilled = now
                allowance = int(tokens) if rate else self._batch_size
                if allowance >= 1:
                    batch = await buffer.begin(allowance, live=False)
                if batch is None:
                    # Nothing live; the backlog is empty, in flight, or waiting for tokens.
                    wait = (1 - tokens) / rate if rate and allowance < 1 else None
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):  # not wait_for: see gateway/app.py
                            await buffer.appended.wait()
                    continue
                if rate:
                    tokens -= len(batch.readings)
            await self._publish(client, batch)

    async def _publish(self, client: mqtt.Client, batch: Batch) -> None:
        self._begun[batch.id] = batch
        pending = _Pending(batch)
        groups = group_by_device(batch.readings)
        if any(self._undescribed(device, readings) for device, readings in groups.items()):
            self.refresh_devices()  # before the telemetry: the broker keeps the order
        for device, readings in groups.items():
            if self._compact:
                described = self._devices.get(device)
                float32 = described.float32 if described is not None else frozenset()
                payload = encode_telemetry_v2(readings, float32=float32)
            else:
                payload = encode_telemetry(self._site, device, readings)
            topic = telemetry_topic(self._config.topic_prefix, self._site, device)
            info = client.publish(topic, payload, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                # paho refused to queue it: the batch goes back whole once its published part
                # is acknowledged (duplicates are harmless, a partial acknowledgement is loss).
                log.error("MQTT publish refused (%s); will retry", mqtt.error_string(info.rc))
                pending.refused = True
                break
            pending.mids.add(info.mid)
            self._by_mid[info.mid] = pending
            self._inflight_messages += 1
            self.stats.messages_sent += 1
            self.stats.payload_bytes += len(payload)
            self.stats.readings_sent += len(readings)
        if not pending.mids:
            del self._begun[batch.id]
            await self._buffer.end(batch, accepted=False)
            await asyncio.sleep(1.0)
            return
        if self._inflight_messages >= self._config.max_inflight:
            self._window_open.clear()

    def _undescribed(self, device: str, readings: list[Any]) -> bool:
        described = self._devices.get(device)
        if described is None:
            return True
        metrics = described.description.metrics
        return any(r.metric not in metrics for r in readings)

    def refresh_devices(self) -> None:
        """Ask ``describe`` for the current descriptions and send those that changed (retained);
        a device no longer described gets an empty retained message (the broker forgets it)."""
        if self._describe is None:
            return
        self._devices = dict(self._describe())
        if self._can_send():
            self._send_devices()

    def _send_devices(self) -> None:
        assert self._client is not None  # checked by the callers
        prefix = self._config.topic_prefix
        current = {
            devices_topic(prefix, self._site, device): described.description.encode()
            for device, described in self._devices.items()
        }
        for topic in self._sent_devices.keys() - current.keys():
            self._client.publish(topic, b"", qos=1, retain=True)
            del self._sent_devices[topic]
        for topic, payload in current.items():
            if self._sent_devices.get(topic) != payload:
                self._client.publish(topic, payload, qos=1, retain=True)
                self._sent_devices[topic] = payload

    @property
    def connect_failures(self) -> int:
        """Failed connection attempts in the current outage (0 while connected)."""
        return self._report.failures

    def publish_status(self, details: Mapping[str, Any]) -> None:
        """Publish the retained ``online`` status with ``details`` (counters); also on reconnect."""
        self._details = dict(details)
        if self._client is None or self._stopping:
            return
        online = encode_status(
            self._site, "online", version=__version__, ts=datetime.now(UTC), details=details
        )
        self._client.publish(self._status_topic, online, qos=1, retain=True)

    def publish_alarm(self, state: AlarmState, *, event: bool) -> None:
        """Publish a gateway alarm's retained state, and on a transition (``event``) the event.

        While disconnected, the state is kept (and sent on connect) and events wait in a bounded
        queue; on connect the waiting events go out first, then the current states, so that the
        retained state is always the newest.
        """
        self._alarms[(state.device, state.name)] = state
        if not self._can_send():
            if event:
                self._unsent_events.append(state)
            return
        if event:
            self._send_event(state)
        self._send_state(state)

    def _can_send(self) -> bool:
        return self._client is not None and self.connected.is_set() and not self._stopping

    def _send_state(self, state: AlarmState) -> None:
        assert self._client is not None  # checked by _can_send
        topic = alarm_topic(self._config.topic_prefix, self._site, state.device, state.name)
        self._client.publish(topic, encode_alarm_state(self._site, state), qos=1, retain=True)

    def _send_event(self, state: AlarmState) -> None:
        assert self._client is not None  # checked by _can_send
        topic = events_topic(self._config.topic_prefix, self._site)
        self._client.publish(topic, encode_alarm_event(self._site, state), qos=1)

    async def wait_drained(self) -> None:
        """Return once the buffer is empty and nothing is in flight (callers bound the wait).

        Used on shutdown after polling stopped, so that a clean stop leaves nothing behind while the
        broker is reachable; when it is not, the readings simply stay in the durable buffer.
        """
        while True:
            self._progress.clear()
            idle = self._inflight_messages == 0 and not self._end_tasks
            if idle and await self._buffer.pending() == 0:
                return
            with contextlib.suppress(TimeoutError):
                # Woken by each acknowledgement; the timeout covers a publish still being queued.
                async with asyncio.timeout(0.2):
                    await self._progress.wait()

    def alarm_states(self) -> list[AlarmState]:
        """The gateway's own alarms (``buffer_dropped``), as last published or queued."""
        return list(self._alarms.values())

    def _on_puback(self, mid: int) -> None:
        self.link.last_puback = time.monotonic()
        gap = self._gap_mids.pop(mid, None)
        if gap is not None:
            self._spawn(self._buffer.gap_published(gap), "gap-published")
            return
        pending = self._by_mid.pop(mid, None)
        if pending is None:
            return
        self._inflight_messages -= 1
        self.stats.messages_acked += 1
        pending.mids.discard(mid)
        if not pending.mids:
            self._begun.pop(pending.batch.id, None)
            accepted = not pending.refused
            if accepted:
                self.stats.readings_acked += len(pending.batch.readings)
            self._spawn(self._buffer.end(pending.batch, accepted=accepted), "buffer-end")
        if self._inflight_messages < self._config.max_inflight:
            self._window_open.set()

    async def _announce_gaps(self, client: mqtt.Client) -> None:
        """Publish every declared gap not yet acknowledged (again after each reconnect: the
        broker may not have taken it); the buffer forgets one when its PUBACK arrives."""
        topic = events_topic(self._config.topic_prefix, self._site)
        waiting = set(self._gap_mids.values())
        for gap in await self._buffer.declared_gaps():
            if gap in waiting or not self.connected.is_set():
                continue
            payload = encode_gap_event(
                self._site,
                from_seq=gap.from_seq,
                to_seq=gap.to_seq,
                reason=gap.reason,
                ts=from_epoch_ms(gap.ts_ms),
            )
            info = client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self._gap_mids[info.mid] = gap

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._end_tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._end_tasks.discard(task)
        self._progress.set()

    def _on_connect(self, client: mqtt.Client, reason_code: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self._report.failed(f"refused: {reason_text(reason_code)}")
            return
        self.stats.connects += 1
        # What piled up while disconnected is backlog now; fresh readings overtake it.
        self._spawn(self._buffer.mark_live_boundary(), "mark-live-boundary")
        self._spawn(self._announce_gaps(client), "announce-gaps")
        self._report.connected()
        if not self.connected.is_set():
            self.link.since = time.monotonic()
        self._client = client
        self.publish_status(self._details)
        # On every connect, before any telemetry: a broker that lost its retained messages (no
        # persistence, a crash before its autosave) has them again, and a v2 consumer learns
        # the units before the values.
        self._sent_devices.clear()
        if self._describe is not None:
            self._devices = dict(self._describe())
        self._send_devices()
        self.connected.set()
        for state in self._unsent_events.drain():
            self._send_event(state)
        for state in self._alarms.values():  # retained states survive a broker restart too
            self._send_state(state)

    def _on_disconnect(self, reason_code: Any) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning(
                "lost MQTT broker connection (%s); readings stay buffered", reason_text(reason_code)
            )
        elif not self.connected.is_set() and not self._stopping:
            self._report.failed()  # dropped before CONNACK: e.g. a TLS rejection
        if self.connected.is_set():
            self.link.since = time.monotonic()
        self.connected.clear()

    async def _shutdown(self, client: mqtt.Client) -> None:
        """Publish the offline status on a clean stop; unacknowledged readings stay in the buffer."""
        self._stopping = True
        if self._end_tasks:
            await asyncio.gather(*self._end_tasks, return_exceptions=True)
        if self.connected.is_set():
            offline = encode_status(
                self._site,
                "offline",
                version=__version__,
                ts=datetime.now(UTC),
                details=self.final_details,
            )
            info = client.publish(self._status_topic, offline, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError, TimeoutError):
                await asyncio.to_thread(info.wait_for_publish, 2.0)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
