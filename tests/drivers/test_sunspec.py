"""SunSpec: shipped tables vs pysunspec2, decoding vectors, discovery, and acceptance 1.

Acceptance 1 (issue 3): pysunspec2, the SunSpec Alliance's own client, scans the project's
simulated inverter over a real loopback socket and must find the same models as the gateway's
discovery; for every point of models 1, 103 and 160 (and 120), the gateway's decoded value must
equal pysunspec2's scaled value (``point.cvalue``). pysunspec2 is synchronous, so it runs in
``asyncio.to_thread`` while the simulator serves from the test's event loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from drivers.modbus.profiles import RegisterKind
from drivers.modbus.sunspec.decode import decode_model, decode_point, scale
from drivers.modbus.sunspec.discovery import discover
from drivers.modbus.sunspec.driver import SunSpecTcpDriver
from drivers.modbus.sunspec.models import SUPPORTED_MODELS, PointDef, model_definitions
from gateway.errors import DecodeError, DeviceRejected
from simulators.meters import RegisterTable
from simulators.modbus_tcp import ModbusTcpSimulator
from simulators.sunspec import SunSpecInverter

ROOT = Path(__file__).resolve().parents[2]
#: 2024-06-10 12:13 UTC: a producing inverter (local solar time ≈ 13:13 CET).
NOON = 1_718_021_600.0
#: 02:13 local: the inverter sleeps, DC values are zero.
NIGHT = NOON - 11 * 3600


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "tools" / "gen_sunspec_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_model_tables_equal_what_pysunspec2_says() -> None:
    shipped = (ROOT / "drivers" / "modbus" / "sunspec" / "models.json").read_text()
    generated = _generator().generate()
    assert json.loads(shipped)["models"] == json.loads(generated)["models"], (
        "drivers/modbus/sunspec/models.json is stale: run tools/gen_sunspec_models.py"
    )
    assert tuple(sorted(model_definitions())) == SUPPORTED_MODELS


def test_model_layout_sizes_match_the_sunspec_lengths() -> None:
    folder = resources.files("sunspec2").joinpath("models", "json")
    for model_id, model in model_definitions().items():
        source = json.loads(folder.joinpath(f"model_{model_id}.json").read_text())
        assert model.fixed.points[0].name == "ID"
        assert model.fixed.points[1].name == "L"
        assert model.fixed.size == sum(p["size"] for p in source["group"]["points"])
    assert model_definitions()[103].fixed.size == 52
    assert model_definitions()[160].repeat_count(48) == 2
    with pytest.raises(ValueError, match="whole"):
        model_definitions()[160].repeat_count(49)


def test_announced_lengths_are_laid_out_as_pysunspec2_lays_them_out() -> None:
    """The lengths the SunSpec specification and real devices allow (issue 15)."""
    models = model_definitions()
    common = models[1]
    # L = 66 as defined; L = 65 without the trailing Pad (older maps, many inverters).
    assert common.shape(66).fixed == common.fixed
    assert common.shape(66).size == 68
    short = common.shape(65)
    assert [p.name for p in short.fixed.points][-2:] == ["SN", "DA"]
    assert (short.size, short.extra) == (67, 0)
    # Extra trailing registers after a model without repeating block are ignored.
    assert (common.shape(70).size, common.shape(70).extra) == (68, 4)
    assert (models[103].shape(60).size, models[103].shape(60).extra) == (52, 10)
    assert models[120].shape(25).size == 27  # model 120 ends in a pad too
    with pytest.raises(ValueError, match=r"shorter than its fixed block \(66, 65 without"):
        common.shape(64)
    with pytest.raises(ValueError, match=r"shorter than its fixed block \(50\)"):
        models[103].shape(49)
    # A repeating model takes whole blocks only (pysunspec2 refuses the rest too).
    assert models[160].shape(8).repeats == 0
    with pytest.raises(ValueError, match="whole 20-register"):
        models[160].shape(48 + 3)


def test_decode_model_at_the_allowed_lengths() -> None:
    common = model_definitions()[1]
    text = [0x4142] + [0] * 15  # "AB"
    words = [1, 65, *text, *text, *([0] * 8), *([0] * 8), *text, 7]
    decoded = decode_model(common, words)
    assert decoded.values["Mn"] == "AB"
    assert decoded.values["DA"] == 7
    assert "Pad" not in decoded.values
    longer = [1, 69, *words[2:], 0x8000, 0xAAAA, 0xBBBB, 0xCCCC]  # pad + 3 extra registers
    same = {**decoded.values, "L": 69}
    assert decode_model(common, longer).values == same
    assert decode_model(common, longer[:68]).values == same  # the extras need not be read
    with pytest.raises(ValueError, match="need 68 to 71 registers, got 67"):
        decode_model(common, longer[:67])


@pytest.mark.parametrize(
    ("kind", "words", "expected"),
    [
        ("int16", [0x8000], None),
        ("int16", [0xFFFE], -2),
        ("uint16", [0xFFFF], None),
        ("enum16", [0xFFFF], None),
        ("bitfield16", [0xFFFF], None),
        ("acc16", [0x0000], None),
        ("sunssf", [0x8000], None),
        ("sunssf", [0xFFFE], -2),
        ("int32", [0x8000, 0x0000], None),
        ("uint32", [0xFFFF, 0xFFFF], None),
        ("acc32", [0x0000, 0x0000], None),
        ("acc32", [0x0001, 0x0002], 0x0001_0002),
        ("bitfield32", [0xFFFF, 0xFFFF], None),
        ("bitfield32", [0x8000, 0x0001], 0x8000_0001),
        ("int64", [0x8000, 0, 0, 0], None),
        ("uint64", [0xFFFF] * 4, None),
        ("acc64", [0, 0, 0, 0], None),
        ("float32", [0x7FC0, 0x0000], None),
        ("float32", [0x436E, 0x0000], 238.0),
        ("float64", [0x7FF8, 0, 0, 0], None),
        ("string", [0x0000, 0x4142], None),
        ("string", [0x4142, 0x4300, 0x0000], "ABC"),
    ],
)
def test_not_implemented_patterns_and_plain_values(
    kind: str, words: list[int], expected: object
) -> None:
    point = PointDef(name="x", type=kind, size=len(words))
    assert decode_point(words, point) == expected


def test_scaling_matches_pysunspec2_formula_and_unscalable_is_none() -> None:
    assert scale(2345, -1, scaled=True) == 234.5
    assert scale(1740, -2, scaled=True) == 17.4
    assert scale(12, 3, scaled=True) == 12000
    assert scale(7, 0, scaled=True) == 7
    assert scale(7, None, scaled=True) is None  # scale factor not implemented: no number
    assert scale(None, -1, scaled=True) is None
    assert scale(7, None, scaled=False) == 7


def test_model_103_hand_vector() -> None:
    """A model 103 image built by hand: 230.0 V, 4 kW, 50.00 Hz, 12,345,678 Wh."""
    model = model_definitions()[103]
    words = [103, 50] + [0x8000] * 50
    names = [p.name for p in model.fixed.points]

    def put(name: str, *values: int) -> None:
        offset = sum(p.size for p in model.fixed.points[: names.index(name)])
        words[offset : offset + len(values)] = list(values)

    put("PhVphA", 2300)
    put("V_SF", 0xFFFF)  # -1
    put("W", 4000)
    put("W_SF", 0)
    put("Hz", 5000)
    put("Hz_SF", 0xFFFE)  # -2
    put("WH", 0x00BC, 0x614E)
    put("WH_SF", 0)
    put("A", 0xFFFF)  # uint16 not implemented
    decoded = decode_model(model, words)
    assert decoded.values["PhVphA"] == 230.0
    assert decoded.values["W"] == 4000
    assert decoded.values["Hz"] == 50.0
    assert decoded.values["WH"] == 12_345_678
    assert decoded.values["A"] is None
    # PhVphB holds 0x8000, which is a valid uint16 (32768) but its scale factor is fine: the
    # uint16 "not implemented" pattern is 0xFFFF, so it decodes; DCA's SF is 0x8000 -> None.
    assert decoded.values["DCA"] is None
    with pytest.raises(ValueError, match="expected model 103"):
        decode_model(model, [101, 50] + [0] * 50)


class _RawImage:
    """A minimal device model serving a fixed holding-register image at ``start``."""

    def __init__(self, start: int, words: Sequence[int]) -> None:
        self._start, self._words = start, list(words)

    @property
    def max_registers_per_read(self) -> int:
        return 125

    def layout(self) -> Mapping[RegisterTable, tuple[int, int]]:
        return {"holding": (self._start, len(self._words))}

    def refresh(self) -> None:
        pass

    def registers(self, table: RegisterTable) -> Sequence[int]:
        return self._words if table == "holding" else []


@pytest.mark.parametrize("base", [0, 50000])
def test_discovery_finds_the_other_base_addresses_and_a_chain_without_end_marker(
    base: int,
) -> None:
    image = [0x5375, 0x6E53, 1, 66, *([0] * 66), 120, 26, *([0] * 26)]  # no 0xFFFF

    async def scenario() -> None:
        async with ModbusTcpSimulator(devices={3: _RawImage(base, image)}) as sim:
            driver = SunSpecTcpDriver(host="127.0.0.1", port=sim.port, unit_id=3)
            try:
                found = await discover(driver._read)
            finally:
                await driver.close()
        assert found is not None
        assert found.base == base
        assert found.model_ids == (1, 120)
        assert found.models[1].address == base + 2 + 68

    asyncio.run(scenario())


def test_a_device_without_sunspec_is_reported_not_guessed() -> None:
    async def scenario() -> None:
        async with ModbusTcpSimulator(devices={1: _RawImage(40000, [1, 2, 3, 4])}) as sim:
            driver = SunSpecTcpDriver(host="127.0.0.1", port=sim.port, unit_id=1)
            try:
                with pytest.raises(DecodeError, match="no SunSpec marker"):
                    await driver.open()
                absent = SunSpecTcpDriver(host="127.0.0.1", port=sim.port, unit_id=2)
                try:
                    with pytest.raises(DeviceRejected):  # unit 2 is absent: exception 0x0B
                        await absent._registers.read(RegisterKind.HOLDING, 40000, 2, unit_id=2)
                finally:
                    await absent._registers.close()  # a one-off read holds no reference
            finally:
                await driver.close()

    asyncio.run(scenario())


# --- Acceptance 1: pysunspec2 against the simulated inverter -------------------------------------


def _pysunspec2_scan(port: int) -> dict[int, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Scan with pysunspec2; per model id: fixed points' cvalues and each repeating block's."""
    device = SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=5)
    try:
        device.scan()
        result: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        for model in device.model_list:
            fixed = {name: point.cvalue for name, point in model.points.items()}
            blocks: list[dict[str, Any]] = []
            for groups in model.groups.values():
                for group in groups if isinstance(groups, list) else [groups]:
                    blocks.append({name: p.cvalue for name, p in group.points.items()})
            result[model.model_id] = (fixed, blocks)
        return result
    finally:
        device.close()


