"""The MQTT payload contract: what the gateway sends validates against the published JSON Schema,
and what the bridge accepts is exactly what the schema accepts (for the cases below)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import Quality, Reading, utc_ms
from gateway.telemetry import (
    TelemetryError,
    decode_telemetry,
    encode_status,
    encode_telemetry,
    status_topic,
    telemetry_filter,
    telemetry_topic,
)

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "gateway" / "schema" / "telemetry.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
TS = utc_ms(datetime(2026, 11, 22, 8, 30, 15, 123456, tzinfo=UTC))


def reading(seq: int, value: Any = 812, metric: str = "co2", unit: str = "ppm") -> Reading:
    quality = Quality.GOOD if value is not None else Quality.NO_VALUE
    return Reading(
        device="room-1", metric=metric, value=value, unit=unit, ts=TS, seq=seq, quality=quality
    )


def test_topics() -> None:
    assert telemetry_topic("canary", "kg", "room-1") == "canary/kg/telemetry/room-1"
    assert status_topic("canary", "kg") == "canary/kg/status"
    assert telemetry_filter("city/schools") == "city/schools/+/telemetry/+"


def test_encoded_message_matches_schema_and_documented_shape() -> None:
    payload = encode_telemetry("kg", "room-1", [reading(7), reading(8, 21.5, "temperature", "°C")])
    body = json.loads(payload)
    VALIDATOR.validate(body)
    assert body == {
        "v": 1,
        "site": "kg",
        "device": "room-1",
        "readings": [
            {
                "metric": "co2",
                "value": 812,
                "unit": "ppm",
                "ts": "2026-11-22T08:30:15.123Z",
                "seq": 7,
                "quality": "good",
            },
            {
                "metric": "temperature",
                "value": 21.5,
                "unit": "°C",
                "ts": "2026-11-22T08:30:15.123Z",
                "seq": 8,
                "quality": "good",
            },
        ],
    }


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)


@given(value=values, seq=st.integers(min_value=1, max_value=2**62))
def test_round_trip_through_the_wire(value: Any, seq: int) -> None:
    original = reading(seq, value)
    payload = encode_telemetry("kg", "room-1", [original])
    VALIDATOR.validate(json.loads(payload))
    (decoded,) = decode_telemetry(payload, topic_site="kg", topic_device="room-1")
    assert decoded == original
    assert type(decoded.value) is type(original.value)


def test_status_payload() -> None:
    body = json.loads(encode_status("kg", "offline", version="1.2.3", ts=TS))
    assert body == {
        "v": 1,
        "site": "kg",
        "state": "offline",
        "version": "1.2.3",
        "ts": "2026-11-22T08:30:15.123Z",
    }


GOOD: dict[str, Any] = {
    "v": 1,
    "site": "kg",
    "device": "room-1",
    "readings": [
        {
            "metric": "co2",
            "value": 800,
            "unit": "ppm",
            "ts": "2026-11-22T08:30:15.123Z",
            "seq": 1,
            "quality": "good",
        }
    ],
}


def _bad(**changes: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("r_"):
            body["readings"][0][key[2:]] = value
        else:
            body[key] = value
    return body


BAD_CASES = {
    "wrong version": (_bad(v=2), "v"),
    "extra key": (_bad(extra=1), "extra"),
    "no readings": (_bad(readings=[]), "readings"),
    "seq zero": (_bad(r_seq=0), "seq"),
    "seq as text": (_bad(r_seq="1"), "seq"),
    "unknown quality": (_bad(r_quality="meh"), "quality"),
    "value as object": (_bad(r_value={"a": 1}), "value"),
    "bad device id": (_bad(device="Room 1"), "device"),
}


@pytest.mark.parametrize("case", BAD_CASES, ids=list(BAD_CASES))
def test_schema_and_decoder_reject_the_same_payloads(case: str) -> None:
    body, field = BAD_CASES[case]
    assert not VALIDATOR.is_valid(body)
    device = body["device"] if isinstance(body["device"], str) else "room-1"
    with pytest.raises(TelemetryError, match=field):
        decode_telemetry(json.dumps(body).encode(), topic_site="kg", topic_device=device)


def test_decoder_rejects_what_json_schema_cannot_see() -> None:
    with pytest.raises(TelemetryError, match="not JSON"):
        decode_telemetry(b"\xff{", topic_site="kg", topic_device="room-1")
    with pytest.raises(TelemetryError, match="arrived on kg/room-2"):
        decode_telemetry(json.dumps(GOOD).encode(), topic_site="kg", topic_device="room-2")
    local_time = _bad(r_ts="2026-11-22T08:30:15.123+01:00")
    with pytest.raises(TelemetryError, match="UTC"):
        decode_telemetry(json.dumps(local_time).encode(), topic_site="kg", topic_device="room-1")
    nonsense = _bad(r_ts="yesterdayZ")
    with pytest.raises(TelemetryError, match="RFC 3339"):
        decode_telemetry(json.dumps(nonsense).encode(), topic_site="kg", topic_device="room-1")
