"""``--simulate`` and ``python -m simulators`` for Modbus RTU lines: PTY pairs, one line per port."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from drivers.modbus.engine import ModbusDriver
from gateway.config import ModbusDevice, RtuTransport, parse_config
from gateway.registry import build_driver
from gateway.simulate import simulated
from simulators.__main__ import SpecError, spec_from_toml
from simulators.meters import Sdm630Meter
from simulators.site import SimulatedSite

CONFIG = {
    "site": {"id": "kg-test"},
    "devices": [
        {
            "id": f"meter-{unit}",
            "driver": "modbus",
            "profile": "sdm630",
            "unit_id": unit,
            "timeout": 1.0,
            "transport": {"kind": "rtu", "port": "/dev/ttyUSB0", "baudrate": 19200},
        }
        for unit in (1, 2)
    ],
}


def test_simulate_points_every_rtu_device_of_a_port_at_one_pty_line() -> None:
    config = parse_config(CONFIG, source="test")
    assert {d.bus_key() for d in config.devices} == {"modbus-rtu:/dev/ttyUSB0"}

    async def main() -> None:
        async with simulated(config) as (redirected, buses, site):
            devices = [d for d in redirected.devices if isinstance(d, ModbusDevice)]
            ports = {d.transport.port for d in devices if isinstance(d.transport, RtuTransport)}
            assert ports == {site.rtu_paths["/dev/ttyUSB0"]}
            assert ports.pop().startswith("/dev/pts/")
            drivers = [build_driver(d, buses) for d in devices]
            # Both drivers share the one line object of the port (one bus, one serial client).
            assert len({id(buses.buses[d.transport.line_key()]) for d in devices}) == 1  # type: ignore[union-attr]
            for device, driver in zip(devices, drivers, strict=True):
                assert isinstance(driver, ModbusDriver)
                await driver.open()
                try:
                    values = await driver.poll()
                finally:
                    await driver.close()
                model = site.models[device.id]
                assert isinstance(model, Sdm630Meter)
                # The meter refreshes on every request: compare the slowly moving values only.
                assert values["frequency"] == pytest.approx(50.0, abs=0.06)
                assert values["energy_import"] == pytest.approx(model.values()["energy_import"])

    asyncio.run(main())


def test_simulators_cli_links_the_configured_tmp_port_to_its_pty(tmp_path: Path) -> None:
    port = str(tmp_path / "ttyRS485")
    data = {
        "devices": [
            {**d, "transport": {**d["transport"], "port": port}}  # type: ignore[dict-item]
            for d in CONFIG["devices"]  # type: ignore[union-attr]
        ]
    }
    if not port.startswith("/tmp/"):
        pytest.skip("the temporary directory is not under /tmp")
    spec = spec_from_toml(data)
    assert [(line.port, line.baudrate, sorted(line.units), line.link) for line in spec.rtu] == [
        (port, 19200, [1, 2], True)
    ]

    seen: dict[str, str] = {}

    async def main() -> None:
        site = SimulatedSite(spec)
        await site.start(ephemeral=False)
        try:
            seen["link"] = await asyncio.to_thread(os.path.realpath, port)
            seen["pty"] = site.rtu_paths[port]
        finally:
            await site.stop()

    asyncio.run(main())
    assert seen["link"] == seen["pty"]
    assert not os.path.lexists(port)


def test_simulators_cli_refuses_a_hardware_serial_port() -> None:
    with pytest.raises(SpecError, match="under /tmp/"):
        spec_from_toml(CONFIG)
