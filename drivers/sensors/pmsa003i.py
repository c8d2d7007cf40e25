"""Plantower PMSA003I (PM1, PM2.5, PM10, particle counts) through the unmodified ``adafruit_pm25``.

Which concentrations: the frame carries two sets. Plantower's datasheet defines the "CF=1,
standard particle" values with industrial metal dust as the reference particle ("for industrial
production workshops") and the "atmospheric environment" values with the main pollutants of
ambient air ("for ordinary indoor and outdoor atmospheric environments"). A kindergarten room is
the latter, so ``pm1``/``pm25``/``pm10`` are the atmospheric values; they are also what WHO-style
thresholds are usually compared against by low-cost monitors (AirGradient, aqicn.org). The CF=1
values are published too (``*_cf1``), because the widely used US EPA correction for Plantower
sensors is fitted on CF=1 data; a backend can apply it. (``adafruit_pm25``'s docstring calls the
CF=1 set "corrected to standard conditions"; the datasheet does not say so.) Both sets are equal
below about 30 µg/m³.

Warm-up: the chip needs 30 s after power-on or wake before its data is stable, and its frames do
not say whether they are (see ``simulators/pmsa003i.py``). The driver therefore counts from the
moment it opened the chip, on an injected monotonic clock: a gateway starts together with the
sensor at boot, and a chip that browned out NACKs, which makes the scheduler reopen the driver
and so restart the warm-up. During warm-up a poll still reads and checks a frame (so a dead chip
shows up at once) but returns ``None`` for every metric: published as "no value", never as the
fan's half-speed numbers. Warm-up is expected behaviour, not an error, so it is not counted as one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from adafruit_bus_device.i2c_device import I2CDevice  # type: ignore[import-untyped]
from adafruit_pm25.i2c import PM25_I2C

from drivers.sensors.i2c_bus import I2CBus
from drivers.sensors.stuck import StuckDetector
from gateway.errors import DecodeError, DeviceError, DeviceTimeout
from gateway.model import MetricSpec, Value

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: The datasheet's minimum time from power-on / wake-up to stable data, in seconds.
WARMUP_S = 30.0

_MASS = "µg/m³"
_COUNT = "/dL"  # particles per 0.1 L of air (one decilitre), as the frame reports them

#: metric key -> (``adafruit_pm25`` reading key, unit, description), in frame order.
_FIELDS: Mapping[str, tuple[str, str, str]] = MappingProxyType(
    {
        "pm1": ("pm10 env", _MASS, "PM1.0 mass concentration (atmospheric environment)"),
        "pm25": ("pm25 env", _MASS, "PM2.5 mass concentration (atmospheric environment)"),
        "pm10": ("pm100 env", _MASS, "PM10 mass concentration (atmospheric environment)"),
        "pm1_cf1": ("pm10 standard", _MASS, "PM1.0 mass concentration (CF=1)"),
        "pm25_cf1": ("pm25 standard", _MASS, "PM2.5 mass concentration (CF=1)"),
        "pm10_cf1": ("pm100 standard", _MASS, "PM10 mass concentration (CF=1)"),
        "particles_03um": ("particles 03um", _COUNT, "particles > 0.3 µm per 0.1 L"),
        "particles_05um": ("particles 05um", _COUNT, "particles > 0.5 µm per 0.1 L"),
        "particles_10um": ("particles 10um", _COUNT, "particles > 1.0 µm per 0.1 L"),
        "particles_25um": ("particles 25um", _COUNT, "particles > 2.5 µm per 0.1 L"),
        "particles_50um": ("particles 50um", _COUNT, "particles > 5.0 µm per 0.1 L"),
        "particles_100um": ("particles 100um", _COUNT, "particles > 10 µm per 0.1 L"),
    }
)
_METRICS: Mapping[str, MetricSpec] = MappingProxyType(
    {key: MetricSpec(key=key, unit=unit, description=d) for key, (_, unit, d) in _FIELDS.items()}
)
_NO_VALUES: Mapping[str, Value] = MappingProxyType(dict.fromkeys(_FIELDS))
#: The ``adafruit_pm25`` keys of the six mass concentrations (atmospheric and CF=1).
_MASS_FIELDS = tuple(field for field, unit, _ in _FIELDS.values() if unit == _MASS)


class Pmsa003iDriver:
    """A `drivers.base.Driver` for one PMSA003I on an injected `I2CBus` (shareable with others).

    ``open`` probes the address once (absent chip: `DeviceTimeout` at once, instead of
    ``PM25_I2C``'s five one-second retries that would hold the bus task) and starts the warm-up
    clock. ``poll`` reads the newest frame and returns integer µg/m³ and counts per 0.1 L; ``None``
    for every metric during the first ``warmup_s`` seconds after ``open``.

    Errors: a NACK or a socket failure is `DeviceTimeout`; a bad header, frame length or checksum
    is `DecodeError`; the same frame ``stuck_polls`` polls in a row is
    `gateway.errors.DeviceStuck` (0 disables the check), except a frame whose six mass
    concentrations are all 0: clean air repeats that frame for hours, so it is never taken for
    a stuck sensor (and a sensor frozen on such a frame cannot be told from clean air).
    ``close`` never raises and leaves the bus open (the bus belongs to the caller).
    """

    def __init__(
        self,
        *,
        bus: I2CBus,
        address: int = 0x12,
        warmup_s: float = WARMUP_S,
        stuck_polls: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._address = address
        self._warmup_s = warmup_s
        self._clock = clock
        self._name = f"pmsa003i@{address:#04x}"
        self._stuck = StuckDetector(limit=stuck_polls, name=self._name)
        self._sensor: Any = None
        self._woke = 0.0

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        """PM1/PM2.5/PM10 (atmospheric and CF=1, µg/m³) and six particle counts (per 0.1 L)."""
        return _METRICS

    @property
    def warming_up(self) -> bool:
        """True until ``warmup_s`` seconds after the last successful ``open``."""
        return self._clock() - self._woke < self._warmup_s

    async def open(self) -> None:
        """Probe the chip and create the Adafruit driver; the warm-up starts now."""
        self._sensor = None
        self._stuck.reset()
        try:
            self._sensor = await self._call(self._start)
        except ValueError as exc:  # adafruit_bus_device's probe: nothing acknowledged
            raise DeviceTimeout(f"{self._name}: no device answers ({exc})") from exc
        self._woke = self._clock()
        logger.info("%s: opened; values withheld for %.0f s of warm-up", self._name, self._warmup_s)

    async def poll(self) -> Mapping[str, Value]:
        """Read and check the newest frame; see the class docstring for values and errors."""
        sensor = self._sensor
        if sensor is None:
            raise DeviceError(f"{self._name}: poll() before a successful open()")
        reading: dict[str, int] = await self._call(lambda: dict(sensor.read()))
        if any(reading[field] for field in _MASS_FIELDS):
            self._stuck.check(tuple(reading[field] for field, _, _ in _FIELDS.values()))
        else:
            # Clean air (a HEPA-filtered room, a clear night): every concentration 0, and the
            # few particles counted are 0 too or rounding noise. A run of such frames is a
            # legitimate reading, not a frozen sensor; it also ends any run of repeats.
            self._stuck.reset()
        if self.warming_up:
            return _NO_VALUES
        return {key: int(reading[field]) for key, (field, _, _) in _FIELDS.items()}

    async def close(self) -> None:
        """Forget the Adafruit driver; the PMSA003I has nothing to stop. Never raises."""
        self._sensor = None

    def _start(self) -> Any:
        I2CDevice(self._bus, self._address)  # one probe; raises ValueError if nobody answers
        try:
            return PM25_I2C(self._bus, address=self._address)
        except RuntimeError as exc:  # its own probe failed: the chip went away meanwhile
            raise ValueError(str(exc)) from exc

    async def _call(self, fn: Callable[[], _T]) -> _T:
        """Run a blocking driver call in a worker thread, mapping its errors to `DeviceError`s."""
        try:
            return await asyncio.to_thread(fn)
        except RuntimeError as exc:
            # adafruit_pm25 wraps a failed read in RuntimeError (cause: the OSError) and reports
            # a bad header, frame length or checksum as a bare RuntimeError.
            if isinstance(exc.__cause__, OSError):
                raise DeviceTimeout(f"{self._name}: read not acknowledged") from exc
            raise DecodeError(f"{self._name}: {exc}") from exc
        except OSError as exc:
            raise DeviceTimeout(f"{self._name}: I2C transfer failed: {exc}") from exc
