"""The bridge service: telemetry topics in, time-series points out, nothing lost in between.

Contract:
- The MQTT session is persistent (fixed client id, clean session off) and acknowledgement is manual:
  a message is PUBACKed only after the store accepted every point made from it. If the bridge dies
  first, the broker redelivers the message to the next bridge session.
- A payload that breaks the contract (see `gateway.telemetry.decode_telemetry`) is republished to
  ``P/<site>/deadletter`` with the reason, and acknowledged once the broker took the dead letter.
- A store that is down or overloaded (connection error, 408/429/5xx) is retried with jittered
  backoff for as long as it takes, holding the messages unacknowledged. A store that rejects the
  content (other 4xx) gets the messages one by one; the ones it still rejects are dead-lettered.
- With ``[bridge] share_group``, the subscription is ``$share/<group>/...``: several bridges split
  the stream, and replays are idempotent because a point's series and timestamp identify it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from gateway.bridge.influx import InfluxWriter
from gateway.bridge.points import to_points
from gateway.config import GatewayConfig
from gateway.errors import SinkError
from gateway.model import Reading
from gateway.mqtt_client import ConnectionReporter, LoopBridge, make_client, reason_text
from gateway.telemetry import TelemetryError, deadletter_topic, decode_telemetry, telemetry_filter

log = logging.getLogger(__name__)


@dataclass
class BridgeStats:
    """Counters for logs and tests."""

    messages_acked: int = 0
    points_written: int = 0
    dead_letters: int = 0
    write_failures: int = 0


@dataclass
class _Decoded:
    message: mqtt.MQTTMessage
    site: str
    readings: list[Reading]


class Bridge:
    """Run ``run()`` as a task; cancel it to stop (unacknowledged messages stay with the broker)."""

    def __init__(self, *, config: GatewayConfig, writer: InfluxWriter) -> None:
        if config.influxdb is None:
            raise ValueError("the bridge needs an [influxdb] section")
        self._mqtt = config.mqtt
        self._influx = config.influxdb
        self._prefix = config.mqtt.topic_prefix
        self._client_id = config.bridge.client_id or f"canary-bridge-{config.site.id}"
        topic_filter = telemetry_filter(self._prefix)
        group = config.bridge.share_group
        self._subscription = f"$share/{group}/{topic_filter}" if group else topic_filter
        self._writer = writer
        self._inbox: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue()
        self.subscribed = asyncio.Event()
        self._connected = False
        self._report = ConnectionReporter(logger=log, host=self._mqtt.host, port=self._mqtt.port)
        self.stats = BridgeStats()

    async def run(self) -> None:
        """Connect, subscribe and bridge until cancelled."""
        loop_bridge = LoopBridge()
        client = make_client(
            self._mqtt, client_id=self._client_id, clean_session=False, manual_ack=True
        )
        report = self._report
        client.on_connect = lambda c, u, f, rc, p: loop_bridge.call(self._on_connect, c, rc)
        client.on_connect_fail = lambda c, u: loop_bridge.call(report.failed)
        client.on_disconnect = lambda c, u, f, rc, p: loop_bridge.call(self._on_disconnect, rc)
        client.on_log = report.paho_log
        client.on_subscribe = lambda c, u, mid, rcs, p: loop_bridge.call(self._on_subscribed)
        client.on_message = lambda c, u, msg: loop_bridge.call(self._inbox.put_nowait, msg)
        client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive)
        client.loop_start()
        try:
            while True:
                await self._bridge_batch(client, await self._collect())
        finally:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            await asyncio.to_thread(self._writer.close)

    def _on_connect(self, client: mqtt.Client, reason_code: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self._report.failed(f"refused: {reason_text(reason_code)}")
            return
        self._connected = True
        self._report.connected()
        log.info("subscribing to %s", self._subscription)
        client.subscribe(self._subscription, qos=1)

    def _on_disconnect(self, reason_code: Any) -> None:
        if self._connected:
            log.warning("lost MQTT broker connection (%s); reconnecting", reason_text(reason_code))
        else:
            self._report.failed()  # dropped before CONNACK: e.g. a TLS rejection
        self._connected = False

    def _on_subscribed(self) -> None:
        # From here on the broker queues telemetry for this session even while the bridge is away.
        log.info("subscribed to %s (persistent session %s)", self._subscription, self._client_id)
        self.subscribed.set()

    async def _collect(self) -> list[mqtt.MQTTMessage]:
        """Wait for one message, then gather more until the batch is full or the window closes."""
        batch = [await self._inbox.get()]
        deadline = time.monotonic() + self._influx.flush_interval
        while len(batch) < self._influx.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._inbox.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _bridge_batch(self, client: mqtt.Client, messages: list[mqtt.MQTTMessage]) -> None:
        decoded: list[_Decoded] = []
        for message in messages:
            try:
                decoded.append(self._decode(message))
            except TelemetryError as exc:
                await self._dead_letter(client, message, str(exc))
        if decoded:
            try:
                await self._write_retrying(decoded)
            except SinkError:
                await self._write_one_by_one(client, decoded)
                return
            for item in decoded:
                self._ack(client, item.message)

    def _decode(self, message: mqtt.MQTTMessage) -> _Decoded:
        site, device = _site_and_device(message.topic, self._prefix)
        return _Decoded(
            message,
            site,
            decode_telemetry(bytes(message.payload), topic_site=site, topic_device=device),
        )

    async def _write_retrying(self, batch: list[_Decoded]) -> None:
        """Write until accepted; raise `SinkError` only for a non-retryable rejection."""
        points = [p for item in batch for p in to_points(item.site, item.readings)]
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self._writer.write, points)
            except SinkError as exc:
                self.stats.write_failures += 1
                if not exc.retryable:
                    raise
                attempt += 1
                delay = random.uniform(0, 1.5 ** min(10, attempt))
                if attempt == 1:
                    log.warning("time-series store not accepting writes (%s); retrying", exc)
                await asyncio.sleep(delay)
                continue
            if attempt:
                log.info("time-series store accepting writes again after %d retries", attempt)
            self.stats.points_written += len(points)
            return

    async def _write_one_by_one(self, client: mqtt.Client, batch: list[_Decoded]) -> None:
        for item in batch:
            try:
                await self._write_retrying([item])
            except SinkError as exc:
                await self._dead_letter(client, item.message, f"rejected by the store: {exc}")
            else:
                self._ack(client, item.message)

    async def _dead_letter(
        self, client: mqtt.Client, message: mqtt.MQTTMessage, reason: str
    ) -> None:
        site = _site_or_unknown(message.topic, self._prefix)
        body = {
            "v": 1,
            "reason": reason,
            "topic": message.topic,
            "payload": message.payload.decode("utf-8", errors="replace"),
        }
        log.warning("dead-lettering a message from %s: %s", message.topic, reason)
        info = client.publish(deadletter_topic(self._prefix, site), json.dumps(body), qos=1)
        # Bounded waits keep the task cancellable; paho resends the dead letter after a reconnect.
        while not await asyncio.to_thread(_published_within, info, 1.0):
            pass
        self.stats.dead_letters += 1
        self._ack(client, message)

    def _ack(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        client.ack(message.mid, message.qos)
        self.stats.messages_acked += 1


def _published_within(info: mqtt.MQTTMessageInfo, timeout: float) -> bool:
    try:
        info.wait_for_publish(timeout)
    except RuntimeError:  # not yet queued because the client is reconnecting
        time.sleep(min(timeout, 0.1))
    return info.is_published()


def _site_and_device(topic: str, prefix: str) -> tuple[str, str]:
    parts = topic[len(prefix) + 1 :].split("/") if topic.startswith(prefix + "/") else []
    if len(parts) != 3 or parts[1] != "telemetry":
        raise TelemetryError(f"unexpected topic {topic!r}")
    return parts[0], parts[2]


def _site_or_unknown(topic: str, prefix: str) -> str:
    try:
        return _site_and_device(topic, prefix)[0]
    except TelemetryError:
        return "_unknown"
