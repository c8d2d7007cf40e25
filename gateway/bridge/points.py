"""How a reading becomes a time-series point.

One point per reading: measurement = metric key, tags = site, device, unit; fields ``value`` (absent
for a "no value" reading) and ``seq``; time = the reading's own timestamp in milliseconds. In stores
that flatten fields (VictoriaMetrics) this gives series ``<metric>_value`` and ``<metric>_seq``.

Why ``seq`` is stored: it lets anyone prove from the store alone that no reading is missing. Why a
reading's series and timestamp identify it: replaying a message (after a crash, or through a second
bridge) overwrites the same point instead of adding one, so duplicates are harmless.
"""

from __future__ import annotations

from collections.abc import Iterable

from influxdb_client import Point, WritePrecision

from gateway.model import Reading, to_epoch_ms


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
