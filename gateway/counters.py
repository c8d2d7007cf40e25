"""The counters published with the gateway status (documented in docs/mqtt.md, "Status").

One function builds them from what the scheduler and the transports keep, so that the periodic
``online`` status and the final counters of the clean-stop ``offline`` status are the same
document. Per device: availability, successful polls, failed polls per coarse class
(``errors``), transport faults per detailed class (``faults``, including faults that did not fail
the poll), readings without a value; per shared transport (``lines``): its own totals.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from drivers.base import ReportsCounters, ReportsFaults
from gateway.scheduler import DeviceState


def device_counters(state: DeviceState) -> dict[str, Any]:
    """One device's entry under ``devices``."""
    driver = state.driver
    faults = driver.faults() if isinstance(driver, ReportsFaults) else {}
    return {
        "available": state.available,
        "polls": state.polls,
        "errors": dict(sorted(state.errors.items())),
        "faults": {k: v for k, v in sorted(faults.items()) if v},
        "no_value": dict(sorted(state.no_values.items())),
    }


def line_counters(buses: Iterable[object]) -> dict[str, dict[str, int]]:
    """``lines``: every shared transport that keeps counters, keyed by its name."""
    return {
        bus.name: dict(sorted(bus.counters().items()))
        for bus in buses
        if isinstance(bus, ReportsCounters)
    }


def status_details(
    *,
    devices: Iterable[DeviceState],
    buses: Iterable[object],
    pending: int,
    dropped: int,
    unstored: int,
    recovered_from: Path | None,
    declared: Iterable[tuple[int, int]] = (),
    unreserved: int = 0,
) -> dict[str, Any]:
    """The whole counter document merged into the status payload."""
    return {
        "buffer": {
            "pending": pending,
            "dropped": dropped,
            "unstored": unstored,
            "recovered_from": str(recovered_from) if recovered_from else None,
            "declared_lost": [list(gap) for gap in declared],
            "unreserved": unreserved,
        },
        "devices": {state.id: device_counters(state) for state in devices},
        "lines": line_counters(buses),
    }
