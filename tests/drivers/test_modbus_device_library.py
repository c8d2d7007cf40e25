"""Every shipped profile against its independent simulator model, over a real loopback socket.

The simulators encode their register maps with their own tables (`simulators.meters`), so a
wrong address, type or word order in a profile shows up here as a wrong number. The TUF-2000M
case also pins the classic failure: its CDAB floats read as ABCD give a plausible-looking but
wrong number, never an error.
"""

from __future__ import annotations

import asyncio

import pytest

from drivers.modbus.codec import DataType, WordOrder, decode
from drivers.modbus.driver import ModbusTcpDriver
from drivers.modbus.profiles import available_profiles, load_profile
from simulators.meters import METER_MODELS, Tuf2000mWaterMeter, float32_cdab
from simulators.modbus_tcp import ModbusTcpSimulator

NOON = 1_718_021_600.0


def test_every_shipped_profile_has_a_simulator() -> None:
    assert set(available_profiles()) == set(METER_MODELS)
    assert {"sdm120", "sdm630", "sdm72", "tuf2000m"} <= set(available_profiles())


@pytest.mark.parametrize("name", sorted(METER_MODELS))
def test_profile_decodes_exactly_what_the_simulator_serves(name: str) -> None:
    model = METER_MODELS[name](seed=3, clock=lambda: NOON)

    async def scenario() -> dict[str, object]:
        async with ModbusTcpSimulator(devices={9: model}) as sim:
            driver = ModbusTcpDriver(
                host=sim.host, port=sim.port, unit_id=9, profile=load_profile(name)
            )
            try:
                return dict(await driver.poll())
            finally:
                await driver.close()

    values = asyncio.run(scenario())
    expected = model.values()  # type: ignore[attr-defined]
    assert values == expected
    assert set(values) == set(load_profile(name).metrics)


def test_tuf2000m_word_order_trap() -> None:
    hi_first = list(reversed(float32_cdab(1234.5)))
    assert float32_cdab(1234.5) == (0x5000, 0x449A)  # 1234.5 = 0x449A5000, low word first
    assert decode(list(float32_cdab(1234.5)), DataType.FLOAT32, WordOrder.CDAB) == 1234.5
    wrong = decode(list(float32_cdab(1234.5)), DataType.FLOAT32, WordOrder.ABCD)
    assert wrong is not None and wrong != 1234.5
    assert decode(hi_first, DataType.FLOAT32, WordOrder.ABCD) == 1234.5
    profile = load_profile("tuf2000m")
    orders = {p.key: p.order for p in profile.points if p.data_type is DataType.FLOAT32}
    assert set(orders.values()) == {WordOrder.CDAB}
    assert Tuf2000mWaterMeter(clock=lambda: NOON).values()["signal_quality"] == 85
