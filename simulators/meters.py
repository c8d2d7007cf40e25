"""Simulated Modbus meters: physical models that encode their own register images.

A model knows its device's register map and wire encoding by itself (here with `struct`), never
through `drivers/`: the simulator is the independent second implementation that catches a wrong
address or word order in a driver profile instead of mirroring it.

Models are transport-free; `simulators.modbus_tcp.ModbusTcpSimulator` serves them over Modbus
TCP (and an RTU server can serve the same objects). A model is sampled by `refresh`, which the
server calls on every request, so every answer reflects the model at the moment of the request.
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

#: The two register tables a model may expose (function codes 4 and 3).
RegisterTable = Literal["input", "holding"]


class ModbusDeviceModel(Protocol):
    """What a Modbus server needs from a simulated device.

    ``layout`` is static: the first address and register count of each table the device has
    (absent tables answer "illegal address"). ``refresh`` samples the model now and re-encodes
    its registers; ``registers`` returns the current image of one table (``count`` words).
    ``max_registers_per_read`` is the device's own request limit: larger reads get exception 03,
    as the real device answers.
    """

    @property
    def max_registers_per_read(self) -> int: ...

    def layout(self) -> Mapping[RegisterTable, tuple[int, int]]: ...

    def refresh(self) -> None: ...

    def registers(self, table: RegisterTable) -> Sequence[int]: ...


class MeterFactory(Protocol):
    """Constructor signature shared by the meter models, so a site builder can create them by
    profile name from `METER_MODELS`."""

    def __call__(
        self, *, seed: int = ..., clock: Callable[[], float] = ...
    ) -> ModbusDeviceModel: ...


def float32_words(value: float) -> tuple[int, int]:
    """IEEE 754 float32, high word first, big-endian bytes (ABCD) — the Eastron encoding."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return hi, lo


def as_float32(value: float) -> float:
    """``value`` rounded to the nearest float32, i.e. exactly what a float32 register carries."""
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def kindergarten_load_w(hour: float, weekday: int) -> float:
    """Typical building consumption in watts for local ``hour`` (0-24) and ``weekday`` (Mon=0).

    Night base load (fridges, servers, emergency lighting) ≈ 1.5 kW; from 07:00 lights,
    ventilation and air conditioners; the kitchen peaks before lunch; the building empties after
    17:00. Weekends keep only the base load.
    """
    base = 1500.0
    if weekday >= 5:
        return base
    occupied = 0.5 * (math.tanh((hour - 7.0) * 2.0) - math.tanh((hour - 17.0) * 2.0))
    kitchen = 6000.0 * math.exp(-(((hour - 11.0) / 1.0) ** 2))
    return base + 5500.0 * occupied + kitchen


def pv_production_w(hour: float, clearness: float) -> float:
    """Roof PV output in watts: 30 panels ≈ 12 kWp, ≈ 9 kW at a clear noon, zero at night."""
    if not 6.0 < hour < 20.0:
        return 0.0
    return 9000.0 * clearness * math.sin(math.pi * (hour - 6.0) / 14.0) ** 2


