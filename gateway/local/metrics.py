"""``/metrics``: the local status snapshot in the Prometheus text format.

Nothing is counted on the hot path: a scrape takes a `gateway.local.snapshot.Snapshot` and a
custom collector (`SnapshotCollector`) turns it into metric families, so a poll costs the same
whether anyone scrapes or not, and the figures are the ones `gateway status` shows. The families
are listed in docs/operations.md.

``prometheus-client`` is an optional extra (``pip install 'canary-gateway[metrics]'``): it is
imported only here, only when a scrape comes; without it ``/metrics`` answers 503 with `MISSING`,
and `gateway check` says so when ``[local] http`` is set.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

from gateway.local.snapshot import Snapshot

#: What to say when the library is missing (`gateway check`, the start-up log, ``/metrics``).
MISSING = (
    "/metrics needs the optional prometheus-client package: "
    "pip install 'canary-gateway[metrics]' (/healthz and /status work without it)"
)


def available() -> bool:
    """Whether ``prometheus-client`` is installed."""
    return importlib.util.find_spec("prometheus_client") is not None


def render(snapshot: Snapshot) -> tuple[str, bytes]:
    """(content type, body) of the Prometheus text exposition of ``snapshot``."""
    from prometheus_client.exposition import (  # noqa: PLC0415 - optional extra, see above
        CONTENT_TYPE_LATEST,
        generate_latest,
    )

    return str(CONTENT_TYPE_LATEST), bytes(generate_latest(SnapshotCollector(snapshot)))


class SnapshotCollector:
    """A prometheus-client collector (its ``collect`` protocol) over one snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        """The metric families of the snapshot (docs/operations.md)."""
        from prometheus_client.core import (  # noqa: PLC0415 - optional extra, see above
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        snap = self._snapshot
        yield InfoMetricFamily(
            "canary_build",
            "The gateway's version and site.",
            {"version": snap.version, "site": snap.site},
        )
        yield GaugeMetricFamily(
            "canary_uptime_seconds", "Seconds since the daemon started.", snap.uptime_s
        )
        yield GaugeMetricFamily(
            "canary_healthy",
            "1 unless a bus task hangs or the buffer stopped writing.",
            int(snap.health.ok),
        )

        up = GaugeMetricFamily("canary_device_up", "1 while the device answers.", labels=["device"])
        polls = CounterMetricFamily("canary_device_polls", "Successful polls.", labels=["device"])
        errors = CounterMetricFamily(
            "canary_device_errors",
            "Failed polls and opens, by coarse class.",
            labels=["device", "kind"],
        )
        faults = CounterMetricFamily(
            "canary_device_faults",
            "Transport faults by detailed class (also those that did not fail the poll).",
            labels=["device", "fault"],
        )
        no_value = CounterMetricFamily(
            "canary_device_no_value",
            "Readings without a value, by metric.",
            labels=["device", "metric"],
        )
        failures = GaugeMetricFamily(
            "canary_device_consecutive_failures",
            "Failed attempts since the last success.",
            labels=["device"],
        )
        age = GaugeMetricFamily(
            "canary_device_last_poll_age_seconds",
            "Seconds since the last successful poll (absent before the first).",
            labels=["device"],
        )
        value = GaugeMetricFamily(
            "canary_value",
            "The last numeric value of each metric (absent while it has none).",
            labels=["device", "metric", "unit"],
        )
        for device in snap.devices:
            up.add_metric([device.id], int(device.available))
            polls.add_metric([device.id], device.polls)
            failures.add_metric([device.id], device.consecutive_failures)
            if device.last_poll_age_s is not None:
                age.add_metric([device.id], device.last_poll_age_s)
            for kind, count in device.errors.items():
                errors.add_metric([device.id, kind], count)
            for fault, count in device.faults.items():
                faults.add_metric([device.id, fault], count)
            for metric, count in device.no_value.items():
                no_value.add_metric([device.id, metric], count)
            for reading in device.values:
                number = _number(reading.value)
                if number is not None:
                    value.add_metric([device.id, reading.metric, reading.unit], number)
        yield from (up, polls, errors, faults, no_value, failures, age, value)

        progress = GaugeMetricFamily(
            "canary_bus_progress_age_seconds",
            "Seconds since the bus task last got something done.",
            labels=["bus"],
        )
        deadline = GaugeMetricFamily(
            "canary_bus_deadline_remaining_seconds",
            "Seconds left until the bus task must be back in its loop (negative: hung).",
            labels=["bus"],
        )
        for bus in snap.buses:
            progress.add_metric([bus.name], bus.progress_age_s)
            deadline.add_metric([bus.name], bus.deadline_in_s)
        yield from (progress, deadline)

        line = CounterMetricFamily(
            "canary_line_events",
            "A shared line's or endpoint's own counters.",
            labels=["line", "event"],
        )
        for name, counts in snap.lines.items():
            for event, count in counts.items():
                line.add_metric([name, event], count)
        yield line

        yield from _buffer(snap, GaugeMetricFamily, CounterMetricFamily)
        yield from _broker_and_clock(snap, GaugeMetricFamily, CounterMetricFamily)

        alarm = GaugeMetricFamily(
            "canary_alarm_active", "1 per active alarm.", labels=["device", "alarm"]
        )
        for active in snap.alarms:
            alarm.add_metric([active.device, active.name], 1)
        yield alarm


def _buffer(snap: Snapshot, gauge: Any, counter: Any) -> Iterator[Any]:
    buffer = snap.buffer
    if buffer.pending is not None:
        yield gauge(
            "canary_buffer_pending_readings",
            "Readings not yet acknowledged by the broker.",
            buffer.pending,
        )
    yield gauge(
        "canary_buffer_unwritten_readings",
        "Readings only in memory (not yet on the card).",
        buffer.unwritten,
    )
    if buffer.dropped is not None:
        yield counter(
            "canary_buffer_dropped_readings",
            "Readings dropped by the buffer's limits, ever.",
            buffer.dropped,
        )
    yield counter(
        "canary_buffer_unstored_readings",
        "Readings lost because the card refused them.",
        buffer.unstored,
    )
    if buffer.oldest_pending is not None:
        yield gauge(
            "canary_buffer_oldest_pending_age_seconds",
            "Age of the oldest reading not yet acknowledged (by its timestamp).",
            buffer.oldest_pending.age_s,
        )
    yield gauge(
        "canary_buffer_declared_gaps",
        "Ranges of sequence numbers declared lost at start-up.",
        len(buffer.declared_gaps),
    )
    yield gauge(
        "canary_buffer_storage_failing",
        "1 while commits to the card fail.",
        int(buffer.storage_failing),
    )


def _broker_and_clock(snap: Snapshot, gauge: Any, counter: Any) -> Iterator[Any]:
    broker = snap.broker
    yield gauge(
        "canary_broker_connected", "1 while connected to the MQTT broker.", int(broker.connected)
    )
    yield gauge(
        "canary_broker_state_age_seconds",
        "Seconds since the broker link last went up or down.",
        broker.since_s,
    )
    if broker.last_puback_age_s is not None:
        yield gauge(
            "canary_broker_last_puback_age_seconds",
            "Seconds since the last PUBACK.",
            broker.last_puback_age_s,
        )
    yield counter(
        "canary_mqtt_messages_sent",
        "Telemetry messages handed to the broker.",
        broker.messages_sent,
    )
    yield counter(
        "canary_mqtt_messages_acked",
        "Telemetry messages the broker acknowledged.",
        broker.messages_acked,
    )
    yield counter(
        "canary_mqtt_readings_acked", "Readings the broker acknowledged.", broker.readings_acked
    )
    clock = snap.clock
    yield gauge("canary_clock_synced", "1 while the wall clock is trusted.", int(clock.synced))
    yield counter("canary_clock_steps", "Wall-clock steps seen since start.", clock.steps)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None
