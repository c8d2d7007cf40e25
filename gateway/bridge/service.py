"""The bridge service: telemetry topics in, time-series points out, nothing lost in between.

Contract:
- The MQTT session is persistent (fixed client id, clean session off) and acknowledgement is
  manual: a message is PUBACKed only once its points are durable in the store (`gateway.bridge.acks`:
  written, held ``[bridge] ack_delay`` seconds after the 2xx, and with ``read_back`` found in the
  store). If the bridge or the store dies first, the broker still holds the message; the bridge
  writes again whatever the read-back misses.
- Subscriptions: ``P/<site>/telemetry/+`` for each of ``[bridge] sites``, or ``P/+/telemetry/+``.
  Several bridges split the sites between them, each its own persistent session; no ``$share``
  (see `gateway.config.BridgeConfig`).
- A payload that breaks the contract (see `gateway.telemetry.decode_telemetry`) is republished to
  ``P/<site>/deadletter`` with the reason, and acknowledged once the broker took the dead letter.
  So is a message whose content the store rejects (422, 400 with a parse error), found by writing
  the batch's messages one by one, and a message the store keeps accepting but never keeps
  (`MAX_REWRITES` read-backs missed it).
- A store that is down or overloaded (no connection, 408/429/5xx) is retried with jittered backoff
  for as long as it takes, holding the messages. A store that refuses (401/403/404, other 4xx) is
  a configuration fault: the messages are held, the request retried with backoff (the credential
  is read again before each retry), the ``store_refused`` alarm raised (`gateway.bridge.alarm`);
  nothing is dead-lettered. Each episode is logged once, and its end once. A request too large
  for the store (413) is split in halves.
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
from influxdb_client import Point

from gateway.bridge.acks import AckWindow, Entry
from gateway.bridge.alarm import StoreAlarm, alarm_device
from gateway.bridge.devices import DeviceDirectory
from gateway.bridge.influx import InfluxWriter, StoreError
from gateway.bridge.points import PointKey, gap_key, gap_point, point_keys, to_points
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.mqtt_client import ConnectionReporter, LoopBridge, make_client, reason_text
from gateway.telemetry import (
    TelemetryError,
    UnitsUnknown,
    deadletter_topic,
    decode_any,
    decode_gap_event,
    telemetry_filter,
)

log = logging.getLogger(__name__)

#: Read-backs that may miss a message's points (each followed by a rewrite and a new hold) before
#: the bridge concludes that the store accepts them but does not keep them (VictoriaMetrics
#: answers 204 and drops samples outside its retention or more than 2 days in the future).
#: With the default hold that is about 90 s of misses in a row: a store restarting that often is
#: crash-looping, and the dead letter keeps the payload for a replay.
MAX_REWRITES = 5


@dataclass
class BridgeStats:
    """Counters for logs and tests."""

    messages_acked: int = 0
    #: Events acknowledged without a point (alarm events; the bridge hears its own, too).
    events_ignored: int = 0
    points_written: int = 0
    dead_letters: int = 0
    write_failures: int = 0
    #: Messages the read-back found missing and that were written again.
    rewrites: int = 0
    read_backs: int = 0


class _Episode:
    """One kind of store trouble at a time, logged once when it starts and once when it ends."""

    def __init__(self, what: str) -> None:
        self._what = what
        self.fault: str | None = None
        self.status = 0
        self.attempts = 0

    def failed(self, exc: StoreError, held: int) -> None:
        self.attempts += 1
        if exc.fault == self.fault:
            return
        self.fault, self.status = exc.fault, exc.status
        if exc.fault == "refused":
            log.error(
                "time-series store refuses %s (%s): a configuration fault (credentials, URL, org "
                "or bucket); holding %d messages and retrying, nothing is dead-lettered",
                self._what,
                exc,
                held,
            )
        else:
            log.warning("time-series store not accepting %s (%s); retrying", self._what, exc)

    def succeeded(self) -> None:
        if self.fault is not None:
            log.info(
                "time-series store accepting %s again after %d retries", self._what, self.attempts
            )
        self.fault, self.status, self.attempts = None, 0, 0


class Bridge:
    """Run ``run()`` as a task; cancel it to stop (unacknowledged messages stay with the broker)."""

    def __init__(self, *, config: GatewayConfig, writer: InfluxWriter) -> None:
        if config.influxdb is None:
            raise ValueError("the bridge needs an [influxdb] section")
        self._mqtt = config.mqtt
        self._influx = config.influxdb
        self._options = config.bridge
        self._prefix = config.mqtt.topic_prefix
        self._client_id = config.bridge.client_id or f"canary-bridge-{config.site.id}"
        catch_all = telemetry_filter(self._prefix)
        sites = config.bridge.sites
        self._filters = [
            f"{self._prefix}/{s}/{kind}" for s in sites for kind in ("telemetry/+", "events")
        ] or [catch_all, f"{self._prefix}/+/events"]
        #: A session that used to take every site keeps that subscription: drop it.
        self._stale_filters = [catch_all, f"{self._prefix}/+/events"] if sites else []
        self._writer = writer
        self._window = AckWindow(ack_delay=config.bridge.ack_delay, clock=time.monotonic)
        self._inbox: asyncio.Queue[Entry] = asyncio.Queue()
        self._alarm = StoreAlarm(
            prefix=self._prefix, site=config.site.id, device=alarm_device(self._client_id)
        )
        self._writes = _Episode("writes")
        self._reads = _Episode("read-backs")
        self.subscribed = asyncio.Event()
        self._online = asyncio.Event()
        self._report = ConnectionReporter(logger=log, host=self._mqtt.host, port=self._mqtt.port)
        self.stats = BridgeStats()
        self._devices = DeviceDirectory(
            config=config.mqtt,
            client_id=f"{self._client_id}-devices",
            sites=list(sites),
            on_change=self._described,
        )
        #: v2 messages waiting for their device's description (units), by (site, device).
        self._parked: dict[tuple[str, str], list[Entry]] = {}

    @property
    def alarm(self) -> StoreAlarm:
        """The ``store_refused`` alarm (for status and tests)."""
        return self._alarm

    @property
    def held(self) -> int:
        """Messages with data received and not yet acknowledged."""
        return self._window.holding()

    @property
    def undescribed(self) -> int:
        """v2 messages held until their device's description names their metrics' units."""
        return sum(len(entries) for entries in self._parked.values())

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
        client.on_subscribe = lambda c, u, mid, rcs, p: loop_bridge.call(self._on_subscribed, rcs)
        client.on_message = lambda c, u, msg: loop_bridge.call(self._on_message, msg)
        client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive)
        client.loop_start()
        self._devices.start()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._write_loop(client), name="bridge-write")
                group.create_task(self._ack_loop(client), name="bridge-ack")
        finally:
            self._alarm.attach(None)
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            await asyncio.to_thread(self._devices.stop)
            await asyncio.to_thread(self._writer.close)

    # --- MQTT callbacks (on the event loop, via LoopBridge) -----------------------------------

    def _on_connect(self, client: mqtt.Client, reason_code: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self._report.failed(f"refused: {reason_text(reason_code)}")
            return
        self._window.new_connection()
        self._online.set()
        self._report.connected()
        if self._stale_filters:
            # First: the broker handles one connection's packets in order, so the SUBACK below
            # also means the catch-all is gone.
            client.unsubscribe(self._stale_filters)
        log.info("subscribing to %s", ", ".join(self._filters))
        client.subscribe([(f, 1) for f in self._filters])
        self._alarm.attach(client)

    def _on_disconnect(self, reason_code: Any) -> None:
        if self._online.is_set():
            log.warning("lost MQTT broker connection (%s); reconnecting", reason_text(reason_code))
        else:
            self._report.failed()  # dropped before CONNACK: e.g. a TLS rejection
        self._online.clear()
        self._alarm.attach(None)

    def _on_subscribed(self, reason_codes: Any) -> None:
        refused = [rc for rc in reason_codes if getattr(rc, "is_failure", False)]
        if refused:
            log.error(
                "the broker refused the subscription to %s (%s): check its ACL",
                ", ".join(self._filters),
                ", ".join(reason_text(rc) for rc in refused),
            )
            return
        # From here on the broker queues telemetry for this session even while the bridge is away.
        log.info(
            "subscribed to %s (persistent session %s)", ", ".join(self._filters), self._client_id
        )
        self.subscribed.set()

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        entry = self._window.receive(message)
        if message.topic.endswith("/events") and not _declares_gap(bytes(message.payload)):
            entry.ignored = True  # nothing to store; acknowledged in its turn
            self._window.finished(entry)
            return
        self._inbox.put_nowait(entry)

    # --- writing -------------------------------------------------------------------------------

    async def _write_loop(self, client: mqtt.Client) -> None:
        while True:
            await self._store(client, await self._collect())

    async def _collect(self) -> list[Entry]:
        """Wait for one entry, then gather more until the batch is full or the window closes.
        Entries of an earlier connection are written too (see `_write_retrying`)."""
        batch: list[Entry] = []
        deadline: float | None = None
        while len(batch) < self._influx.batch_size:
            if deadline is None:
                entry = await self._inbox.get()
                deadline = time.monotonic() + self._influx.flush_interval
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):  # not wait_for: see gateway/app.py
                        entry = await self._inbox.get()
                except TimeoutError:
                    break
            batch.append(entry)
        return batch

    async def _store(self, client: mqtt.Client, entries: list[Entry]) -> None:
        decoded: list[Entry] = []
        for entry in entries:
            if entry.readings is None:
                try:
                    self._decode(entry)
                except TelemetryError as exc:
                    await self._dead_letter(client, entry, str(exc))
                    continue
                except UnitsUnknown as exc:
                    self._park(entry, str(exc))
                    continue
            if not entry.readings and entry.gap is None:
                self._window.finished(entry)  # nothing to store
                continue
            decoded.append(entry)
        if not decoded:
            return
        try:
            await self._write_retrying(decoded)
        except StoreError:
            await self._write_one_by_one(client, decoded)

    def _decode(self, entry: Entry) -> None:
        message = entry.message
        site, device = _site_and_device(message.topic, self._prefix)
        entry.site = site
        if device is None:  # P/S/events: a declared gap is stored, alarm events are not
            entry.gap = decode_gap_event(bytes(message.payload))
            if entry.gap is not None and entry.gap.site != site:
                raise TelemetryError(f"payload names site {entry.gap.site} but arrived on {site}")
            entry.readings = []
            return
        entry.readings = decode_any(
            bytes(message.payload),
            topic_site=site,
            topic_device=device,
            units=self._devices.units(site, device),
        )

    def _park(self, entry: Entry, reason: str) -> None:
        """Hold a v2 message until its device's description names every metric it carries
        (held, not acknowledged: the broker keeps it meanwhile)."""
        _, device = _site_and_device(entry.message.topic, self._prefix)
        key = (entry.site, device or "")
        parked = self._parked.setdefault(key, [])
        if not parked:
            log.info("holding telemetry of %s/%s until its description arrives (%s)", *key, reason)
        parked.append(entry)

    def _described(self, site: str, device: str) -> None:
        """A description arrived: what waited for it is decoded again."""
        for entry in self._parked.pop((site, device), []):
            self._inbox.put_nowait(entry)

    async def _write_retrying(self, entries: list[Entry]) -> None:
        """Write until accepted, then hold the entries; raise `StoreError` only for content.

        Entries whose connection ended meanwhile are written all the same (`AckWindow`: the
        broker may have lost them in a crash); only their acknowledgement is never sent.
        """
        attempt = 0
        while True:
            points = [p for e in entries for p in _points(e)]
            try:
                await self._write_split(points)
            except StoreError as exc:
                self.stats.write_failures += 1
                if exc.fault == "content":
                    raise
                self._writes.failed(exc, len(self._window))
                await self._trouble(exc)
                attempt += 1
                await asyncio.sleep(random.uniform(0, 1.5 ** min(10, attempt)))
                continue
            self._writes.succeeded()
            self._healthy(204)
            self.stats.points_written += len(points)
            self._window.written(entries)
            return

    async def _write_split(self, points: list[Point]) -> None:
        """One request; halves again and again while the store says it is too large (413)."""
        try:
            await asyncio.to_thread(self._writer.write, points)
        except StoreError as exc:
            if exc.fault != "too_large":
                raise
            if len(points) == 1:
                raise StoreError(
                    f"a single point is larger than the store accepts ({exc})",
                    fault="content",
                    status=exc.status,
                ) from exc
            half = len(points) // 2
            await self._write_split(points[:half])
            await self._write_split(points[half:])

    async def _write_one_by_one(self, client: mqtt.Client, entries: list[Entry]) -> None:
        for entry in entries:
            try:
                await self._write_retrying([entry])
            except StoreError as exc:
                await self._dead_letter(client, entry, f"rejected by the store: {exc}")

    async def _trouble(self, exc: StoreError) -> None:
        """Raise the alarm for a refusal and read the credential again for the next attempt."""
        if exc.fault != "refused":
            return
        self._alarm.set(active=True, status=exc.status)
        try:
            if await asyncio.to_thread(self._writer.refresh_credentials):
                log.info("read the store credential again: it changed, retrying with it")
        except ConfigError as error:
            log.debug("cannot read the store credential again: %s", error)

    def _healthy(self, status: int) -> None:
        if self._writes.fault != "refused" and self._reads.fault != "refused":
            self._alarm.set(active=False, status=status)

    async def _dead_letter(self, client: mqtt.Client, entry: Entry, reason: str) -> None:
        message = entry.message
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
        self._window.finished(entry)

    # --- acknowledging -------------------------------------------------------------------------

    async def _ack_loop(self, client: mqtt.Client) -> None:
        attempt = 0
        while True:
            await self._online.wait()
            due = self._window.due(self._influx.batch_size)
            if due:
                try:
                    await self._settle(client, due)
                except StoreError as exc:
                    self._reads.failed(exc, len(self._window))
                    await self._trouble(exc)
                    attempt += 1
                    await asyncio.sleep(random.uniform(0, 1.5 ** min(10, attempt)))
                    continue
                attempt = 0
            for entry in self._window.pop_finished():
                client.ack(entry.message.mid, entry.message.qos)
                if entry.ignored:
                    self.stats.events_ignored += 1
                else:
                    self.stats.messages_acked += 1
            await self._window.wait()

    async def _settle(self, client: mqtt.Client, due: list[Entry]) -> None:
        """Finish held entries whose points are in the store; write the others again."""
        if not self._options.read_back:
            for entry in due:
                self._window.finished(entry)
            return
        keys = {e: _keys(e) for e in due}
        present = await asyncio.to_thread(
            self._writer.present, [k for ks in keys.values() for k in ks]
        )
        self.stats.read_backs += 1
        self._reads.succeeded()
        self._healthy(200)
        lost = 0
        for entry, wanted in keys.items():
            if present.issuperset(wanted):
                self._window.finished(entry)
            elif entry.rewrites >= MAX_REWRITES:
                await self._dead_letter(
                    client,
                    entry,
                    f"the store accepted these points {entry.rewrites + 1} times but does not "
                    "keep them (a timestamp outside its retention, or too far in the future?)",
                )
            else:
                lost += 1
                self._window.rewrite(entry)
                self._inbox.put_nowait(entry)
        if lost:
            self.stats.rewrites += lost
            log.warning(
                "the time-series store lost the points of %d accepted messages (did it restart?); "
                "writing them again",
                lost,
            )


def _published_within(info: mqtt.MQTTMessageInfo, timeout: float) -> bool:
    try:
        info.wait_for_publish(timeout)
    except RuntimeError:  # not yet queued because the client is reconnecting
        time.sleep(min(timeout, 0.1))
    return info.is_published()


def _declares_gap(payload: bytes) -> bool:
    """Whether an events payload is (or claims to be) a ``readings_lost`` declaration; a broken
    one goes on to `decode_gap_event` and is dead-lettered with the reason."""
    return b'"readings_lost"' in payload


def _points(entry: Entry) -> list[Point]:
    """What ``entry`` stores: its readings, or its declared gap."""
    points = to_points(entry.site, entry.readings or [])
    if entry.gap is not None:
        points.append(gap_point(entry.site, entry.gap))
    return points


def _keys(entry: Entry) -> list[PointKey]:
    """Under which keys `_points` stores ``entry`` (for the read-back)."""
    keys = point_keys(entry.site, entry.readings or [])
    if entry.gap is not None:
        keys.append(gap_key(entry.site, entry.gap))
    return keys


def _site_and_device(topic: str, prefix: str) -> tuple[str, str | None]:
    """(site, device) of a telemetry topic, (site, None) of an events topic."""
    parts = topic[len(prefix) + 1 :].split("/") if topic.startswith(prefix + "/") else []
    if len(parts) == 2 and parts[1] == "events":
        return parts[0], None
    if len(parts) != 3 or parts[1] != "telemetry":
        raise TelemetryError(f"unexpected topic {topic!r}")
    return parts[0], parts[2]


def _site_or_unknown(topic: str, prefix: str) -> str:
    try:
        return _site_and_device(topic, prefix)[0]
    except TelemetryError:
        return "_unknown"
