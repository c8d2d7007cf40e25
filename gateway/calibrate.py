"""``gateway calibrate``: SCD4x forced recalibration and a read-out of its compensation settings.

The command talks to the sensor directly, on the bus the configuration names, in this process.
The gateway daemon must be stopped first (``systemctl stop gateway``): an SCD4x has one state
machine, and a forced recalibration needs three undisturbed minutes of periodic measurement
followed by a stop, which the daemon's own polling would break (and the other way round). There
is no lock between the two processes to enforce this; instead the calibration checks what it can
see: measurements that stop arriving mean somebody else is reading the sensor, and it aborts with
that message. A simulated bus (``tcp://`` served by ``python -m simulators``) works the same way.

Before the recalibration the configured compensation (altitude or ambient pressure, temperature
offset, ASC) is applied exactly as the daemon applies it, so the sensor is recalibrated under the
conditions it will measure in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import adafruit_scd4x

from drivers.sensors.i2c_bus import I2CBus, open_i2c_bus
from drivers.sensors.scd4x_settings import Scd4xSettings, apply_settings, forced_recalibration
from gateway.config import GatewayConfig, Scd4xDevice
from gateway.errors import ConfigError, DeviceError, DeviceTimeout

_T = TypeVar("_T")

DAEMON_NOTICE = (
    "calibrate talks to the sensor directly: stop the gateway daemon first"
    " (systemctl stop gateway), and start it again afterwards"
)


def find_scd4x(config: GatewayConfig, device_id: str, *, source: str) -> Scd4xDevice:
    """The SCD4x device ``device_id`` of ``config``; `ConfigError` naming the candidates if none."""
    candidates = [d for d in config.devices if isinstance(d, Scd4xDevice)]
    for device in candidates:
        if device.id == device_id:
            return device
    known = ", ".join(d.id for d in candidates) or "none"
    raise ConfigError(f"{source}: no scd4x device {device_id!r} (scd4x devices: {known})")


def settings_of(device: Scd4xDevice) -> Scd4xSettings:
    """The compensation settings a device's configuration asks for."""
    return Scd4xSettings(
        self_calibration=device.self_calibration,
        altitude_m=device.altitude_m,
        ambient_pressure_hpa=device.ambient_pressure_hpa,
        temperature_offset_c=device.temperature_offset_c,
    )


def recalibrate_co2(
    device: Scd4xDevice,
    target_ppm: int,
    *,
    out: Callable[[str], None] = print,
    measure_s: float = 180.0,
    stable_ppm: float = 50.0,
    bus: I2CBus | None = None,
) -> int:
    """Apply the configured compensation, then run the datasheet's FRC; return the correction.

    Blocks for ``measure_s`` seconds (at least the datasheet's 3 minutes) and prints every
    measurement through ``out``. Raises a `DeviceError` (`CalibrationError` when a precondition
    failed or the chip refused).
    """

    def body(sensor: Any) -> int:
        applied = apply_settings(sensor, settings_of(device))
        if applied.changed:
            out(f"{device.id}: applied {', '.join(applied.changed)} from the configuration")
        out(f"{device.id}: measuring for {measure_s:.0f} s in air of {target_ppm} ppm CO2 ...")
        return forced_recalibration(
            sensor,
            target_ppm,
            measure_s=measure_s,
            stable_ppm=stable_ppm,
            sleep=time.sleep,
            clock=time.monotonic,
            progress=lambda co2, left: out(f"  co2 = {co2} ppm  ({left:.0f} s to go)"),
        )

    return _with_sensor(device, body, bus=bus)


def read_settings(device: Scd4xDevice, *, bus: I2CBus | None = None) -> dict[str, object]:
    """The chip's current compensation settings (what ``gateway calibrate show`` prints)."""

    def body(sensor: Any) -> dict[str, object]:
        return {
            "self_calibration": bool(sensor.self_calibration_enabled),
            "altitude_m": int(sensor.altitude),
            "ambient_pressure_hpa": int(sensor.ambient_pressure),
            "temperature_offset_c": round(float(sensor.temperature_offset), 2),
        }

    return _with_sensor(device, body, bus=bus)


def _with_sensor(device: Scd4xDevice, body: Callable[[Any], _T], *, bus: I2CBus | None) -> _T:
    own = bus is None
    i2c = open_i2c_bus(device.bus) if bus is None else bus
    try:
        try:
            sensor = adafruit_scd4x.SCD4X(i2c, device.address)  # stops any measurement
        except ValueError as exc:
            raise DeviceTimeout(f"{device.id}: no SCD4x answers on {device.bus}") from exc
        return body(sensor)
    except RuntimeError as exc:  # adafruit_scd4x: NACK (cause OSError) or CRC mismatch
        raise DeviceError(f"{device.id}: {exc}") from exc
    except OSError as exc:
        raise DeviceTimeout(f"{device.id}: I2C transfer failed: {exc}") from exc
    finally:
        if own:
            i2c.deinit()
