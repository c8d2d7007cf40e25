"""How a reading becomes a time-series point, and what identifies it in the store.

One point per reading: measurement = metric key, tags = site, device, unit; fields ``value`` (absent
for a "no value" reading) and ``seq``; time = the reading's own timestamp in milliseconds. In stores
that flatten fields (VictoriaMetrics) this gives series ``<metric>_value`` and ``<metric>_seq``.

Why ``seq`` is stored: it lets anyone prove from the store alone that no reading is missing. Why a
reading's series and timestamp identify it: a replayed message (after a crash, a reconnect, or a
store restart) carries the same series and timestamps, so a store that deduplicates identical
timestamps (VictoriaMetrics with ``-dedup.minScrapeInterval=1ms``, InfluxDB always) keeps it once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from influxdb_client import Point, WritePrecision

from gateway.model import Reading, to_epoch_ms
from gateway.telemetry import GapEvent


@dataclass(frozen=True, slots=True)
class PointKey:
    """What identifies a stored point (site, device, measurement, timestamp) and the sequence
    number it carries in ``field`` (``seq`` for a reading, ``first`` for a declared gap)."""

    site: str
    device: str
    metric: str
    ts_ms: int
    seq: int
    field: str = "seq"


#: A declared gap (gateway/schema/gap.json) is stored as measurement ``gap`` of device ``gateway``
#: with fields ``first`` and ``last`` (VictoriaMetrics: ``gap_first``, ``gap_last``) and tag
#: ``reason``, at the time it was declared: not a reading, so it has no ``seq`` field and no
#: completeness check over ``*_seq`` series ever counts it.
GAP_MEASUREMENT = "gap"
GAP_DEVICE = "gateway"


def gap_point(site: str, event: GapEvent) -> Point:
    """The point that records ``event`` of ``site``."""
    return (
        Point(GAP_MEASUREMENT)
        .tag("site", site)
        .tag("device", GAP_DEVICE)
        .tag("reason", event.reason)
        .field("first", event.from_seq)
        .field("last", event.to_seq)
        .time(event.ts_ms, WritePrecision.MS)
    )


def gap_key(site: str, event: GapEvent) -> PointKey:
    """The key under which `gap_point` stores ``event``."""
    return PointKey(site, GAP_DEVICE, GAP_MEASUREMENT, event.ts_ms, event.from_seq, field="first")


def to_points(site: str, readings: Iterable[Reading]) -> list[Point]:
    """Points for ``readings`` of ``site``; see the module docstring for the mapping."""
    points = []
    for r in readings:
        point = (
            Point(r.metric)
            .tag("site", site)
            .tag("device", r.device)
            .tag("unit", r.unit)
            .field("seq", r.seq)
            .time(to_epoch_ms(r.ts), WritePrecision.MS)
        )
        if r.value is not None:
            point.field(
                "value",
                float(r.value)
                if isinstance(r.value, int | float) and not isinstance(r.value, bool)
                else r.value,
            )
        points.append(point)
    return points


def point_keys(site: str, readings: Iterable[Reading]) -> list[PointKey]:
    """The keys under which `to_points` stores ``readings`` of ``site``."""
    return [PointKey(site, r.device, r.metric, to_epoch_ms(r.ts), r.seq) for r in readings]
