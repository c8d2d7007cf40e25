"""A test-side MQTT subscriber that records every message it receives (real paho, real broker)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.servers import wait_until


@dataclass
class Captured:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class MqttCapture:
    """Subscribes to ``topic`` on 127.0.0.1:``port``; persistent session when ``client_id`` is set."""

    port: int
    topic: str = "#"
    client_id: str = ""
    messages: list[Captured] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _subscribed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        persistent = bool(self.client_id)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=not persistent
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Captured(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def start(self) -> MqttCapture:
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, timeout=10, what="the test subscriber to subscribe")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[Captured]:
        with self._lock:
            return list(self.messages)

    def readings(self) -> list[dict[str, Any]]:
        """Every reading in every telemetry message so far, with its device added."""
        out = []
        for message in self.snapshot():
            if "/telemetry/" in message.topic:
                body = message.json()
                out.extend({**r, "device": body["device"]} for r in body["readings"])
        return out

    def declared_gaps(self) -> set[tuple[int, int]]:
        """The ``readings_lost`` ranges announced on the events topic so far (gateway/schema/gap.json)."""
        gaps = set()
        for message in self.snapshot():
            if message.topic.endswith("/events"):
                body = message.json()
                if body.get("type") == "readings_lost":
                    gaps.add((body["from_seq"], body["to_seq"]))
        return gaps


def unexplained(seqs: set[int], last: int, gaps: set[tuple[int, int]]) -> set[int]:
    """Numbers in 1..``last`` missing from ``seqs`` and outside every declared gap."""
    missing = set(range(1, last + 1)) - seqs
    return {s for s in missing if not any(a <= s <= b for a, b in gaps)}
