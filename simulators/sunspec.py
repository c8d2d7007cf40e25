"""A simulated SunSpec PV inverter: the kindergarten roof's 30 panels (≈ 12 kWp), three-phase.

The register map is encoded here, independently of the gateway's SunSpec decoder (simulators never
import drivers/, and pysunspec2 is only a test dependency): the few model layouts the inverter
exposes are written out below from the SunSpec Information Model (model 1 common, 103 three-phase
inverter, 120 nameplate, 160 multiple MPPT with two inputs), each point with its type and size.
A test scans this simulator with pysunspec2, so a wrong layout here cannot go unnoticed.

Map (holding registers, protocol addresses): "SunS" at 40000, then 1 (L=66), 103 (L=50),
120 (L=26), 160 (L=8 + 2 x 20), end marker 0xFFFF. A few points are deliberately "not
implemented" (transformer and other temperature, vendor events 3-4, the MPPT module
temperatures, the storage ratings of model 120) so that "no value" is exercised end to end.

The physics: the same clear-sky bell as the building meters (`simulators.meters.pv_production_w`,
≈ 9 kW AC at a clear noon), a per-day clearness drawn from the seed and the date, ±2 % noise per
second; 16 panels on MPPT 1 and 14 on MPPT 2; DC voltage rising with irradiance toward ≈ 34 V per
panel; 97 % conversion efficiency; counters that integrate power between refreshes.
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Callable, Mapping, Sequence

from simulators.meters import RegisterTable, pv_production_w

#: (name, SunSpec type, registers) per point, in map order, after the ID and L registers.
Layout = tuple[tuple[str, str, int], ...]

COMMON: Layout = (
    ("Mn", "string", 16),
    ("Md", "string", 16),
    ("Opt", "string", 8),
    ("Vr", "string", 8),
    ("SN", "string", 16),
    ("DA", "uint16", 1),
    ("Pad", "pad", 1),
)
INVERTER_THREE_PHASE: Layout = (
    *((name, "uint16", 1) for name in ("A", "AphA", "AphB", "AphC")),
    ("A_SF", "sunssf", 1),
    *((name, "uint16", 1) for name in ("PPVphAB", "PPVphBC", "PPVphCA")),
    *((name, "uint16", 1) for name in ("PhVphA", "PhVphB", "PhVphC")),
    ("V_SF", "sunssf", 1),
    ("W", "int16", 1),
    ("W_SF", "sunssf", 1),
    ("Hz", "uint16", 1),
    ("Hz_SF", "sunssf", 1),
    ("VA", "int16", 1),
    ("VA_SF", "sunssf", 1),
    ("VAr", "int16", 1),
    ("VAr_SF", "sunssf", 1),
    ("PF", "int16", 1),
    ("PF_SF", "sunssf", 1),
    ("WH", "acc32", 2),
    ("WH_SF", "sunssf", 1),
    ("DCA", "uint16", 1),
    ("DCA_SF", "sunssf", 1),
    ("DCV", "uint16", 1),
    ("DCV_SF", "sunssf", 1),
    ("DCW", "int16", 1),
    ("DCW_SF", "sunssf", 1),
    *((name, "int16", 1) for name in ("TmpCab", "TmpSnk", "TmpTrns", "TmpOt")),
    ("Tmp_SF", "sunssf", 1),
    ("St", "enum16", 1),
    ("StVnd", "enum16", 1),
    *((name, "bitfield32", 2) for name in ("Evt1", "Evt2")),
    *((f"EvtVnd{i}", "bitfield32", 2) for i in range(1, 5)),
)
NAMEPLATE: Layout = (
    ("DERTyp", "enum16", 1),
    ("WRtg", "uint16", 1),
    ("WRtg_SF", "sunssf", 1),
    ("VARtg", "uint16", 1),
    ("VARtg_SF", "sunssf", 1),
    *((f"VArRtgQ{q}", "int16", 1) for q in range(1, 5)),
    ("VArRtg_SF", "sunssf", 1),
    ("ARtg", "uint16", 1),
    ("ARtg_SF", "sunssf", 1),
    *((f"PFRtgQ{q}", "int16", 1) for q in range(1, 5)),
    ("PFRtg_SF", "sunssf", 1),
    ("WHRtg", "uint16", 1),
    ("WHRtg_SF", "sunssf", 1),
    ("AhrRtg", "uint16", 1),
    ("AhrRtg_SF", "sunssf", 1),
    ("MaxChaRte", "uint16", 1),
    ("MaxChaRte_SF", "sunssf", 1),
    ("MaxDisChaRte", "uint16", 1),
    ("MaxDisChaRte_SF", "sunssf", 1),
    ("Pad", "pad", 1),
)
MPPT_FIXED: Layout = (
    ("DCA_SF", "sunssf", 1),
    ("DCV_SF", "sunssf", 1),
    ("DCW_SF", "sunssf", 1),
    ("DCWH_SF", "sunssf", 1),
    ("Evt", "bitfield32", 2),
    ("N", "count", 1),
    ("TmsPer", "uint16", 1),
)
MPPT_MODULE: Layout = (
    ("ID", "uint16", 1),
    ("IDStr", "string", 8),
    ("DCA", "uint16", 1),
    ("DCV", "uint16", 1),
    ("DCW", "uint16", 1),
    ("DCWH", "acc32", 2),
    ("Tms", "uint32", 2),
    ("Tmp", "int16", 1),
    ("DCSt", "enum16", 1),
    ("DCEvt", "bitfield32", 2),
)

#: struct format and "not implemented" pattern per SunSpec type (SunSpec Information Model).
_TYPES: dict[str, tuple[str, int]] = {
    "uint16": ("H", 0xFFFF),
    "count": ("H", 0xFFFF),
    "enum16": ("H", 0xFFFF),
    "pad": ("H", 0x8000),
    "int16": ("h", -0x8000),
    "sunssf": ("h", -0x8000),
    "acc32": ("I", 0),
    "uint32": ("I", 0xFFFF_FFFF),
    "bitfield32": ("I", 0xFFFF_FFFF),
}

BASE_ADDRESS = 40000
MARKER = (0x5375, 0x6E53)
#: Panels per MPPT input (30 in total) and their peak power.
PANELS = (16, 14)
PANEL_WP = 400.0
EFFICIENCY = 0.97
#: SunSpec operating states (model 103 St): 2 sleeping, 4 MPPT.
STATE_SLEEPING, STATE_MPPT = 2, 4


def encode_block(layout: Layout, values: Mapping[str, int | str | None]) -> list[int]:
    """The registers of one block: every point of ``layout`` from ``values`` (missing or
    ``None`` = the type's not-implemented pattern; strings NUL-padded UTF-8)."""
    words: list[int] = []
    for name, kind, size in layout:
        value = values.get(name)
        if kind == "string":
            data = (value if isinstance(value, str) else "").encode()[: 2 * size]
            data = data.ljust(2 * size, b"\0")
        else:
            fmt, unimplemented = _TYPES[kind]
            number = unimplemented if value is None else int(value)
            data = struct.pack(">" + fmt, number)
        if len(data) != 2 * size:
            raise ValueError(f"point {name}: {kind} does not fill {size} registers")
        words.extend(struct.unpack(f">{size}H", data))
    return words


def _model(model_id: int, body: list[int]) -> list[int]:
    return [model_id, len(body), *body]


class SunSpecInverter:
    """A three-phase SunSpec PV inverter (models 1, 103, 120, 160) as a `ModbusDeviceModel`.

    ``clock`` gives the time (seconds since the epoch) the model is sampled at; ``utc_offset_s``
    shifts it to local solar time (default CET). `refresh` (called by the server on every request)
    re-encodes the whole map; a fixed clock therefore serves a fixed image, which is what lets a
    test compare two clients reading at different moments.
    """

    MAX_REGISTERS_PER_READ = 125

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
        start = random.Random(f"sunspec-counters:{seed}")
        self._module_wh = [start.uniform(6e6, 9e6), start.uniform(5e6, 8e6)]
        self._last_t: float | None = None
        self._last_dc_w = [0.0, 0.0]
        self._serial = f"CS12K{seed % 1_000_000:06d}"
        self._holding: list[int] = []
        self.refresh()

    @property
    def max_registers_per_read(self) -> int:
        """The Modbus limit; SunSpec devices normally accept full 125-register reads."""
        return self.MAX_REGISTERS_PER_READ

    def layout(self) -> Mapping[RegisterTable, tuple[int, int]]:
        """Holding registers only, from 40000."""
        return {"holding": (BASE_ADDRESS, len(self._holding))}

    def registers(self, table: RegisterTable) -> Sequence[int]:
        """The current image of the holding table (a copy)."""
        return list(self._holding) if table == "holding" else []

    def refresh(self) -> None:
        """Sample the model at ``clock()``, advance the counters and re-encode the map."""
        now = self._clock()
        if self._last_t is not None and now > self._last_t:
            for index, watts in enumerate(self._last_dc_w):
                self._module_wh[index] += watts * (now - self._last_t) / 3600.0
        if self._last_t is None or now > self._last_t:
            self._last_t = now
        self._holding = self._encode(now)

    def _encode(self, now: float) -> list[int]:
        local = now + self._utc_offset_s
        hour = (local % 86_400.0) / 3600.0
        day = random.Random(f"sunspec-day:{self._seed}:{int(local // 86_400.0)}")
        clearness = day.uniform(0.3, 1.0)
        noise = random.Random(f"sunspec:{self._seed}:{math.floor(now)}")
        ac_w = pv_production_w(hour, clearness) * (
            1.0 + max(-0.05, min(0.05, noise.gauss(0, 0.02)))
        )
        dc_total = ac_w / EFFICIENCY
        irradiance = dc_total / (sum(PANELS) * PANEL_WP)  # 0..~0.8 of STC
        producing = ac_w >= 1.0
        modules = []
        for index, panels in enumerate(PANELS):
            watts = dc_total * panels / sum(PANELS) if producing else 0.0
            self._last_dc_w[index] = watts
            volts = panels * (30.0 + 4.0 * min(1.0, irradiance)) if producing else 0.0
            amps = watts / volts if volts else 0.0
            modules.append((watts, volts, amps))
        return [
            *MARKER,
            *_model(1, self._common()),
            *_model(103, self._inverter(ac_w, modules, noise)),
            *_model(120, self._nameplate()),
            *_model(160, self._mppt(modules, now)),
            0xFFFF,
            0,
        ]

    def _common(self) -> list[int]:
        return encode_block(
            COMMON,
            {"Mn": "Canary Solar", "Md": "CS-12K-3P", "Vr": "1.4.2", "SN": self._serial, "DA": 1},
        )

    def _inverter(
        self, ac_w: float, modules: list[tuple[float, float, float]], noise: random.Random
    ) -> list[int]:
        volts = [230.0 * (1.0 + max(-0.03, min(0.03, noise.gauss(0, 0.01)))) for _ in range(3)]
        amps = [ac_w / 3.0 / v for v in volts]
        dc_w = sum(m[0] for m in modules)
        dc_v = max((m[1] for m in modules), default=0.0)
        producing = ac_w >= 1.0
        values: dict[str, int | str | None] = {
            "A": round(sum(amps) * 100),
            "AphA": round(amps[0] * 100),
            "AphB": round(amps[1] * 100),
            "AphC": round(amps[2] * 100),
            "A_SF": -2,
            "PPVphAB": round(math.sqrt(3) * (volts[0] + volts[1]) / 2 * 10),
            "PPVphBC": round(math.sqrt(3) * (volts[1] + volts[2]) / 2 * 10),
            "PPVphCA": round(math.sqrt(3) * (volts[2] + volts[0]) / 2 * 10),
            "PhVphA": round(volts[0] * 10),
            "PhVphB": round(volts[1] * 10),
            "PhVphC": round(volts[2] * 10),
            "V_SF": -1,
            "W": round(ac_w),
            "W_SF": 0,
            "Hz": round((50.0 + max(-0.05, min(0.05, noise.gauss(0, 0.015)))) * 100),
            "Hz_SF": -2,
            "VA": round(ac_w),
            "VA_SF": 0,
            "VAr": 0,
            "VAr_SF": 0,
            "PF": 1000 if producing else None,
            "PF_SF": -1,
            "WH": round(sum(self._module_wh) * EFFICIENCY),
            "WH_SF": 0,
            "DCA": round(dc_w / dc_v * 100) if dc_v else 0,
            "DCA_SF": -2,
            "DCV": round(dc_v * 10),
            "DCV_SF": -1,
            "DCW": round(dc_w),
            "DCW_SF": 0,
            "TmpCab": round((25.0 + ac_w / 600.0) * 10),
            "TmpSnk": round((25.0 + ac_w / 400.0) * 10),
            "Tmp_SF": -1,
            "St": STATE_MPPT if producing else STATE_SLEEPING,
            "StVnd": 0,
            "Evt1": 0,
            "Evt2": 0,
            "EvtVnd1": 0,
            "EvtVnd2": 0,
        }
        return encode_block(INVERTER_THREE_PHASE, values)

    def _nameplate(self) -> list[int]:
        return encode_block(
            NAMEPLATE,
            {
                "DERTyp": 4,  # PV
                "WRtg": 12000,
                "WRtg_SF": 0,
                "VARtg": 12000,
                "VARtg_SF": 0,
                "VArRtgQ1": 7200,
                "VArRtgQ2": 7200,
                "VArRtgQ3": -7200,
                "VArRtgQ4": -7200,
                "VArRtg_SF": 0,
                "ARtg": 1740,
                "ARtg_SF": -2,
                "PFRtgQ1": 800,
                "PFRtgQ2": 800,
                "PFRtgQ3": -800,
                "PFRtgQ4": -800,
                "PFRtg_SF": -3,
                "Pad": 0x8000,
            },
        )

    def _mppt(self, modules: list[tuple[float, float, float]], now: float) -> list[int]:
        fixed = encode_block(
            MPPT_FIXED,
            {"DCA_SF": -2, "DCV_SF": -1, "DCW_SF": 0, "DCWH_SF": 0, "Evt": 0, "N": 2, "TmsPer": 0},
        )
        body = list(fixed)
        for index, (watts, volts, amps) in enumerate(modules):
            body += encode_block(
                MPPT_MODULE,
                {
                    "ID": index + 1,
                    "IDStr": f"string {index + 1}",
                    "DCA": round(amps * 100),
                    "DCV": round(volts * 10),
                    "DCW": round(watts),
                    "DCWH": round(self._module_wh[index]),
                    "Tms": int(now) & 0xFFFF_FFFF,
                    "DCSt": STATE_MPPT if watts > 0 else STATE_SLEEPING,
                    "DCEvt": 0,
                },
            )
        return body
