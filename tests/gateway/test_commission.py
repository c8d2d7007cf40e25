"""Commissioning against the TCP simulator over real sockets: `gateway scan` and `gateway read`.

Acceptance 5 (TCP part): the scan finds every simulated device (Eastron meters and the water
meter on several unit ids, and the SunSpec inverter) with the right unit ids and profiles, reports
nothing where no device is, and prints a snippet that is itself a valid configuration.
"""

from __future__ import annotations

import asyncio
import threading
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import pytest

from drivers.modbus.tcp_client import ModbusTcpRegisters
from gateway import cli
from gateway.commission import (
    Found,
    _format,
    config_snippet,
    parse_units,
    reading_table,
    scan_units,
)
from gateway.config import parse_config
from gateway.model import MetricSpec
from simulators.meters import (
    ModbusDeviceModel,
    Sdm72Meter,
    Sdm120Meter,
    Sdm630Meter,
    Tuf2000mWaterMeter,
)
from simulators.modbus_tcp import ModbusTcpSimulator
from simulators.sunspec import SunSpecInverter

ROOT = Path(__file__).resolve().parents[2]
#: A weekday noon in June: meters, inverter and water all busy.
NOON = 1_718_021_600.0


def site_devices() -> dict[int, ModbusDeviceModel]:
    clock = lambda: NOON  # noqa: E731 - a fixed instant: deterministic values
    return {
        1: Sdm630Meter(seed=1, clock=clock),
        2: Sdm72Meter(seed=2, clock=clock),
        3: Sdm120Meter(seed=3, clock=clock),
        4: Tuf2000mWaterMeter(seed=4, clock=clock),
        7: SunSpecInverter(seed=7, clock=clock),
        12: Sdm630Meter(seed=12, clock=clock),
    }


EXPECTED = {1: "sdm630", 2: "sdm72", 3: "sdm120", 4: "tuf2000m", 7: "sunspec", 12: "sdm630"}


def _kind(found: Found) -> str:
    return "sunspec" if found.driver == "sunspec" else str(found.profile)


def test_scan_finds_every_simulated_device_with_its_unit_id() -> None:
    async def scenario() -> list[Found]:
        async with ModbusTcpSimulator(devices=site_devices()) as sim:
            seen: list[int] = []
            async with ModbusTcpRegisters(host=sim.host, port=sim.port, timeout=1.0) as reader:
                found = await scan_units(
                    reader, list(range(1, 16)), progress=lambda d, t, u, f: seen.append(u)
                )
            assert seen == list(range(1, 16))
            return found

    found = asyncio.run(scenario())
    assert {f.unit_id: _kind(f) for f in found} == EXPECTED
    inverter = next(f for f in found if f.driver == "sunspec")
    assert inverter.models == (1, 103, 120, 160)
    assert "Canary Solar" in inverter.note


def test_snippet_is_a_valid_configuration() -> None:
    found = [
        Found(unit_id=1, driver="modbus", profile="sdm630", note="x"),
        Found(unit_id=7, driver="sunspec", models=(1, 103)),
        Found(unit_id=9, driver="modbus", note="answers, but matches no shipped profile"),
    ]
    text = config_snippet(
        found, transport='{ kind = "tcp", host = "10.0.0.9", port = 502 }', where="10.0.0.9:502"
    )
    data = tomllib.loads('[site]\nid = "kg"\n' + text)
    config = parse_config(data, source="snippet")
    assert [(d.id, d.driver) for d in config.devices] == [
        ("unit-1-sdm630", "modbus"),
        ("unit-7-sunspec", "sunspec"),
    ]
    assert "# unit 9 answers, but matches no shipped profile" in text


def test_parse_units() -> None:
    assert parse_units("1-3,7, 2") == [1, 2, 3, 7]
    with pytest.raises(ValueError, match=r"1\.\.247"):
        parse_units("0-3")
    with pytest.raises(ValueError, match=r"1\.\.247"):
        parse_units("200-300")


