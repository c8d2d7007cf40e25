"""Sensirion SCD4x (CO2, temperature, humidity) through the unmodified ``adafruit_scd4x`` driver.

The Adafruit driver is blocking and sleeps in ``time.sleep`` (0.5 s in its constructor, which
always stops a running periodic measurement), so every call into it runs in a worker thread;
waiting for the next measurement is an ``asyncio.sleep`` on the loop. The sensor measures on
its own schedule (every 5 s, or 30 s in low-power mode) and a poll returns the newest one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import adafruit_scd4x

from drivers.sensors.i2c_bus import I2CBus
from drivers.sensors.scd4x_settings import Scd4xSettings, apply_settings
from drivers.sensors.stuck import StuckDetector
from gateway.errors import DecodeError, DeviceError, DeviceNotReady, DeviceTimeout
from gateway.model import MetricSpec, Value

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How often `Scd4xDriver.poll` asks the sensor whether a new measurement is ready.
_READY_POLL_S = 0.2

_METRICS: Mapping[str, MetricSpec] = MappingProxyType(
    {
        "co2": MetricSpec(key="co2", unit="ppm", description="CO2 concentration"),
        "temperature": MetricSpec(key="temperature", unit="°C", description="air temperature"),
        "humidity": MetricSpec(key="humidity", unit="%RH", description="relative humidity"),
    }
)


def _read_measurement(sensor: Any) -> tuple[int, float, float]:
    """One read_measurement command (0xEC05) through the Adafruit driver: CO2, T, RH.

    ``adafruit_scd4x``'s public ``CO2``/``temperature``/``relative_humidity`` properties each send
    their own get_data_ready_status first, so reading all three costs three extra I2C
    transactions per poll, and a measurement landing between two of them would mix two
    measurements in one reading. Its ``_read_data`` sends read_measurement once, checks the three
    CRCs and converts with the datasheet formulas into ``_co2``/``_temperature``/
    ``_relative_humidity``. Those four private names are the least fragile way to one command:
    the alternative (``_send_command`` + ``_read_reply`` + the module's command constant + our
    own conversion) leans on more private names and duplicates the conversion. They are the
    same from 1.0.0 to 1.4.13; the command-counting test fails loudly if a release renames them.
    """
    sensor._read_data()
    return (
        int(sensor._co2),
        float(sensor._temperature),
        float(sensor._relative_humidity),
    )


class Scd4xDriver:
    """A `drivers.base.Driver` for one SCD40/41/43 on an injected `I2CBus`.

    ``open`` probes the address (absent or silent chip: `DeviceTimeout`) and starts the periodic
    measurement (``low_power``: one every 30 s instead of 5 s). ``poll`` returns a measurement it
    has not returned yet: ``co2`` (int, ppm), ``temperature`` (°C) and ``humidity`` (%RH), both to
    2 decimals; while there is none it raises `DeviceNotReady` at once (never holding the bus),
    and after ``data_timeout`` seconds without one `DeviceTimeout`. In low-power mode give
    ``data_timeout`` more than 30 s.

    ``settings`` (compensation: ASC, altitude or ambient pressure, temperature offset) are applied
    at every ``open`` by `drivers.sensors.scd4x_settings.apply_settings`, which writes and
    persists only what differs from the chip's EEPROM; at most ``max_persists`` EEPROM writes per
    driver instance (a chip that forgets its settings must not be written on every reopen), after
    which changes are set in RAM only, with a warning. `eeprom_writes` counts them.

    Errors: a NACK or a socket failure is `DeviceTimeout`, a CRC mismatch is `DecodeError`, and
    the same raw measurement ``stuck_polls`` times in a row is
    `gateway.errors.DeviceStuck` (0 disables the check).
    The bus belongs to the caller (other sensors may share it): ``close`` stops the measurement,
    which the chip keeps running otherwise, and leaves the bus open.
    """

    def __init__(
        self,
        *,
        bus: I2CBus,
        address: int = 0x62,
        data_timeout: float = 6.0,
        low_power: bool = False,
        settings: Scd4xSettings | None = None,
        stuck_polls: int = 0,
        max_persists: int = 3,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._monotonic = monotonic
        self._last_data = monotonic()
        self._address = address
        self._data_timeout = data_timeout
        self._low_power = low_power
        self._settings = settings
        self._max_persists = max_persists
        self._sensor: Any = None
        self._name = f"scd4x@{address:#04x}"
        self._stuck = StuckDetector(limit=stuck_polls, name=self._name)
        self.eeprom_writes = 0

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        """``co2`` (ppm), ``temperature`` (°C) and ``humidity`` (%RH)."""
        return _METRICS

    async def open(self) -> None:
        """Probe the chip, stop whatever it was doing and start the periodic measurement."""
        self._sensor = None
        self._stuck.reset()
        try:
            self._sensor = await self._call(self._start)
        except ValueError as exc:  # adafruit_bus_device's probe: nothing acknowledged
            raise DeviceTimeout(f"{self._name}: no device answers ({exc})") from exc
        self._last_data = self._monotonic()  # the first measurement is due one period from now
        logger.info("%s: periodic measurement started (low power: %s)", self._name, self._low_power)

    async def poll(self) -> Mapping[str, Value]:
        """Return the newest measurement; `DeviceNotReady` while there is none yet.

        Exactly one data-ready check per call, so that waiting for the next measurement never
        holds a shared bus, and when data is ready exactly one read_measurement, so that CO2,
        temperature and humidity are one measurement (`_read_measurement`). No new data for
        ``data_timeout`` seconds (since the last measurement or the open) is a `DeviceTimeout`.
        """
        sensor = self._sensor
        if sensor is None:
            raise DeviceError(f"{self._name}: poll() before a successful open()")
        if not await self._call(lambda: bool(sensor.data_ready)):
            waited = self._monotonic() - self._last_data
            if waited > self._data_timeout:
                raise DeviceTimeout(f"{self._name}: no new data within {self._data_timeout} s")
            raise DeviceNotReady(f"{self._name}: no new measurement yet", retry_after=_READY_POLL_S)
        co2, temperature, humidity = await self._call(lambda: _read_measurement(sensor))
        self._last_data = self._monotonic()
        self._stuck.check((co2, temperature, humidity))  # raw: exact functions of the words
        return {
            "co2": int(co2),
            "temperature": round(float(temperature), 2),
            "humidity": round(float(humidity), 2),
        }

    async def close(self) -> None:
        """Stop the periodic measurement, best effort; never raises."""
        sensor, self._sensor = self._sensor, None
        if sensor is None:
            return
        try:
            await asyncio.to_thread(sensor.stop_periodic_measurement)
        except (OSError, RuntimeError) as exc:
            logger.debug("%s: stop on close failed: %s", self._name, exc)

    def _start(self) -> Any:
        sensor = adafruit_scd4x.SCD4X(self._bus, self._address)
        if self._settings is not None:
            self._apply(sensor, self._settings)
        if self._low_power:
            sensor.start_low_periodic_measurement()
        else:
            sensor.start_periodic_measurement()
        return sensor

    def _apply(self, sensor: Any, settings: Scd4xSettings) -> None:
        budget = self.eeprom_writes < self._max_persists
        applied = apply_settings(sensor, settings, persist=budget)
        if applied.persisted:
            self.eeprom_writes += 1
            logger.info("%s: persisted changed settings %s", self._name, ", ".join(applied.changed))
        elif applied.changed:
            logger.warning(
                "%s: settings %s differ from the EEPROM again after %d writes; set in RAM only",
                self._name,
                ", ".join(applied.changed),
                self.eeprom_writes,
            )

    async def _call(self, fn: Callable[[], _T]) -> _T:
        """Run a blocking driver call in a worker thread, mapping its errors to `DeviceError`s."""
        try:
            return await asyncio.to_thread(fn)
        except RuntimeError as exc:
            # adafruit_scd4x wraps a NACKed command write in RuntimeError (cause: the OSError)
            # and reports a CRC mismatch as a bare RuntimeError.
            if isinstance(exc.__cause__, OSError):
                raise DeviceTimeout(f"{self._name}: command not acknowledged") from exc
            raise DecodeError(f"{self._name}: {exc}") from exc
        except OSError as exc:
            raise DeviceTimeout(f"{self._name}: I2C transfer failed: {exc}") from exc
