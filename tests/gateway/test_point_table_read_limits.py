"""User point tables set the device's read limits (issue 15): ``max_gap`` and
``max_registers_per_read`` reach the planner, from the TOML through the registry's driver.

The device is `tests.drivers.register_image_server`, written for the tests: like many real
meters, it answers exception 02 (illegal data address) to any read that touches an undefined
register and exception 03 to a count above its own limit.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from gateway.commission import read_once
from gateway.config import ModbusDevice, load_config
from gateway.errors import DeviceRejected
from gateway.registry import BusRegistry, build_driver
from tests.drivers.register_image_server import RegisterImageServer

#: energy (uint32 at 0-1), flow (float32 at 4-5); 2-3 and 8-9 are undefined; volume (uint32)
#: at 10-11. The default max_gap (16) would read 0-11 in one request.
IMAGE = {
    0: 0x0001,
    1: 0x86A0,  # 100000
    4: struct.unpack(">HH", struct.pack(">f", 2.5))[0],
    5: struct.unpack(">HH", struct.pack(">f", 2.5))[1],
    6: 0,
    7: 7,
    10: 0,
    11: 42,
}
POINTS = """points = [
  { key = "energy", register = "holding", address = 0, type = "uint32", unit = "kWh" },
  { key = "flow", register = "holding", address = 4, type = "float32", unit = "m³/h" },
  { key = "status", register = "holding", address = 6, type = "uint32" },
  { key = "volume", register = "holding", address = 10, type = "uint32", unit = "m³" },
]"""


def _device(tmp_path: Path, port: int, limits: str) -> ModbusDevice:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[site]\nid = "kg-test"\n[[devices]]\nid = "heat-meter"\ndriver = "modbus"\n'
        f'{POINTS}\n{limits}\ntransport = {{ kind = "tcp", host = "127.0.0.1", port = {port} }}\n'
    )
    device = load_config(path).devices[0]
    assert isinstance(device, ModbusDevice)
    return device


def test_max_gap_zero_reads_a_device_that_rejects_undefined_registers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with RegisterImageServer(holding=IMAGE, units={1}) as server:
            default = _device(tmp_path, server.port, "")
            with pytest.raises(DeviceRejected) as info:
                await read_once(build_driver(default, BusRegistry()))
            assert info.value.code == 0x02  # one read across 2-3 and 8-9: refused forever
            server.requests.clear()
            strict = _device(tmp_path, server.port, "max_gap = 0")
            assert strict.point_table()["max_gap"] == 0
            values = await read_once(build_driver(strict, BusRegistry()))
            reads = [(r.address, r.count) for r in server.requests]
        assert values == {"energy": 100000, "flow": 2.5, "status": 7, "volume": 42}
        assert reads == [(0, 2), (4, 4), (10, 2)]  # 4-7 is contiguous: no gap to refuse

    asyncio.run(scenario())


def test_max_registers_per_read_keeps_reads_within_the_device_limit(tmp_path: Path) -> None:
    image = {a: a + 1 for a in range(12)}  # every register defined

    async def scenario() -> None:
        async with RegisterImageServer(holding=image, units={1}, max_count=4) as server:
            with pytest.raises(DeviceRejected) as info:
                await read_once(build_driver(_device(tmp_path, server.port, ""), BusRegistry()))
            assert info.value.code == 0x03  # 12 registers asked, the device takes 4
            server.requests.clear()
            limited = _device(tmp_path, server.port, "max_registers_per_read = 4")
            values = await read_once(build_driver(limited, BusRegistry()))
            counts = [r.count for r in server.requests]
        assert values["energy"] == (1 << 16) + 2
        assert values["volume"] == (11 << 16) + 12
        assert counts and max(counts) <= 4

    asyncio.run(scenario())
