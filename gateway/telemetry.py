"""The MQTT wire contract, in one place: topics, the telemetry payload, the status payload.

Documented for backend developers in ``docs/mqtt.md``; the JSON Schema ``gateway/schema/telemetry.json``
is the normative description of the payload and the tests validate both directions against it.

Topics (``P`` = ``[mqtt] topic_prefix``, ``S`` = site id, ``D`` = device id):

- ``P/S/telemetry/D`` — QoS 1, not retained: readings of device D, oldest first (payload v1 or
  v2, ``[mqtt] payload``; gateway/schema/telemetry.json and telemetry-v2.json).
- ``P/S/devices/D``   — QoS 1, retained: the description of device D (units, descriptions,
  room, identity; gateway/schema/device.json), republished on every connect and on change.
- ``P/S/status``      — QoS 1, retained: the gateway's birth message, replaced by the last will.
- ``P/S/deadletter``  — QoS 1: payloads the bridge could not accept, with the reason.
- ``P/S/alarms/D/A`` — QoS 1, retained: state of alarm A of device D (``gateway.status``).
- ``P/S/events``      — QoS 1, not retained: alarms raised and cleared, and the ranges of
  sequence numbers that may hold readings lost in an unclean stop (``readings_lost``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.model import Quality, Reading, from_epoch_ms, iso_ms, to_epoch_ms, utc_ms

SCHEMA_VERSION = 1
#: The compact telemetry payload (gateway/schema/telemetry-v2.json).
COMPACT_VERSION = 2


def telemetry_topic(prefix: str, site: str, device: str) -> str:
    """Topic carrying device ``device``'s readings."""
    return f"{prefix}/{site}/telemetry/{device}"


def telemetry_filter(prefix: str) -> str:
    """Subscription filter matching the telemetry of every site under ``prefix``."""
    return f"{prefix}/+/telemetry/+"


def devices_topic(prefix: str, site: str, device: str) -> str:
    """Retained description of device ``device`` (gateway/schema/device.json)."""
    return f"{prefix}/{site}/devices/{device}"


def devices_filter(prefix: str, site: str | None = None) -> str:
    """Subscription filter matching the device descriptions of ``site`` (default: every site)."""
    return f"{prefix}/{site or '+'}/devices/+"


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


