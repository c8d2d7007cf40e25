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


def aircon_load_w(hour: float, weekday: int, *, rated_w: float) -> float:
    """An air conditioner's electrical draw: ≈ 60-90 % of ``rated_w`` while the building is
    occupied (08:00-17:00 on weekdays, peaking in the afternoon heat), 20 W standby otherwise."""
    if weekday >= 5 or not 8.0 <= hour < 17.0:
        return 20.0
    return rated_w * (0.6 + 0.3 * math.sin(math.pi * (hour - 8.0) / 9.0))


#: A scripted period (start, end) in ``clock()`` seconds, for fault and scenario knobs.
Period = tuple[float, float]


def _within(periods: Sequence[tuple[float, ...]], now: float) -> tuple[float, ...] | None:
    return next((p for p in periods if p[0] <= now < p[1]), None)


class Sdm72Meter(Sdm630Meter):
    """A central air-conditioner feed metered by an Eastron SDM72D-M-2 (three-phase).

    The SDM630's register layout and physics, with the load of a ≈ 6 kW air conditioner
    instead of the building's, plus the SDM72-only import/export power registers at 0x0500 and
    0x0502 (the input table therefore extends to 0x0503, which an SDM630 does not have).

    ``left_on`` (a scenario knob, also settable on a running model) lists periods in ``clock()``
    seconds during which the air conditioner runs at 60 % of its rating whatever the hour: left
    on overnight.
    """

    left_on: Sequence[Period] = ()

    INPUT_MAP: Mapping[str, int] = {
        **Sdm630Meter.INPUT_MAP,
        "power_import": 0x0500,
        "power_export": 0x0502,
    }
    INPUT_COUNT = 0x0504
    RATED_W = 6000.0

    def _sample(self, now: float) -> dict[str, float]:
        local = now + self._utc_offset_s
        hour = (local % 86_400.0) / 3600.0
        weekday = (int(local // 86_400.0) + 3) % 7
        noise = random.Random(f"sdm72:{self._seed}:{math.floor(now)}")
        load = aircon_load_w(hour, weekday, rated_w=self.RATED_W)
        if _within(self.left_on, now) is not None:
            load = max(load, 0.6 * self.RATED_W)
        sample: dict[str, float] = {}
        total = 0.0
        for phase in (1, 2, 3):
            volts = 230.0 * (1.0 + _clamp(noise.gauss(0, 0.01), -0.03, 0.03))
            watts = as_float32(load / 3.0 * (1.0 + _clamp(noise.gauss(0, 0.02), -0.05, 0.05)))
            sample[f"voltage_l{phase}"] = volts
            sample[f"power_l{phase}"] = watts
            sample[f"current_l{phase}"] = abs(watts) / (volts * self._POWER_FACTOR)
            total += watts
        sample["power"] = total
        sample["power_import"] = max(0.0, total)
        sample["power_export"] = max(0.0, -total)
        sample["frequency"] = 50.0 + _clamp(noise.gauss(0, 0.015), -0.05, 0.05)
        sample["energy_import"] = self._import_kwh
        sample["energy_export"] = self._export_kwh
        sample["energy_total"] = self._import_kwh + self._export_kwh
        return sample


class Sdm120Meter(Sdm630Meter):
    """A split air conditioner in one classroom, metered by an Eastron SDM120 (single-phase).

    Input registers as the SDM120 protocol lays them out (float32 ABCD): voltage 0x0000,
    current 0x0006, active/apparent/reactive power 0x000C/0x0012/0x0018, power factor 0x001E,
    frequency 0x0046, import/export/total energy 0x0048/0x004A/0x0156. Nothing is served at the
    three-phase addresses (phase 2 voltage at 0x0002 reads 0.0), which is how `gateway scan`
    tells it from an SDM630.
    """

    INPUT_MAP: Mapping[str, int] = {
        "voltage": 0x0000,
        "current": 0x0006,
        "power": 0x000C,
        "apparent_power": 0x0012,
        "reactive_power": 0x0018,
        "power_factor": 0x001E,
        "frequency": 0x0046,
        "energy_import": 0x0048,
        "energy_export": 0x004A,
        "energy_total": 0x0156,
    }
    HOLDING_MAP: Mapping[int, float] = {0x0002: 60.0}
    RATED_W = 1500.0

    def _sample(self, now: float) -> dict[str, float]:
        local = now + self._utc_offset_s
        hour = (local % 86_400.0) / 3600.0
        weekday = (int(local // 86_400.0) + 3) % 7
        noise = random.Random(f"sdm120:{self._seed}:{math.floor(now)}")
        watts = as_float32(
            aircon_load_w(hour, weekday, rated_w=self.RATED_W)
            * (1.0 + _clamp(noise.gauss(0, 0.03), -0.1, 0.1))
        )
        volts = 230.0 * (1.0 + _clamp(noise.gauss(0, 0.01), -0.03, 0.03))
        power_factor = 0.92
        apparent = watts / power_factor
        return {
            "voltage": volts,
            "current": apparent / volts,
            "power": watts,
            "apparent_power": apparent,
            "reactive_power": math.sqrt(max(0.0, apparent**2 - watts**2)),
            "power_factor": power_factor,
            "frequency": 50.0 + _clamp(noise.gauss(0, 0.015), -0.05, 0.05),
            "energy_import": self._import_kwh,
            "energy_export": self._export_kwh,
            "energy_total": self._import_kwh + self._export_kwh,
        }


def float32_cdab(value: float) -> tuple[int, int]:
    """IEEE 754 float32, LOW word first (CDAB) — the TUF-2000M's REAL4 layout."""
    hi, lo = float32_words(value)
    return lo, hi


def kindergarten_water_m3h(hour: float, weekday: int) -> float:
    """Typical water flow of a kindergarten building in m³/h: a trickle at night (cisterns,
    0 most of the time), hand washing and toilets while occupied, the kitchen before lunch."""
    if weekday >= 5 or not 7.0 <= hour < 18.0:
        return 0.0
    return 0.15 + 0.6 * math.exp(-(((hour - 10.5) / 0.8) ** 2))


class Tuf2000mWaterMeter:
    """The water meter of a building, as a TUF-2000M ultrasonic flow meter (holding registers).

    Encodes (float32 low word first, as the meter does): flow rate REG0001 (address 0), velocity
    REG0005 (4), net/positive/negative accumulators REG0113/0115/0117 (112/114/116); error code
    REG0072 (71) is 0 and signal quality REG0092 (91) ≈ 85. The positive accumulator integrates
    the flow between refreshes. `values` returns what the last refresh served, rounded to
    float32, keyed like the ``tuf2000m`` profile.

    ``leaks`` (a fault knob, also settable on a running model) lists (start, end, m³/h) in
    ``clock()`` seconds: a dripping tap or a running cistern adds its flow whatever the hour.
    """

    leaks: Sequence[tuple[float, float, float]] = ()

    HOLDING_COUNT = 128
    MAX_REGISTERS_PER_READ = 125
    #: Inner pipe diameter (DN32) for the velocity.
    PIPE_AREA_M2 = math.pi * 0.016**2

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
        self._forward_m3 = 1000.0 + random.Random(f"tuf2000m:{seed}").uniform(0.0, 4000.0)
        self._reverse_m3 = 0.25
        self._last_t: float | None = None
        self._last_flow = 0.0
        self._holding = [0] * self.HOLDING_COUNT
        self._values: dict[str, float] = {}
        self.refresh()

    @property
    def max_registers_per_read(self) -> int:
        """Full Modbus reads are accepted."""
        return self.MAX_REGISTERS_PER_READ

    def layout(self) -> Mapping[RegisterTable, tuple[int, int]]:
        """Holding registers 0-127 only."""
        return {"holding": (0, self.HOLDING_COUNT)}

    def registers(self, table: RegisterTable) -> Sequence[int]:
        """The current image of the holding table (a copy)."""
        return list(self._holding) if table == "holding" else []

    def values(self) -> Mapping[str, float]:
        """The values served by the last refresh, keyed like the profile."""
        return dict(self._values)

    def refresh(self) -> None:
        """Sample the flow at ``clock()``, integrate the accumulators and re-encode."""
        now = self._clock()
        if self._last_t is not None and now > self._last_t:
            self._forward_m3 += self._last_flow * (now - self._last_t) / 3600.0
        if self._last_t is None or now > self._last_t:
            self._last_t = now
        local = now + self._utc_offset_s
        hour = (local % 86_400.0) / 3600.0
        weekday = (int(local // 86_400.0) + 3) % 7
        noise = random.Random(f"tuf2000m:{self._seed}:{math.floor(now)}")
        flow = kindergarten_water_m3h(hour, weekday)
        if flow:
            flow *= 1.0 + _clamp(noise.gauss(0, 0.1), -0.3, 0.3)
        leak = _within(self.leaks, now)
        if leak is not None:
            flow += leak[2]
        self._last_flow = flow
        floats = {
            "flow_rate": (0, flow),
            "velocity": (4, flow / 3600.0 / self.PIPE_AREA_M2),
            "volume_net": (112, self._forward_m3 - self._reverse_m3),
            "volume_forward": (114, self._forward_m3),
            "volume_reverse": (116, self._reverse_m3),
        }
        for key, (address, value) in floats.items():
            rounded = as_float32(value)
            self._values[key] = rounded
            self._holding[address : address + 2] = float32_cdab(rounded)
        self._holding[71] = 0
        self._holding[91] = 85
        self._values["error_code"] = 0
        self._values["signal_quality"] = 85


#: Meter models by profile name, for building a simulated site from a gateway configuration.
METER_MODELS: Mapping[str, MeterFactory] = {
    "sdm630": Sdm630Meter,
    "sdm72": Sdm72Meter,
    "sdm120": Sdm120Meter,
    "tuf2000m": Tuf2000mWaterMeter,
}
