"""SCD4x compensation settings and forced recalibration, on an ``adafruit_scd4x.SCD4X`` object.

Blocking functions for a worker thread (the daemon) or a plain process (the CLI); each expects the
chip idle, which the ``SCD4X`` constructor guarantees (it always stops a periodic measurement).

EEPROM wear: automatic self-calibration (ASC), sensor altitude and temperature offset live in RAM
and survive a power cycle only after ``persist_settings``, which writes the EEPROM (the datasheet
guarantees 2000 write cycles). `apply_settings` therefore first reloads the persisted values
(``reinit``), compares each wanted setting with what the chip reports, writes only the ones that
differ and persists only if one did: a gateway that restarts every day with an unchanged
configuration never writes the EEPROM. Ambient pressure is RAM-only (the datasheet expects it to
be updated while measuring), so it is simply set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import DeviceError

logger = logging.getLogger(__name__)

#: The datasheet's precondition for a forced recalibration: measure for at least 3 minutes.
FRC_MIN_MEASURE_S = 180.0
#: A measurement comes every 5 s; this long without one means somebody else reads the sensor.
_SILENCE_S = 15.0


class CalibrationError(DeviceError):
    """A calibration could not be done; the message says which precondition failed."""

    kind = "calibration"


@dataclass(frozen=True, slots=True, kw_only=True)
class Scd4xSettings:
    """Wanted compensation settings; ``None`` leaves a setting as the chip has it.

    ``altitude_m`` and ``ambient_pressure_hpa`` are alternatives: a set pressure overrides the
    altitude inside the chip, so the configuration accepts only one of them.
    """

    self_calibration: bool | None = None
    altitude_m: int | None = None
    ambient_pressure_hpa: int | None = None
    temperature_offset_c: float | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """What `apply_settings` did: the EEPROM settings it changed, and whether it persisted them."""

    changed: tuple[str, ...]
    persisted: bool


def offset_word(offset_c: float) -> int:
    """The temperature-offset word for ``offset_c``, rounded exactly as ``adafruit_scd4x`` does."""
    return int(offset_c * 65535 / 175)


def apply_settings(sensor: Any, settings: Scd4xSettings, *, persist: bool = True) -> Applied:
    """Bring the idle chip to ``settings``, writing and persisting only what differs.

    ``persist=False`` sets changed values in RAM only (the caller's EEPROM write budget is spent).
    Raises what the Adafruit driver raises (``RuntimeError``/``OSError``).
    """
    changed: list[str] = []
    if any(
        v is not None
        for v in (settings.self_calibration, settings.altitude_m, settings.temperature_offset_c)
    ):
        sensor.reinit()  # compare against the persisted values, not a previous run's RAM
    asc = settings.self_calibration
    if asc is not None and bool(sensor.self_calibration_enabled) != asc:
        sensor.self_calibration_enabled = asc
        changed.append("self_calibration")
    if settings.altitude_m is not None and int(sensor.altitude) != settings.altitude_m:
        sensor.altitude = settings.altitude_m
        changed.append("altitude_m")
    if settings.temperature_offset_c is not None:
        want = offset_word(settings.temperature_offset_c)
        if round(float(sensor.temperature_offset) * 65535 / 175) != want:
            sensor.temperature_offset = settings.temperature_offset_c
            changed.append("temperature_offset_c")
    persisted = bool(changed) and persist
    if persisted:
        sensor.persist_settings()
    if settings.ambient_pressure_hpa is not None:
        sensor.ambient_pressure = settings.ambient_pressure_hpa
    return Applied(changed=tuple(changed), persisted=persisted)


def forced_recalibration(
    sensor: Any,
    target_ppm: int,
    *,
    measure_s: float = FRC_MIN_MEASURE_S,
    stable_ppm: float = 50.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[int, float], None] = lambda co2, remaining: None,
) -> int:
    """Run the datasheet's forced recalibration (FRC) and return the correction in ppm.

    The sensor must sit in air of a known, stable CO2 concentration (``target_ppm``; outdoor air
    is about 420 ppm). The datasheet's sequence, each step checked:

    1. periodic measurement for at least 3 minutes (``measure_s``, never less than 180 s), every
       measurement reported through ``progress(co2, seconds_remaining)``;
    2. the CO2 of the last minute must vary by at most ``stable_ppm``; otherwise the reference is
       not what the sensor breathes, and the FRC would bake the error in;
    3. stop periodic measurement, wait 500 ms, send ``perform_forced_recalibration`` (0x362F with
       the target and its CRC), wait, read the result: 0xFFFF means the chip refused.

    Raises `CalibrationError` for a refused FRC, an unstable reading, or measurements that stop
    arriving (another process, such as a running gateway daemon, is using the sensor). The chip
    is left idle; the gateway restarts the measurement when it opens the device.
    """
    if measure_s < FRC_MIN_MEASURE_S:
        raise ValueError(f"the datasheet requires >= {FRC_MIN_MEASURE_S:.0f} s of measurement")
    samples: list[tuple[float, int]] = []
    sensor.start_periodic_measurement()
    try:
        start = last = clock()
        while (elapsed := clock() - start) < measure_s:
            sleep(1.0)
            if sensor.data_ready:
                co2 = int(sensor.CO2)
                last = clock()
                samples.append((last, co2))
                progress(co2, max(0.0, measure_s - (last - start)))
            elif clock() - last > _SILENCE_S:
                raise CalibrationError(
                    f"no measurement for {_SILENCE_S:.0f} s after {elapsed:.0f} s: another process"
                    " is using the sensor (stop the gateway daemon first: systemctl stop gateway)"
                )
    except BaseException:
        sensor.stop_periodic_measurement()
        raise
    recent = [co2 for t, co2 in samples if t >= clock() - 60.0]
    if not recent or max(recent) - min(recent) > stable_ppm:
        sensor.stop_periodic_measurement()
        spread = f"{min(recent)}-{max(recent)} ppm" if recent else "no readings"
        raise CalibrationError(
            f"CO2 not stable in the last minute ({spread}, allowed spread {stable_ppm:.0f} ppm);"
            " ventilate, keep people away from the sensor and try again"
        )
    try:
        correction: int = sensor.force_calibration(target_ppm)  # stop, 500 ms, FRC, read
    except RuntimeError as exc:
        if "recalibration failed" not in str(exc):
            raise  # a NACK or a CRC error on the way, not the chip's verdict
        raise CalibrationError(
            f"the sensor refused the forced recalibration (result 0xFFFF): {exc}"
        ) from exc
    logger.info("forced recalibration to %d ppm: correction %+d ppm", target_ppm, correction)
    return correction