class Sdm630Meter:
    """Main electricity meter of a kindergarten building, as an Eastron SDM630 (3P4W).

    The model: three phase voltages 230 V ±3 %, 50 Hz ±0.05 Hz, a net active power equal to the
    building load (a deterministic time-of-day shape) minus the roof PV, with noise seeded by
    ``seed`` and the current second (the same seed and clock give the same readings on any
    machine), split unevenly over the phases; currents follow from power, voltage and a 0.95
    power factor. Import and export counters integrate the power between refreshes (never
    backwards if the clock jumps back), so energy stays consistent with power.

    Time of day is ``clock()`` shifted by ``utc_offset_s`` (default CET). Registers are
    refreshed by `refresh`, which the server calls on every request; `values` returns the values
    served by the last refresh, keyed like the ``sdm630`` profile's metrics and already rounded
    to float32, so a test can compare them exactly with what a driver decoded.
    """

    #: Input register map: metric key → protocol address (Eastron SDM630 Modbus protocol).
    INPUT_MAP: Mapping[str, int] = {
        "voltage_l1": 0x0000,
        "voltage_l2": 0x0002,
        "voltage_l3": 0x0004,
        "current_l1": 0x0006,
        "current_l2": 0x0008,
        "current_l3": 0x000A,
        "power_l1": 0x000C,
        "power_l2": 0x000E,
        "power_l3": 0x0010,
        "power": 0x0034,
        "frequency": 0x0046,
        "energy_import": 0x0048,
        "energy_export": 0x004A,
        "energy_total": 0x0156,
    }
    #: Holding registers modelled (float32): demand period 60 min, system type 3 (3P4W).
    HOLDING_MAP: Mapping[int, float] = {0x0002: 60.0, 0x000A: 3.0}
    #: The SDM630 input table spans 30001..30384; unmodelled parameters read as 0.0.
    INPUT_COUNT = 0x0180
    HOLDING_COUNT = 0x0040
    #: "Each request must be restricted to 40 parameters or less" (Eastron protocol document).
    MAX_REGISTERS_PER_READ = 80
    _PHASE_SHARE = (0.37, 0.34, 0.29)
    _POWER_FACTOR = 0.95

    def __init__(
        self,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        utc_offset_s: float = 3600.0,
    ) -> None:
        self._seed = seed
        self._clock = clock
        self._utc_offset_s = utc_offset_s
        start = random.Random(f"sdm630-counters:{seed}")
        self._import_kwh = 20_000.0 + start.uniform(0.0, 5_000.0)
        self._export_kwh = 1_500.0 + start.uniform(0.0, 500.0)
        self._last_t: float | None = None
        self._last_power_w = 0.0
        self._input = [0] * self.INPUT_COUNT
        self._holding = [0] * self.HOLDING_COUNT
        for address, value in self.HOLDING_MAP.items():
            self._holding[address : address + 2] = float32_words(value)
        self._values: dict[str, float] = {}
        self.refresh()

    @property
    def max_registers_per_read(self) -> int:
        """The SDM630's per-request limit: 40 float parameters."""
        return self.MAX_REGISTERS_PER_READ

    def layout(self) -> Mapping[RegisterTable, tuple[int, int]]:
        """Input registers 0x0000-0x017F, holding registers 0x0000-0x003F."""
        return {"input": (0, self.INPUT_COUNT), "holding": (0, self.HOLDING_COUNT)}

    def registers(self, table: RegisterTable) -> Sequence[int]:
        """The current image of ``table`` (a copy)."""
        return list(self._input if table == "input" else self._holding)

    def values(self) -> Mapping[str, float]:
        """The values served by the last refresh, rounded to float32, keyed like the profile."""
        return dict(self._values)

    def refresh(self) -> None:
        """Sample the model at ``clock()``, advance the energy counters and re-encode."""
        now = self._clock()
        if self._last_t is not None and now > self._last_t:
            energy_kwh = self._last_power_w * (now - self._last_t) / 3.6e6
            if energy_kwh >= 0:
                self._import_kwh += energy_kwh
            else:
                self._export_kwh -= energy_kwh
        if self._last_t is None or now > self._last_t:
            self._last_t = now
        sample = self._sample(now)
        self._last_power_w = sample["power"]
        for key, address in self.INPUT_MAP.items():
            value = as_float32(sample[key])
            self._values[key] = value
            self._input[address : address + 2] = float32_words(value)

    def _sample(self, now: float) -> dict[str, float]:
        local = now + self._utc_offset_s
        hour = (local % 86_400.0) / 3600.0
        weekday = (int(local // 86_400.0) + 3) % 7  # 1970-01-01 was a Thursday
        day = random.Random(f"sdm630-day:{self._seed}:{int(local // 86_400.0)}")
        clearness = day.uniform(0.3, 1.0)
        noise = random.Random(f"sdm630:{self._seed}:{math.floor(now)}")
        load = kindergarten_load_w(hour, weekday) * (1.0 + _clamp(noise.gauss(0, 0.03), -0.1, 0.1))
        net = load - pv_production_w(hour, clearness)
        sample: dict[str, float] = {}
        total = 0.0
        for phase, share in enumerate(self._PHASE_SHARE, start=1):
            volts = 230.0 * (1.0 + _clamp(noise.gauss(0, 0.01), -0.03, 0.03))
            watts = as_float32(net * share * (1.0 + _clamp(noise.gauss(0, 0.02), -0.05, 0.05)))
            sample[f"voltage_l{phase}"] = volts
            sample[f"power_l{phase}"] = watts
            sample[f"current_l{phase}"] = abs(watts) / (volts * self._POWER_FACTOR)
            total += watts
        sample["power"] = total
        sample["frequency"] = 50.0 + _clamp(noise.gauss(0, 0.015), -0.05, 0.05)
        sample["energy_import"] = self._import_kwh
        sample["energy_export"] = self._export_kwh
        sample["energy_total"] = self._import_kwh + self._export_kwh
        return sample


#: Meter models by profile name, for building a simulated site from a gateway configuration.
METER_MODELS: Mapping[str, MeterFactory] = {"sdm630": Sdm630Meter}
