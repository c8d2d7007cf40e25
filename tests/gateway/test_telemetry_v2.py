"""Payload v2 and the device description: what the encoder writes validates against
gateway/schema/telemetry-v2.json and device.json, the decoder rebuilds every (seq, metric) from
the message alone (units from the description), and schema and decoder reject the same payloads."""

from __future__ import annotations

import json
import math
import random
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import Quality, Reading, utc_ms
from gateway.telemetry import (
    DeviceDescription,
    MetricDescription,
    TelemetryError,
    UnitsUnknown,
    decode_any,
    decode_device,
    encode_telemetry,
    encode_telemetry_v2,
    shortest_float32,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "gateway" / "schema"
V2 = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "telemetry-v2.json").read_text()))
DEVICE = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "device.json").read_text()))
TS = utc_ms(datetime(2026, 11, 22, 8, 30, 15, 123456, tzinfo=UTC))
UNITS = {"co2": "ppm", "humidity": "%RH", "temperature": "°C", "status": ""}


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def poll(
    first: int, values: dict[str, Any], ts: datetime = TS, synced: bool = True
) -> list[Reading]:
    return [
        Reading(
            device="room-1",
            metric=metric,
            value=value,
            unit=UNITS[metric],
            ts=ts,
            seq=first + i,
            quality=Quality.GOOD if value is not None else Quality.NO_VALUE,
            time_synced=synced,
        )
        for i, (metric, value) in enumerate(sorted(values.items()))
    ]


def decode(payload: bytes) -> list[Reading]:
    return decode_any(payload, topic_site="kg", topic_device="room-1", units=UNITS)


def test_one_poll_is_one_flat_object_with_the_first_seq() -> None:
    readings = poll(41, {"co2": 812, "temperature": 21.5, "humidity": None})
    payload = encode_telemetry_v2(readings)
    body = json.loads(payload)
    V2.validate(body)
    assert body == {
        "v": 2,
        "ts": 1795336215123,
        "seq": 41,
        "values": {"co2": 812, "humidity": None, "temperature": 21.5},
        "quality": {"humidity": "no_value"},
    }
    assert decode(payload) == readings


def test_a_backlog_batch_is_one_message_of_several_polls() -> None:
    first = poll(1, {"co2": 800, "temperature": 21.0})
    second = poll(3, {"co2": 801, "temperature": 21.1}, ts=TS + timedelta(seconds=5), synced=False)
    payload = encode_telemetry_v2(first + second)
    body = json.loads(payload)
    V2.validate(body)
    assert [p["seq"] for p in body["polls"]] == [1, 3]
    assert body["polls"][1]["time_synced"] is False
    assert decode(payload) == first + second


def test_readings_in_any_order_are_still_encoded_exactly() -> None:
    """Not the scheduler's order (a batch boundary, a reordering): more poll objects, never a
    wrong (seq, metric) pair."""
    readings = poll(10, {"co2": 1, "humidity": 2, "status": "ok", "temperature": 3})
    shuffled = readings[:]
    random.Random(7).shuffle(shuffled)
    for order in (shuffled, readings[::-1], readings[1:3]):
        payload = encode_telemetry_v2(order)
        V2.validate(json.loads(payload))
        assert sorted(decode(payload), key=lambda r: r.seq) == sorted(order, key=lambda r: r.seq)


def test_float32_values_are_written_with_their_shortest_float32_text() -> None:
    volts = f32(232.72513)
    assert volts == 232.72512817382812
    readings = poll(1, {"co2": 412.0, "temperature": volts})
    payload = encode_telemetry_v2(readings, float32={"temperature"})
    assert b'"temperature":232.72513' in payload
    assert b'"co2":412.0' in payload  # not a float32 metric: the exact double, as before
    (_, decoded) = decode(payload)
    assert f32(decoded.value) == volts  # type: ignore[arg-type]
    # v1 is left exactly as it was: existing backends see the same text.
    assert b"232.72512817382812" in encode_telemetry("kg", "room-1", readings)


def test_ten_values_of_a_meter_poll_take_at_most_20_bytes_each() -> None:
    values = {"c": 1234567} | {f"v{i}": f32(230 + i / 7) for i in range(1, 10)}
    readings = [
        Reading(device="m", metric=k, value=v, unit="", ts=TS, seq=1_000_000 + i)
        for i, (k, v) in enumerate(sorted(values.items()))
    ]
    payload = encode_telemetry_v2(readings, float32=set(values) - {"c"})
    assert len(payload) / 10 <= 20, payload


