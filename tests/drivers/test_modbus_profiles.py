"""Shipped and user-declared Modbus profiles."""

from __future__ import annotations

import re
from typing import Any

import pytest

from drivers.modbus.codec import DataType, WordOrder
from drivers.modbus.engine import decode_request
from drivers.modbus.planner import plan_profile
from drivers.modbus.profiles import (
    MODBUS_MAX_REGISTERS,
    PROFILE_NAMES,
    Point,
    Profile,
    RegisterKind,
    available_profiles,
    load_profile,
    profile_from_table,
)

#: Eastron SDM630 Modbus protocol, input registers (datasheet number 3xxxx = 30001 + address).
SDM630_DATASHEET = {
    "voltage_l1": (30001, "V"),
    "voltage_l2": (30003, "V"),
    "voltage_l3": (30005, "V"),
    "current_l1": (30007, "A"),
    "current_l2": (30009, "A"),
    "current_l3": (30011, "A"),
    "power_l1": (30013, "W"),
    "power_l2": (30015, "W"),
    "power_l3": (30017, "W"),
    "power": (30053, "W"),
    "frequency": (30071, "Hz"),
    "energy_import": (30073, "kWh"),
    "energy_export": (30075, "kWh"),
    "energy_total": (30343, "kWh"),
}


def test_sdm630_is_shipped() -> None:
    assert "sdm630" in PROFILE_NAMES
    assert available_profiles() == PROFILE_NAMES


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_shipped_profile_is_sane(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.description
    assert 1 <= profile.max_registers_per_read <= MODBUS_MAX_REGISTERS
    assert profile.max_gap >= 0
    keys = [p.key for p in profile.points]
    assert len(keys) == len(set(keys))
    assert set(profile.metrics) == set(keys)
    for point in profile.points:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", point.key), point.key
        assert point.address >= 0
        assert point.end <= 0x10000
        assert point.unit, point.key
        assert point.description, point.key
        assert profile.metrics[point.key].unit == point.unit


def test_sdm630_matches_the_datasheet() -> None:
    profile = load_profile("sdm630")
    by_key = {p.key: p for p in profile.points}
    assert set(by_key) == set(SDM630_DATASHEET)
    for key, (register_number, unit) in SDM630_DATASHEET.items():
        point = by_key[key]
        assert point.kind is RegisterKind.INPUT, key
        assert point.address == register_number - 30001, key
        assert point.address % 2 == 0, key  # float parameters start on even addresses
        assert point.data_type is DataType.FLOAT32, key
        assert point.order is WordOrder.ABCD, key
        assert (point.scale, point.offset) == (1.0, 0.0), key
        assert point.unit == unit, key
    assert profile.max_registers_per_read == 80  # 40 parameters per request


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown Modbus profile 'nope'; known: .*sdm630"):
        load_profile("nope")


def _table(**point: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"register": "holding", "address": 40, "type": "int16", "unit": "°C"}
    base.update(point)
    return {"description": "test", "points": {"temp": base}}


def test_profile_from_table_builds_a_profile() -> None:
    profile = profile_from_table(
        "boiler",
        {
            "description": "a boiler",
            "max_registers_per_read": 60,
            "max_gap": 0,
            "points": {
                "temp": {
                    "register": "holding",
                    "address": 0x0010,
                    "type": "int16",
                    "scale": 0.1,
                    "unit": "Cel",
                    "invalid": 0x7FFF,
                    "description": "Flow temperature",
                },
                "hours": {
                    "register": "input",
                    "address": 3,
                    "type": "uint32",
                    "order": "CDAB",
                    "unit": "h",
                    "invalid": False,
                },
            },
        },
    )
    assert profile == Profile(
        name="boiler",
        description="a boiler",
        max_registers_per_read=60,
        max_gap=0,
        points=(
            Point(
                key="temp",
                kind=RegisterKind.HOLDING,
                address=0x10,
                data_type=DataType.INT16,
                scale=0.1,
                unit="Cel",
                sentinel=0x7FFF,
                description="Flow temperature",
            ),
            Point(
                key="hours",
                kind=RegisterKind.INPUT,
                address=3,
                data_type=DataType.UINT32,
                order=WordOrder.CDAB,
                unit="h",
                default_sentinel=False,
            ),
        ),
    )
    assert profile.metrics["temp"].unit == "Cel"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (_table(register="coil"), r"point 'temp'\.register: expected one of input, holding"),
        (_table(type="float16"), r"point 'temp'\.type: expected one of int16"),
        (_table(order="ADBC"), r"point 'temp'\.order: expected one of ABCD"),
        (_table(address="0x10"), r"point 'temp'\.address: expected an integer"),
        (_table(address=True), r"point 'temp'\.address: expected an integer"),
        (_table(address=65535, type="uint32"), r"outside 0\.\.65535"),
        (_table(scale="x"), r"point 'temp'\.scale: expected a number"),
        (_table(colour="red"), r"point 'temp': unknown keys \['colour'\]"),
        ({"points": {"temp": {"register": "input", "type": "int16"}}}, r"missing key 'address'"),
        ({"points": {}}, r"non-empty \[points\] table"),
        ({"pionts": {}}, r"unknown keys \['pionts'\]"),
        ({**_table(), "max_registers_per_read": 126}, r"max_registers_per_read must be 1\.\.125"),
        ({**_table(), "max_gap": -1}, r"max_gap must be >= 0"),
        ({**_table(type="float64"), "max_registers_per_read": 2}, r"needs 4 registers"),
    ],
)
def test_profile_from_table_rejects_bad_tables(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        profile_from_table("custom", table)
    assert "custom" in str(info.value)


def test_string_and_bitfield_points_take_their_width_from_type_and_length() -> None:
    profile = profile_from_table(
        "common",
        {
            "points": {
                "manufacturer": {
                    "register": "holding",
                    "address": 40004,
                    "type": "string",
                    "length": 16,
                },
                "events": {"register": "holding", "address": 40020, "type": "bitfield32"},
                "status": {"register": "holding", "address": 40022, "type": "bitfield16"},
            }
        },
    )
    assert [(p.key, p.count) for p in profile.points] == [
        ("manufacturer", 16),
        ("events", 2),
        ("status", 1),
    ]
    (request,) = plan_profile(profile)
    assert (request.address, request.count) == (40004, 19)
    registers = [0x4672, 0x6F6E, 0x6975, 0x7300, *[0] * 12, 0x0000, 0x0009, 0xFFFF]
    assert decode_request(request, registers, "test") == {
        "manufacturer": "Fronius",
        "events": 9,
        "status": None,
    }


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ({"type": "string"}, r"type string needs length = 1\.\.125"),
        ({"type": "string", "length": 0}, r"type string needs length"),
        ({"type": "string", "length": 126}, r"type string needs length"),
        ({"type": "string", "length": "16"}, r"\.length: expected an integer"),
        ({"type": "uint16", "length": 2}, "length applies to type string only"),
        ({"type": "string", "length": 4, "invalid": 0}, "takes no invalid value"),
        ({"type": "string", "length": 4, "scale": 0.1}, "takes no scale or offset"),
        ({"type": "bitfield16", "offset": 1}, "takes no scale or offset"),
    ],
)
def test_string_and_bitfield_rules(point: dict[str, Any], message: str) -> None:
    table = {"points": {"name": {"register": "holding", "address": 0, **point}}}
    with pytest.raises(ValueError, match=message) as info:
        profile_from_table("dev", table)
    assert "profile 'dev' point 'name'" in str(info.value)
