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


@dataclass(frozen=True, slots=True)
class PointKey:
    """What identifies a stored reading (site, device, metric, timestamp) and the seq it carries."""

    site: str
    device: str
    metric: str
    ts_ms: int
    seq: int


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
