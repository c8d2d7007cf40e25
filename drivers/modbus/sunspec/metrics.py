"""Stable metric keys and units for decoded SunSpec points.

The gateway publishes SunSpec values under keys that read like the rest of the site (``ac_power``
in W, ``ac_energy`` in Wh, ``dc_power_1`` in W for the first MPPT input) rather than SunSpec's
point names, so that dashboards do not depend on whether an inverter speaks model 103 (integer +
scale factor) or 113 (float): both map to the same keys. The tables below are the contract
documented in docs/configuration.md; change a key only with a note in the MQTT contract.

Points that are not measurements (``ID``, ``L``, scale factors, pads, the model-1 strings, the
MPPT count) are not published. Model 1 is read once at connection and logged instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers.modbus.sunspec.models import ModelDef, PointDef
from gateway.model import MetricSpec

#: SunSpec unit spelling -> the gateway's (UCUM-like) spelling. SunSpec's ``cos()`` (model 120's
#: power-factor ratings ``PFRtgQ1``..``Q4``) is the cosine of the phase angle, a ratio from -1 to
#: 1: UCUM's dimensionless unit "1", as the shipped profiles spell a power factor. It must not be
#: empty (a reader cannot tell "no unit" from "unit forgotten") nor "%" (SunSpec's inverter and
#: meter ``PF`` points are in percent, ``Pct``, and keep "%": 0.95 and 95 % are the same number
#: only with their units).
UNITS = {
    "C": "°C",
    "Pct": "%",
    "Secs": "s",
    "cos()": "1",
    "AH": "Ah",
}

_INVERTER = {
    "A": "ac_current",
    "AphA": "ac_current_l1",
    "AphB": "ac_current_l2",
    "AphC": "ac_current_l3",
    "PPVphAB": "ac_voltage_l1_l2",
    "PPVphBC": "ac_voltage_l2_l3",
    "PPVphCA": "ac_voltage_l3_l1",
    "PhVphA": "ac_voltage_l1",
    "PhVphB": "ac_voltage_l2",
    "PhVphC": "ac_voltage_l3",
    "W": "ac_power",
    "Hz": "ac_frequency",
    "VA": "ac_apparent_power",
    "VAr": "ac_reactive_power",
    "PF": "ac_power_factor",
    "WH": "ac_energy",
    "DCA": "dc_current",
    "DCV": "dc_voltage",
    "DCW": "dc_power",
    "TmpCab": "temperature_cabinet",
    "TmpSnk": "temperature_heatsink",
    "TmpTrns": "temperature_transformer",
    "TmpOt": "temperature_other",
    "St": "state",
    "StVnd": "state_vendor",
    "Evt1": "events_1",
    "Evt2": "events_2",
    "EvtVnd1": "events_vendor_1",
    "EvtVnd2": "events_vendor_2",
    "EvtVnd3": "events_vendor_3",
    "EvtVnd4": "events_vendor_4",
}

_NAMEPLATE = {
    "DERTyp": "der_type",
    "WRtg": "rated_power",
    "VARtg": "rated_apparent_power",
    "VArRtgQ1": "rated_reactive_power_q1",
    "VArRtgQ2": "rated_reactive_power_q2",
    "VArRtgQ3": "rated_reactive_power_q3",
    "VArRtgQ4": "rated_reactive_power_q4",
    "ARtg": "rated_current",
    "PFRtgQ1": "rated_power_factor_q1",
    "PFRtgQ2": "rated_power_factor_q2",
    "PFRtgQ3": "rated_power_factor_q3",
    "PFRtgQ4": "rated_power_factor_q4",
    "WHRtg": "rated_energy",
    "AhrRtg": "rated_charge",
    "MaxChaRte": "rated_max_charge_power",
    "MaxDisChaRte": "rated_max_discharge_power",
}

_MPPT_FIXED = {"Evt": "mppt_events", "TmsPer": "mppt_timestamp_period"}
#: Per MPPT input i (1-based): ``<key>_<i>``.
_MPPT_MODULE = {
    "DCA": "dc_current",
    "DCV": "dc_voltage",
    "DCW": "dc_power",
    "DCWH": "dc_energy",
    "Tms": "dc_timestamp",
    "Tmp": "dc_temperature",
    "DCSt": "dc_state",
    "DCEvt": "dc_events",
}

#: Meter (201-204) base names; a phase suffix (``phA``, ``PhAB``) appends ``_l1`` / ``_l1_l2``.
_METER_BASE = {
    "A": "current",
    "PhV": "voltage",
    "PPV": "voltage_ll",
    "Hz": "frequency",
    "W": "power",
    "VA": "apparent_power",
    "VAR": "reactive_power",
    "PF": "power_factor",
    "TotWhExp": "energy_export",
    "TotWhImp": "energy_import",
    "TotVAhExp": "apparent_energy_export",
    "TotVAhImp": "apparent_energy_import",
    "TotVArhImpQ1": "reactive_energy_import_q1",
    "TotVArhImpQ2": "reactive_energy_import_q2",
    "TotVArhExpQ3": "reactive_energy_export_q3",
    "TotVArhExpQ4": "reactive_energy_export_q4",
    "Evt": "events",
}
_PHASE = re.compile(r"^(?P<base>.+?)[pP]h(?P<phases>[ABC]{1,2})$")
_PHASE_NAME = {"A": "l1", "B": "l2", "C": "l3"}
_SKIPPED_TYPES = frozenset({"sunssf", "pad", "string", "count"})


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSource:
    """Where a metric's value comes from: a model's point, in the fixed block (``repeat`` is
    ``None``) or in repeating block ``repeat`` (0-based)."""

    spec: MetricSpec
    model_id: int
    point: str
    repeat: int | None = None


def _meter_key(name: str) -> str | None:
    if name in _METER_BASE:
        return "meter_" + _METER_BASE[name]
    match = _PHASE.match(name)
    if match is None or match["base"] not in _METER_BASE:
        return None
    base = "voltage" if match["base"] == "PPV" else _METER_BASE[match["base"]]
    return "meter_" + base + "".join("_" + _PHASE_NAME[p] for p in match["phases"])


def _fixed_key(model_id: int, name: str) -> str | None:
    if model_id in (101, 102, 103, 111, 112, 113):
        return _INVERTER.get(name)
    if model_id == 120:
        return _NAMEPLATE.get(name)
    if model_id == 160:
        return _MPPT_FIXED.get(name)
    if model_id in (201, 202, 203, 204):
        return _meter_key(name)
    return None


def _spec(key: str, point: PointDef, suffix: str = "") -> MetricSpec:
    label = point.label + suffix
    return MetricSpec(key=key, unit=UNITS.get(point.units, point.units), description=label)


def metric_sources(model: ModelDef, repeats: int) -> list[MetricSource]:
    """The metrics published for one instance of ``model`` with ``repeats`` repeating blocks."""
    sources: list[MetricSource] = []
    for point in model.fixed.points:
        key = None if point.type in _SKIPPED_TYPES else _fixed_key(model.id, point.name)
        if key is not None:
            sources.append(
                MetricSource(spec=_spec(key, point), model_id=model.id, point=point.name)
            )
    if model.id == 160 and model.repeating is not None:
        for index in range(repeats):
            for point in model.repeating.points:
                base = _MPPT_MODULE.get(point.name)
                if base is None:
                    continue
                sources.append(
                    MetricSource(
                        spec=_spec(f"{base}_{index + 1}", point, f" (MPPT input {index + 1})"),
                        model_id=model.id,
                        point=point.name,
                        repeat=index,
                    )
                )
    return sources
