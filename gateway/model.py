"""The one record that flows from a driver to every sink.

Drivers return plain values keyed by metric; the scheduler wraps each value into a `Reading`
with the wall-clock time of the poll and a per-gateway sequence number. Sinks, the buffer and the
bridge see nothing else, and dictionaries appear only where a payload is serialised.

This module and `gateway.errors` are the shared kernel: `drivers/` and `simulators/` may import
them, nothing else from `gateway/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

#: What a driver may report for one metric. ``None`` means "no value": the device answered but the
#: quantity is unavailable (a sentinel such as 0x8000, a sensor still warming up). It is never a
#: stand-in for a number.
Value = float | int | bool | str | None


class Quality(StrEnum):
    """How far a reading's value can be trusted; serialised as its string value."""

    GOOD = "good"
    #: The device answered but had no valid value for this metric (sentinel, warm-up, NaN).
    NO_VALUE = "no_value"


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec:
    """A metric a driver can report: its key, its unit (UCUM-like short form) and a description.

    ``float32`` says that every value is exactly a float32 (an unscaled float32 register): the
    wire may then write it with the shortest text that reads back as the same float32
    (``232.72513``, not ``232.72512817382812``), exact to the device's own precision. The value
    itself stays the exact float32, so nothing below the encoder needs to know.
    """

    key: str
    unit: str
    description: str = ""
    float32: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """One value of one metric of one device at one moment.

    ``ts`` is the wall-clock time of the poll, timezone-aware UTC, rounded to the millisecond so
    that it survives the buffer and the wire unchanged. ``seq`` is unique and strictly increasing
    per gateway, across restarts: the durable buffer owns the high-water mark, which is what lets
    a consumer prove that nothing is missing. ``time_synced`` is False when the wall clock was not
    known to be right at the poll and the reading could not be re-stamped since (see
    `gateway.clock`).
    """

    device: str
    metric: str
    value: Value
    unit: str
    ts: datetime
    seq: int
    quality: Quality = Quality.GOOD
    time_synced: bool = True


def utc_ms(ts: datetime) -> datetime:
    """Return ``ts`` converted to UTC and truncated to whole milliseconds."""
    ts = ts.astimezone(UTC)
    return ts.replace(microsecond=ts.microsecond - ts.microsecond % 1000)


def to_epoch_ms(ts: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime (exact for `utc_ms` values)."""
    delta = ts.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_epoch_ms(ms: int) -> datetime:
    """Inverse of `to_epoch_ms`."""
    return utc_ms(datetime.fromtimestamp(ms / 1000, tz=UTC))


def iso_ms(ts: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a ``Z`` suffix, the form used on the wire."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
