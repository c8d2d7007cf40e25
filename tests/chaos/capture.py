"""The broker-side witness: a persistent-session subscriber connected to Mosquitto directly (no
proxy), recording every message with its arrival time and MQTT DUP flag.

It is what "the published value" means to the checker: a stored reading must equal the reading
the gateway published under the same sequence number. It connects straight to the broker so that
the faults of the gateway's and the bridge's paths never hide a publication from it; only a
broker crash can, for messages the broker had acknowledged and not yet forwarded to it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.servers import wait_until


@dataclass(frozen=True)
class Message:
    """One message as the capture received it."""

    received: float
    topic: str
    payload: bytes
    dup: bool
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Capture:
    """Subscribes to ``topic`` (QoS 1) on 127.0.0.1:``port`` with a persistent session."""

    port: int
    client_id: str
    topic: str = "#"
    _messages: list[Message] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _subscribed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        # Back at once after a broker restart (paho's stub says int; its arithmetic takes floats).
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        message = Message(time.time(), msg.topic, bytes(msg.payload), bool(msg.dup), msg.retain)
        with self._lock:
            self._messages.append(message)

    def start(self) -> Capture:
        self.client.connect_async("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, timeout=10, what="the capture to subscribe")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def readings(self) -> list[dict[str, Any]]:
        """Every reading of every telemetry message so far (device and DUP flag added)."""
        out: list[dict[str, Any]] = []
        for message in self.messages():
            if "/telemetry/" in message.topic:
                body = message.json()
                out.extend(
                    {**r, "device": body["device"], "dup": message.dup} for r in body["readings"]
                )
        return out