def _invalid(exc: ValidationError) -> TelemetryError:
    """The first validation error of a payload, as ``key.path: message``."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return TelemetryError(f"{where}: {first['msg']}")


_Ident = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


class _WireReading(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    metric: Annotated[str, Field(min_length=1, max_length=64)]
    value: float | int | bool | str | None
    unit: str
    ts: str
    seq: Annotated[int, Field(ge=1)]
    quality: Quality = Field(strict=False)
    time_synced: bool = True


class _WireMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

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
    return _decode_v1(data, topic_site=topic_site, topic_device=topic_device)


def _decode_v1(data: Any, *, topic_site: str, topic_device: str) -> list[Reading]:
    try:
        message = _WireMessage.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from exc
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

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

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


# --- payload v2: one object per poll, values keyed by metric ---------------------------------


_FLOAT32 = struct.Struct("<f")


def shortest_float32(value: float) -> float:
    """The float whose shortest text (``repr``) is the shortest decimal that reads back as the
    float32 nearest ``value``: ``232.72513`` for the float32 ``232.72512817382812``.

    For a value that is exactly a float32, ``float32(result) == value`` (nothing is lost). A
    value outside float32's range is returned as it is.
    """
    try:
        target = _FLOAT32.pack(value)
    except OverflowError:
        return value
    # Binary search over the significant digits: 9 always round-trip a float32, and if d digits
    # do then d + 1 do (the d-digit rounding is a (d + 1)-digit decimal, the nearest one is no
    # farther), so the property is monotonic.
    lo, hi = 1, 9
    best = float(f"{value:.9g}")
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = float(f"{value:.{mid}g}")
        if _FLOAT32.pack(candidate) == target:
            best, hi = candidate, mid
        else:
            lo = mid + 1
    return best


def encode_telemetry_v2(
    readings: Sequence[Reading], *, float32: Collection[str] = frozenset()
) -> bytes:
    """Serialise readings of one device into one compact message (gateway/schema/telemetry-v2.json).

    Readings are grouped into polls: a run of readings with the same ``ts`` and ``time_synced``,
    consecutive ``seq`` and strictly increasing metric keys is one poll object carrying the first
    ``seq``; the i-th key in code-point order then has ``seq + i``. The scheduler numbers a poll's
    readings in key order, so a whole poll (or the part of it a batch boundary left) is one
    object; any other order is still encoded correctly, only in more objects.
    """
    polls: list[dict[str, Any]] = []
    values: dict[str, Any] = {}
    quality: dict[str, str] = {}
    previous: Reading | None = None
    for r in readings:
        if (
            previous is None
            or r.seq != previous.seq + 1
            or r.ts != previous.ts
            or r.time_synced != previous.time_synced
            or r.metric <= previous.metric
        ):
            values, quality = {}, {}
            poll: dict[str, Any] = {"ts": to_epoch_ms(r.ts), "seq": r.seq, "values": values}
            if not r.time_synced:
                poll["time_synced"] = False
            polls.append(poll)
        value = r.value
        if type(value) is float and r.metric in float32:
            value = shortest_float32(value)
        values[r.metric] = value
        if r.quality is not Quality.GOOD:
            if not quality:
                polls[-1]["quality"] = quality
            quality[r.metric] = r.quality.value
        previous = r
    # One poll (every live message): its fields at the top level, the smallest form on the wire.
    body = (
        {"v": COMPACT_VERSION, **polls[0]}
        if len(polls) == 1
        else {"v": COMPACT_VERSION, "polls": polls}
    )
    return json.dumps(body, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


class UnitsUnknown(Exception):
    """A v2 message names a metric whose unit no device description has told the bridge yet.

    Not a contract breach (`TelemetryError`): the retained description arrives on its own topic,
    possibly after the telemetry; the bridge holds the message until it does.
    """


_Metric = Annotated[str, Field(min_length=1, max_length=64)]


class _WirePoll(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    ts: Annotated[int, Field(ge=0)]
    seq: Annotated[int, Field(ge=1)]
    values: Annotated[dict[_Metric, float | int | bool | str | None], Field(min_length=1)]
    quality: dict[_Metric, Literal["no_value"]] = {}
    time_synced: Literal[False] | None = None


class _WireMessageV2(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    v: Literal[2]
    polls: Annotated[list[_WirePoll], Field(min_length=2)]


class _WireSingleV2(_WirePoll):
    v: Literal[2]


def decode_any(
    payload: bytes,
    *,
    topic_site: str,
    topic_device: str,
    units: Mapping[str, str] | None,
) -> list[Reading]:
    """Decode a v1 or v2 telemetry message (see `decode_telemetry`, `decode_telemetry_v2`)."""
    try:
        data: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TelemetryError(f"not JSON: {exc}") from exc
    if isinstance(data, dict) and data.get("v") == COMPACT_VERSION:
        return _decode_v2(data, device=topic_device, units=units)
    return _decode_v1(data, topic_site=topic_site, topic_device=topic_device)


def decode_telemetry_v2(
    payload: bytes, *, device: str, units: Mapping[str, str] | None
) -> list[Reading]:
    """Parse and validate one v2 message of ``device`` into its readings.

    ``units`` (metric -> unit) is what the device's description says; a metric it does not name
    raises `UnitsUnknown`. Raises `TelemetryError` for a payload that breaks the contract.
    """
    try:
        data: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TelemetryError(f"not JSON: {exc}") from exc
    return _decode_v2(data, device=device, units=units)


def _decode_v2(data: Any, *, device: str, units: Mapping[str, str] | None) -> list[Reading]:
    try:
        if isinstance(data, dict) and "polls" in data:
            polls: list[_WirePoll] = _WireMessageV2.model_validate(data).polls
        else:
            polls = [_WireSingleV2.model_validate(data)]
    except ValidationError as exc:
        raise _invalid(exc) from exc
    readings = []
    for poll in polls:
        extra = poll.quality.keys() - poll.values.keys()
        if extra:
            raise TelemetryError(f"seq {poll.seq}: quality names no value: {sorted(extra)}")
        ts = from_epoch_ms(poll.ts)
        synced = poll.time_synced is None
        for offset, metric in enumerate(sorted(poll.values)):
            value = poll.values[metric]
            quality = Quality(poll.quality.get(metric, "good"))
            if (value is None) != (quality is Quality.NO_VALUE):
                raise TelemetryError(f"seq {poll.seq + offset}: a null value is no_value, only")
            if units is None or metric not in units:
                raise UnitsUnknown(f"no description names the unit of {device}/{metric}")
            readings.append(
                Reading(
                    device=device,
                    metric=metric,
                    value=value,
                    unit=units[metric],
                    ts=ts,
                    seq=poll.seq + offset,
                    quality=quality,
                    time_synced=synced,
                )
            )
    return readings


# --- device descriptions ----------------------------------------------------------------------


class MetricDescription(BaseModel):
    """What the description says about one metric."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)

    unit: str
    description: str = ""


class DeviceDescription(BaseModel):
    """The retained ``P/S/devices/D`` payload (gateway/schema/device.json): what does not change
    from poll to poll, so that v2 telemetry need not repeat it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)

    v: Literal[2] = 2
    site: _Ident
    device: _Ident
    driver: str
    room: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    metrics: dict[_Metric, MetricDescription]

    def encode(self) -> bytes:
        """The payload (fields that are unknown are left out)."""
        return self.model_dump_json(exclude_none=True).encode()

    def units(self) -> dict[str, str]:
        """metric -> unit."""
        return {key: m.unit for key, m in self.metrics.items()}


def decode_device(payload: bytes, *, topic_site: str, topic_device: str) -> DeviceDescription:
    """Parse a device description; raises `TelemetryError` if it breaks the contract."""
    try:
        description = DeviceDescription.model_validate_json(payload)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    if (description.site, description.device) != (topic_site, topic_device):
        raise TelemetryError(
            f"description names {description.site}/{description.device} "
            f"but arrived on {topic_site}/{topic_device}"
        )
    return description
