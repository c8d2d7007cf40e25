"""The MQTT wire contract, in one place: topics, the telemetry payload, the status payload.

Documented for backend developers in ``docs/mqtt.md``; the JSON Schema ``gateway/schema/telemetry.json``
is the normative description of the payload and the tests validate both directions against it.

Topics (``P`` = ``[mqtt] topic_prefix``, ``S`` = site id, ``D`` = device id):

- ``P/S/telemetry/D`` — QoS 1, not retained: readings of device D, oldest first.
- ``P/S/status``      — QoS 1, retained: the gateway's birth message, replaced by the last will.
- ``P/S/deadletter``  — QoS 1: payloads the bridge could not accept, with the reason.
- ``P/S/alarms/D/A`` — QoS 1, retained: state of alarm A of device D (``gateway.status``).
- ``P/S/events``      — QoS 1, not retained: alarms raised and cleared, and the ranges of
  sequence numbers that may hold readings lost in an unclean stop (``readings_lost``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.model import Quality, Reading, iso_ms, to_epoch_ms, utc_ms

SCHEMA_VERSION = 1


def telemetry_topic(prefix: str, site: str, device: str) -> str:
    """Topic carrying device ``device``'s readings."""
    return f"{prefix}/{site}/telemetry/{device}"


def telemetry_filter(prefix: str) -> str:
    """Subscription filter matching the telemetry of every site under ``prefix``."""
    return f"{prefix}/+/telemetry/+"


def status_topic(prefix: str, site: str) -> str:
    """Retained gateway status (birth / last will)."""
    return f"{prefix}/{site}/status"


def deadletter_topic(prefix: str, site: str) -> str:
    """Where the bridge republishes what it could not accept."""
    return f"{prefix}/{site}/deadletter"


def alarm_topic(prefix: str, site: str, device: str, alarm: str) -> str:
    """Retained state of alarm ``alarm`` of device ``device`` (see gateway/schema/alarm.json)."""
    return f"{prefix}/{site}/alarms/{device}/{alarm}"


def events_topic(prefix: str, site: str) -> str:
    """Non-retained events of a site: alarms raised and cleared."""
    return f"{prefix}/{site}/events"


def encode_telemetry(site: str, device: str, readings: Sequence[Reading]) -> bytes:
    """Serialise readings of one device (all with ``device == device``) into one message."""
    body = {
        "v": SCHEMA_VERSION,
        "site": site,
        "device": device,
        "readings": [_wire_reading(r) for r in readings],
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def _wire_reading(r: Reading) -> dict[str, Any]:
    item: dict[str, Any] = {
        "metric": r.metric,
        "value": r.value,
        "unit": r.unit,
        "ts": iso_ms(r.ts),
        "seq": r.seq,
        "quality": r.quality.value,
    }
    if not r.time_synced:
        item["time_synced"] = False  # present only when False: most readings carry no flag
    return item


def group_by_device(readings: Iterable[Reading]) -> dict[str, list[Reading]]:
    """Readings grouped per device, each group in the order given (sequence order)."""
    groups: dict[str, list[Reading]] = {}
    for reading in readings:
        groups.setdefault(reading.device, []).append(reading)
    return groups


def encode_status(
    site: str,
    state: Literal["online", "offline"],
    *,
    version: str,
    ts: datetime,
    details: Mapping[str, Any] | None = None,
) -> bytes:
    """The retained status payload; ``offline`` is also the last will.

    ``details`` (buffer, device and line counters, see docs/mqtt.md) is merged in: while online,
    and in the offline status of a clean stop (the final counters; the last will has none).
    """
    body = {"v": SCHEMA_VERSION, "site": site, "state": state, "version": version, "ts": iso_ms(ts)}
    body.update(details or {})
    return json.dumps(body, separators=(",", ":")).encode()


class TelemetryError(ValueError):
    """A telemetry payload that does not follow the contract; the message says why."""


_Ident = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


class _WireReading(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    metric: Annotated[str, Field(min_length=1, max_length=64)]
    value: float | int | bool | str | None
    unit: str
    ts: str
    seq: Annotated[int, Field(ge=1)]
    quality: Quality = Field(strict=False)
    time_synced: bool = True


class _WireMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    v: Literal[1]
    site: _Ident
    device: _Ident
    readings: Annotated[list[_WireReading], Field(min_length=1)]


def decode_telemetry(payload: bytes, *, topic_site: str, topic_device: str) -> list[Reading]:
    """Parse and validate one telemetry message received on ``P/topic_site/telemetry/topic_device``.

    Raises `TelemetryError` with a one-line reason for anything the bridge must not store: not JSON,
    wrong shape, a site or device that contradicts the topic, a timestamp that is not RFC 3339 UTC.
    """
    try:
        data: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TelemetryError(f"not JSON: {exc}") from exc
    try:
        message = _WireMessage.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise TelemetryError(f"{where}: {first['msg']}") from exc
    if (message.site, message.device) != (topic_site, topic_device):
        raise TelemetryError(
            f"payload names {message.site}/{message.device} but arrived on {topic_site}/{topic_device}"
        )
    readings = []
    for item in message.readings:
        if not item.ts.endswith("Z"):
            raise TelemetryError(
                f"seq {item.seq}: ts must be UTC with a 'Z' suffix, got {item.ts!r}"
            )
        try:
            ts = utc_ms(datetime.fromisoformat(item.ts))
        except ValueError as exc:
            raise TelemetryError(f"seq {item.seq}: ts is not RFC 3339: {item.ts!r}") from exc
        readings.append(
            Reading(
                device=message.device,
                metric=item.metric,
                value=item.value,
                unit=item.unit,
                ts=ts,
                seq=item.seq,
                quality=item.quality,
                time_synced=item.time_synced,
            )
        )
    return readings


def encode_gap_event(site: str, *, from_seq: int, to_seq: int, reason: str, ts: datetime) -> bytes:
    """The ``P/S/events`` payload declaring that readings ``from_seq..to_seq`` may be lost
    (gateway/schema/gap.json)."""
    body = {
        "v": SCHEMA_VERSION,
        "type": "readings_lost",
        "site": site,
        "from_seq": from_seq,
        "to_seq": to_seq,
        "reason": reason,
        "ts": iso_ms(ts),
    }
    return json.dumps(body, separators=(",", ":")).encode()


class GapEvent(BaseModel):
    """A decoded ``readings_lost`` event (see `encode_gap_event`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    v: Literal[1]
    type: Literal["readings_lost"]
    site: str
    from_seq: Annotated[int, Field(ge=1)]
    to_seq: Annotated[int, Field(ge=1)]
    reason: str
    ts: str

    @property
    def ts_ms(self) -> int:
        """When the gap was declared, epoch ms (``ts`` is checked by `decode_gap_event`)."""
        return to_epoch_ms(utc_ms(datetime.fromisoformat(self.ts)))


def decode_gap_event(payload: bytes) -> GapEvent | None:
    """The gap declared by an events payload, or None if it is another kind of event.

    Raises `TelemetryError` for a ``readings_lost`` event that does not follow the contract.
    """
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TelemetryError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("type") != "readings_lost":
        return None
    try:
        event = GapEvent.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise TelemetryError(f"{where}: {first['msg']}") from exc
    if event.to_seq < event.from_seq:
        raise TelemetryError(f"to_seq {event.to_seq} is below from_seq {event.from_seq}")
    try:
        if not event.ts.endswith("Z"):
            raise ValueError("no Z suffix")
        datetime.fromisoformat(event.ts)
    except ValueError as exc:
        raise TelemetryError(f"ts is not RFC 3339 UTC: {event.ts!r}") from exc
    return event