f32s = (
    st.integers(min_value=0, max_value=2**32 - 1)
    .map(lambda bits: struct.unpack("<f", struct.pack("<I", bits))[0])
    .filter(math.isfinite)
)


@given(x=f32s)
def test_shortest_float32_reads_back_as_the_same_float32_and_is_shortest(x: float) -> None:
    text = repr(shortest_float32(x))
    assert f32(float(text)) == x
    digits = len(text.lstrip("-").split("e")[0].replace(".", "").strip("0")) or 1
    if digits > 1:  # one digit fewer does not read back
        shorter = float(f"{x:.{digits - 1}g}")
        assert f32(shorter) != x


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)


@given(
    co2=values,
    temperature=values,
    seq=st.integers(min_value=1, max_value=2**62),
    synced=st.booleans(),
)
def test_round_trip_through_the_wire(co2: Any, temperature: Any, seq: int, synced: bool) -> None:
    original = poll(seq, {"co2": co2, "temperature": temperature}, synced=synced)
    payload = encode_telemetry_v2(original)
    V2.validate(json.loads(payload))
    decoded = decode(payload)
    assert decoded == original
    assert [type(r.value) for r in decoded] == [type(r.value) for r in original]


def test_a_metric_without_a_unit_waits_for_the_description() -> None:
    payload = encode_telemetry_v2(poll(1, {"co2": 1}))
    with pytest.raises(UnitsUnknown):
        decode_any(payload, topic_site="kg", topic_device="room-1", units=None)
    with pytest.raises(UnitsUnknown):
        decode_any(payload, topic_site="kg", topic_device="room-1", units={"temperature": "°C"})


GOOD: dict[str, Any] = {"v": 2, "ts": 1, "seq": 1, "values": {"co2": 1}}
BAD_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "extra key": ({**GOOD, "unit": "ppm"}, "unit"),
    "no values": ({**GOOD, "values": {}}, "values"),
    "seq zero": ({**GOOD, "seq": 0}, "seq"),
    "ts as text": ({**GOOD, "ts": "2026-11-22T08:30:15.123Z"}, "ts"),
    "negative ts": ({**GOOD, "ts": -1}, "ts"),
    "unknown quality": ({**GOOD, "quality": {"co2": "meh"}}, "quality"),
    "time_synced true": ({**GOOD, "time_synced": True}, "time_synced"),
    "value as object": ({**GOOD, "values": {"co2": {"a": 1}}}, "values"),
    "polls of one": ({"v": 2, "polls": [{"ts": 1, "seq": 1, "values": {"co2": 1}}]}, "polls"),
    "poll with a version": (
        {"v": 2, "polls": [{**GOOD}, {"ts": 2, "seq": 2, "values": {"co2": 2}}]},
        "v",
    ),
}


@pytest.mark.parametrize("case", BAD_CASES, ids=list(BAD_CASES))
def test_schema_and_decoder_reject_the_same_payloads(case: str) -> None:
    body, field = BAD_CASES[case]
    assert not V2.is_valid(body)
    with pytest.raises(TelemetryError, match=field):
        decode(json.dumps(body).encode())


def test_decoder_rejects_what_json_schema_cannot_see() -> None:
    with pytest.raises(TelemetryError, match="quality names no value"):
        decode(json.dumps({**GOOD, "quality": {"humidity": "no_value"}}).encode())
    with pytest.raises(TelemetryError, match="null value"):
        decode(json.dumps({**GOOD, "values": {"co2": None}}).encode())


def test_device_description_validates_and_round_trips() -> None:
    described = DeviceDescription(
        site="kg",
        device="pv-1",
        driver="sunspec",
        room=None,
        manufacturer="Fronius",
        serial="123",
        metrics={"power": MetricDescription(unit="W", description="AC power")},
    )
    payload = described.encode()
    DEVICE.validate(json.loads(payload))
    assert b"room" not in payload and b"model" not in payload  # unknown fields are left out
    assert decode_device(payload, topic_site="kg", topic_device="pv-1") == described
    assert described.units() == {"power": "W"}
    with pytest.raises(TelemetryError, match="arrived on kg/pv-2"):
        decode_device(payload, topic_site="kg", topic_device="pv-2")
    with pytest.raises(TelemetryError, match="metrics"):
        decode_device(
            b'{"v":2,"site":"kg","device":"pv-1","driver":"x"}',
            topic_site="kg",
            topic_device="pv-1",
        )