@pytest.mark.parametrize("when", [NOON, NIGHT], ids=["noon", "night"])
def test_pysunspec2_and_the_gateway_agree_on_the_simulated_inverter(when: float) -> None:
    async def scenario() -> None:
        inverter = SunSpecInverter(seed=7, clock=lambda: when)
        async with ModbusTcpSimulator(devices={1: inverter}) as sim:
            theirs = await asyncio.to_thread(_pysunspec2_scan, sim.port)
            driver = SunSpecTcpDriver(host="127.0.0.1", port=sim.port, unit_id=1)
            try:
                await driver.open()
                ours = await driver.read_all()
                polled = await driver.poll()
            finally:
                await driver.close()
        found = driver.sunspec_map
        assert found is not None
        assert list(found.model_ids) == list(theirs) == [1, 103, 120, 160]
        compared = 0
        for model in ours:
            their_fixed, their_blocks = theirs[model.id]
            pads = {p.name for p in model_definitions()[model.id].fixed.points if p.type == "pad"}
            assert set(model.values) == set(their_fixed) - pads
            for name, value in model.values.items():
                assert value == their_fixed[name], f"model {model.id} point {name}"
                compared += 1
            assert len(model.repeats) == len(their_blocks)
            for ours_block, their_block in zip(model.repeats, their_blocks, strict=True):
                assert dict(ours_block) == their_block
                compared += len(their_block)
        assert compared == 109  # 1: 8, 103: 44, 120: 27, 160: 10 + 2 x 10 points
        # The published metrics carry the same numbers under the documented keys.
        by_id = {m.id: m for m in ours}
        assert polled["ac_power"] == by_id[103].values["W"]
        assert polled["ac_energy"] == by_id[103].values["WH"]
        assert polled["dc_power_2"] == by_id[160].repeats[1]["DCW"]
        assert polled["temperature_transformer"] is None  # not implemented stays no value
        assert set(polled) == set(driver.metrics)
        assert driver.metrics["ac_power"].unit == "W"
        assert driver.metrics["temperature_cabinet"].unit == "°C"
        # SunSpec's "cos()" (model 120 power-factor ratings) is a plain ratio: UCUM "1", as the
        # SDM120 profile's power_factor; the inverters' and meters' PF points are in percent.
        assert driver.metrics["rated_power_factor_q1"].unit == "1"
        assert driver.metrics["ac_power_factor"].unit == "%"
        assert driver.identity["Mn"] == "Canary Solar"
        if when == NOON:
            assert 3000 < polled["ac_power"] < 10000  # type: ignore[operator]
        else:
            assert polled["ac_power"] == 0
            assert polled["state"] == 2  # sleeping

    asyncio.run(scenario())


def test_models_filter_limits_the_metrics() -> None:
    async def scenario() -> None:
        inverter = SunSpecInverter(seed=1, clock=lambda: NOON)
        async with ModbusTcpSimulator(devices={5: inverter}) as sim:
            driver = SunSpecTcpDriver(host="127.0.0.1", port=sim.port, unit_id=5, models=[160])
            try:
                await driver.open()
                values = await driver.poll()
            finally:
                await driver.close()
        assert set(values) == {k for k in values if k.startswith(("dc_", "mppt_"))}
        assert "dc_power_1" in values
        assert "ac_power" not in values

    asyncio.run(scenario())
