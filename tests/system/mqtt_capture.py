"""A test-side MQTT subscriber that records every message it receives (real paho, real broker).

Every telemetry message (v1 or v2) and every device description it receives is validated against
its JSON Schema in gateway/schema/; `MqttCapture.invalid` lists what did not validate, and
`readings` gives the readings of both versions in v1's shape (the units of v2 from the
descriptions seen, when there were any).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.model import from_epoch_ms, iso_ms
from tests.servers import wait_until

_SCHEMAS = Path(__file__).resolve().parents[2] / "gateway" / "schema"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((_SCHEMAS / name).read_text())
    return jsonschema.Draft202012Validator(schema)


VALIDATORS = {
    1: _validator("telemetry.json"),
    2: _validator("telemetry-v2.json"),
    "device": _validator("device.json"),
}


def v2_readings(body: dict[str, Any], device: str, units: dict[str, str]) -> list[dict[str, Any]]:
    """A v2 message's readings in v1's shape, rebuilt as a backend would: the i-th metric in
    code-point order of a poll has the poll's ``seq`` + i (gateway/schema/telemetry-v2.json)."""
    out = []
    for poll in body.get("polls") or [body]:
        quality = poll.get("quality", {})
        for offset, metric in enumerate(sorted(poll["values"])):
            reading = {
                "metric": metric,
                "value": poll["values"][metric],
                "unit": units.get(metric),
                "ts": iso_ms(from_epoch_ms(poll["ts"])),
                "seq": poll["seq"] + offset,
                "quality": quality.get(metric, "good"),
                "device": device,
            }
            if poll.get("time_synced") is False:
                reading["time_synced"] = False
            out.append(reading)
    return out


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
    #: (topic, reason) of every telemetry message or device description that broke its schema.
    invalid: list[tuple[str, str]] = field(default_factory=list)
    #: Payload versions of the telemetry seen.
    versions: set[int] = field(default_factory=set)
    _readings: list[dict[str, Any]] = field(default_factory=list)
    _units: dict[str, dict[str, str]] = field(default_factory=dict)
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
        captured = Captured(msg.topic, bytes(msg.payload), bool(msg.retain))
        with self._lock:
            self.messages.append(captured)
            try:
                self._inspect(captured)
            except (
                ValueError,
                KeyError,
                TypeError,
            ) as exc:  # not JSON, or a shape the schema missed
                self.invalid.append((captured.topic, f"{type(exc).__name__}: {exc}"))

    def _inspect(self, message: Captured) -> None:
        levels = message.topic.split("/")
        if "/devices/" in message.topic and message.payload:
            body = message.json()
            for error in VALIDATORS["device"].iter_errors(body):
                self.invalid.append((message.topic, error.message))
            self._units[levels[-1]] = {k: m["unit"] for k, m in body["metrics"].items()}
        elif "/telemetry/" in message.topic:
            body = message.json()
            version = body.get("v") if isinstance(body, dict) else None
            validator = VALIDATORS.get(version) if isinstance(version, int) else None
            if validator is None:
                self.invalid.append((message.topic, f"unknown payload version {version!r}"))
                return
            errors = [e.message for e in validator.iter_errors(body)]
            self.invalid.extend((message.topic, e) for e in errors)
            if errors:
                return
            self.versions.add(version)
            if version == 1:
                self._readings.extend({**r, "device": body["device"]} for r in body["readings"])
            else:
                device = levels[-1]
                self._readings.extend(v2_readings(body, device, self._units.get(device, {})))

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
        """Every reading in every valid telemetry message so far (v1 or v2), in v1's shape with
        its device added."""
        with self._lock:
            return list(self._readings)

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
