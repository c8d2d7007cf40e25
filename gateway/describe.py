"""What the retained device description topic says about each configured device.

Built from the configuration (driver, room) and from each driver's current metrics and identity
(a SunSpec device knows its metrics, manufacturer, model, serial and firmware only after it was
opened), so it is built again whenever it may have changed; the publisher sends only what did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from drivers.base import Driver
from gateway.config import GatewayConfig
from gateway.telemetry import DeviceDescription, MetricDescription

#: SunSpec model 1 (common) point -> description field.
_IDENTITY = {"Mn": "manufacturer", "Md": "model", "SN": "serial", "Vr": "firmware"}


@dataclass(frozen=True, slots=True)
class Described:
    """A device's description, and the metrics whose values are float32 registers' (for the
    encoder: `gateway.telemetry.encode_telemetry_v2`), which is not part of the wire."""

    description: DeviceDescription
    float32: frozenset[str]


def describe(config: GatewayConfig, drivers: Iterable[tuple[str, Driver]]) -> dict[str, Described]:
    """The description of every device in ``drivers`` (device id, its driver)."""
    kinds = {d.id: d.driver for d in config.devices}
    rooms = {device: room.id for room in config.status.rooms for device in room.devices}
    out: dict[str, Described] = {}
    for device, driver in drivers:
        metrics = driver.metrics
        identity: Mapping[str, object] = getattr(driver, "identity", None) or {}
        extra = {
            field: str(value).strip()
            for point, field in _IDENTITY.items()
            if (value := identity.get(point)) is not None and str(value).strip()
        }
        description = DeviceDescription(
            site=config.site.id,
            device=device,
            driver=kinds.get(device, "unknown"),
            room=rooms.get(device),
            metrics={
                key: MetricDescription(unit=spec.unit, description=spec.description)
                for key, spec in sorted(metrics.items())
            },
            manufacturer=extra.get("manufacturer"),
            model=extra.get("model"),
            serial=extra.get("serial"),
            firmware=extra.get("firmware"),
        )
        out[device] = Described(
            description, frozenset(k for k, spec in metrics.items() if spec.float32)
        )
    return out