class Servable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@contextmanager
def served_in_thread(simulator: Servable) -> Iterator[None]:
    """Run ``simulator`` on an event loop in a background thread (the CLI runs its own loop
    with asyncio.run); stops it and joins the thread afterwards."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="modbus-sim-loop")
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(simulator.start(), loop).result(timeout=10)
        yield
    finally:
        asyncio.run_coroutine_threadsafe(simulator.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@contextmanager
def simulator_thread(devices: Mapping[int, ModbusDeviceModel]) -> Iterator[int]:
    """Serve ``devices`` over Modbus TCP from a background thread; yields the port."""
    simulator = ModbusTcpSimulator(devices=devices)
    with served_in_thread(simulator):
        yield simulator.port


def test_gateway_scan_command_prints_progress_and_a_snippet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with simulator_thread(site_devices()) as port:
        code = cli.main(["scan", "--host", "127.0.0.1", "--port", str(port), "--units", "1-8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "unit   5 (5/8): no answer" in err
    assert "unit   7 (7/8): SunSpec models [1, 103, 120, 160]" in err
    data = tomllib.loads('[site]\nid = "kg"\n' + out)
    config = parse_config(data, source="scan output")
    assert {d.unit_id: d.id for d in config.devices} == {
        1: "unit-1-sdm630",
        2: "unit-2-sdm72",
        3: "unit-3-sdm120",
        4: "unit-4-tuf2000m",
        7: "unit-7-sunspec",
    }
    assert all(d.transport.port == port for d in config.devices)


def test_gateway_scan_reports_an_empty_range(capsys: pytest.CaptureFixture[str]) -> None:
    with simulator_thread(site_devices()) as port:
        code = cli.main(["scan", "--host", "127.0.0.1", "--port", str(port), "--units", "20-21"])
    assert code == 1
    assert "nothing answered" in capsys.readouterr().err


def test_gateway_read_prints_one_poll_as_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meter = Sdm630Meter(seed=5, clock=lambda: NOON)
    water = Tuf2000mWaterMeter(seed=6, clock=lambda: NOON)
    with simulator_thread({1: meter, 2: water}) as port:
        config = tmp_path / "site.toml"
        config.write_text(
            '[site]\nid = "kg"\n'
            "[[devices]]\n"
            'id = "main-meter"\ndriver = "modbus"\nprofile = "sdm630"\nunit_id = 1\n'
            f'transport = {{ kind = "tcp", host = "127.0.0.1", port = {port} }}\n'
            "[[devices]]\n"
            'id = "water"\ndriver = "modbus"\nunit_id = 2\n'
            f'transport = {{ kind = "tcp", host = "127.0.0.1", port = {port} }}\n'
            "points = [\n"
            '  { key = "volume", register = "holding", address = 114, type = "float32",'
            ' order = "CDAB", unit = "m³" },\n'
            '  { key = "quality", register = "holding", address = 91, type = "uint16" },\n'
            "]\n"
        )
        assert cli.main(["read", "--config", str(config), "main-meter"]) == 0
        meter_out = capsys.readouterr().out
        assert cli.main(["read", "--config", str(config), "water"]) == 0
        water_out = capsys.readouterr().out
        assert cli.main(["read", "--config", str(config), "nope"]) == 2
        assert "no device 'nope'; devices: main-meter, water" in capsys.readouterr().err
    lines = meter_out.splitlines()
    assert lines[0] == "main-meter (modbus)"
    assert lines[1].split() == ["metric", "value", "unit"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert rows.keys() == meter.values().keys()
    for key, value in meter.values().items():
        assert rows[key][0] == _format(value), key
    assert rows["voltage_l1"][1] == "V"
    assert rows["energy_import"][1] == "kWh"
    # Columns are aligned: every value ends in the same column.
    table = [lines[1], *lines[3:]]
    assert len({line.index(" " + line.split()[1]) + len(line.split()[1]) for line in table}) == 1
    # The user-declared point table read the water meter's CDAB float correctly.
    water_rows = {line.split()[0]: line.split()[1:] for line in water_out.splitlines()[3:]}
    assert water_rows["volume"] == [_format(water.values()["volume_forward"]), "m³"]
    assert water_rows["quality"] == ["85"]


def test_gateway_read_simulated_inverter_from_the_demo_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(
        ["read", "--simulate", "--config", str(ROOT / "gateway/demo.toml"), "b1-pv-inverter"]
    )
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:]}
    assert rows["ac_power"][-1] == "W"
    assert rows["ac_energy"][-1] == "Wh"
    assert rows["dc_power_2"][-1] == "W"
    assert rows["temperature_transformer"] == ["—", "°C"]


def test_reading_table_marks_no_value() -> None:
    table = reading_table(
        {"a": 1.5, "b": None},
        {"a": MetricSpec(key="a", unit="W"), "b": MetricSpec(key="b", unit="")},
    )
    assert table.splitlines() == [
        "metric  value  unit",
        "------  -----  ----",
        "a         1.5  W",
        "b           —",
    ]
