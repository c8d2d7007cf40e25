"""ModbusTcpDriver against the in-process pymodbus simulator on an ephemeral loopback port."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from drivers.modbus.driver import ModbusTcpDriver
from drivers.modbus.profiles import Profile, load_profile, profile_from_table
from gateway.errors import DecodeError, DeviceBusy, DeviceError, DeviceRejected, DeviceTimeout
from gateway.model import Value
from simulators.meters import METER_MODELS, Sdm630Meter
from simulators.modbus_tcp import ModbusTcpSimulator
from tests.fakeclock import FakeClock

T = TypeVar("T")

#: Monday 2024-01-15 03:00 CET: night, no PV, the building draws its base load.
MONDAY_NIGHT = datetime(2024, 1, 15, 2, 0, tzinfo=UTC).timestamp()
DEADLINE_S = 5.0


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` in a fresh loop with a hard deadline; fail if it leaves tasks behind."""

    async def guarded() -> T:
        async with asyncio.timeout(DEADLINE_S):
            result = await main
        # Let close callbacks run, then nothing of ours or pymodbus's may still be running.
        for _ in range(5):
            await asyncio.sleep(0)
        leftovers = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftovers, f"leaked tasks: {leftovers}"
        return result

    return asyncio.run(guarded())


async def eventually(attempt: Callable[[], Awaitable[T]], *, within: float = 3.0) -> T:
    """Retry ``attempt`` until it stops raising `DeviceError`, or re-raise after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await attempt()
        except DeviceError:
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(0.01)  # poll interval while waiting on the condition


@pytest.fixture
def sdm630() -> Profile:
    return load_profile("sdm630")


def _driver(sim: ModbusTcpSimulator, unit_id: int, profile: Profile) -> ModbusTcpDriver:
    return ModbusTcpDriver(
        host="127.0.0.1", port=sim.port, unit_id=unit_id, profile=profile, timeout=1.0
    )


def test_decoded_values_equal_what_each_meter_served(sdm630: Profile) -> None:
    clock = FakeClock(MONDAY_NIGHT)
    meters = {1: Sdm630Meter(seed=1, clock=clock), 2: Sdm630Meter(seed=2, clock=clock)}

    async def main() -> dict[int, Mapping[str, Value]]:
        async with ModbusTcpSimulator(devices=meters) as sim:
            assert sim.port > 0
            decoded: dict[int, Mapping[str, Value]] = {}
            for unit_id in meters:
                driver = _driver(sim, unit_id, sdm630)
                await driver.open()
                try:
                    decoded[unit_id] = await driver.poll()
                finally:
                    await driver.close()
                # Two reads per poll (planner), not one per point.
                assert sim.request_count(unit_id) == len(driver.plan) == 2
            return decoded

    decoded = run(main())
    for unit_id, meter in meters.items():
        # Exact: both sides hold the float32 value, decoded independently of the encoder.
        assert decoded[unit_id] == meter.values()
        assert set(decoded[unit_id]) == set(sdm630.metrics)
    assert decoded[1] != decoded[2]


def test_energy_counters_advance_with_power_over_tcp(sdm630: Profile) -> None:
    clock = FakeClock(MONDAY_NIGHT)
    meter = Sdm630Meter(seed=7, clock=clock)

    async def main() -> tuple[Mapping[str, Value], Mapping[str, Value]]:
        async with ModbusTcpSimulator(devices={1: meter}) as sim:
            driver = _driver(sim, 1, sdm630)
            try:
                before = await driver.poll()  # poll() opens the connection itself
                clock.advance(3600.0)
                after = await driver.poll()
            finally:
                await driver.close()
            return before, after

    before, after = run(main())
    assert isinstance(before["power"], float)
    assert before["power"] > 0  # night: importing
    delta = float(after["energy_import"] or 0) - float(before["energy_import"] or 0)
    assert delta == pytest.approx(before["power"] / 1000.0, abs=0.01)
    assert after["energy_export"] == before["energy_export"]


def test_unknown_unit_id_is_rejected_like_a_gateway_would(sdm630: Profile) -> None:
    async def main() -> None:
        async with ModbusTcpSimulator(devices={1: Sdm630Meter()}) as sim:
            driver = _driver(sim, 9, sdm630)
            try:
                with pytest.raises(DeviceRejected, match="0x0b"):
                    await driver.poll()
            finally:
                await driver.close()

    run(main())


def test_exception_responses_map_to_error_classes(sdm630: Profile) -> None:
    async def main() -> None:
        async with ModbusTcpSimulator(devices={1: Sdm630Meter()}) as sim:
            driver = _driver(sim, 1, sdm630)
            try:
                sim.set_exception(1, 6)
                with pytest.raises(DeviceBusy, match="0x06"):
                    await driver.poll()
                sim.set_exception(1, 4)
                with pytest.raises(DeviceRejected, match="0x04"):
                    await driver.poll()
                sim.set_exception(1, None)
                assert len(await driver.poll()) == len(sdm630.points)
            finally:
                await driver.close()

    run(main())


def test_short_answer_is_a_decode_error(sdm630: Profile) -> None:
    async def main() -> None:
        async with ModbusTcpSimulator(devices={1: Sdm630Meter()}) as sim:
            driver = _driver(sim, 1, sdm630)
            try:
                sim.set_short_answer(1, 2)
                # A well-framed answer carrying 74 of the 76 registers asked: rejected by the
                # transport's byte-count check, before anything is decoded.
                with pytest.raises(DecodeError, match="byte count 148, 76 registers") as caught:
                    await driver.poll()
                assert caught.value.fault == "byte_count"
                sim.set_short_answer(1, 0)
                assert len(await driver.poll()) == len(sdm630.points)
            finally:
                await driver.close()

    run(main())


def test_a_read_beyond_the_device_limit_is_rejected() -> None:
    # A profile that ignores the SDM630's 80-register limit: one 96-register read.
    greedy = profile_from_table(
        "greedy",
        {
            "max_gap": 100,
            "points": {
                "voltage_l1": {"register": "input", "address": 0, "type": "float32"},
                "far": {"register": "input", "address": 94, "type": "float32"},
            },
        },
    )

    async def main() -> None:
        async with ModbusTcpSimulator(devices={1: Sdm630Meter()}) as sim:
            driver = _driver(sim, 1, greedy)
            try:
                with pytest.raises(DeviceRejected, match="0x03"):
                    await driver.poll()
            finally:
                await driver.close()

    run(main())


def test_holding_registers_are_read_with_function_code_3() -> None:
    settings = profile_from_table(
        "sdm630-settings",
        {
            "points": {
                "demand_period": {"register": "holding", "address": 0x0002, "type": "float32"},
                "system_type": {"register": "holding", "address": 0x000A, "type": "float32"},
            }
        },
    )

    async def main() -> Mapping[str, Value]:
        async with ModbusTcpSimulator(devices={1: Sdm630Meter()}) as sim:
            driver = _driver(sim, 1, settings)
            try:
                return await driver.poll()
            finally:
                await driver.close()

    assert run(main()) == {"demand_period": 60.0, "system_type": 3.0}


def test_stopped_server_times_out_and_the_driver_reconnects_after_restart(
    sdm630: Profile,
) -> None:
    meter = Sdm630Meter(seed=3, clock=FakeClock(MONDAY_NIGHT))

    async def main() -> None:
        sim = ModbusTcpSimulator(devices={1: meter})
        await sim.start()
        port = sim.port
        driver = _driver(sim, 1, sdm630)
        try:
            assert await driver.poll() == meter.values()
            await sim.stop()
            # The open connection is lost (or refused on reconnect): a timeout either way.
            with pytest.raises(DeviceTimeout):
                await driver.poll()
            with pytest.raises(DeviceTimeout, match="refused"):
                await driver.poll()
            fresh = _driver(sim, 1, sdm630)
            with pytest.raises(DeviceTimeout):
                await fresh.open()
            await fresh.close()

            await sim.start()
            assert sim.port == port  # a restart rebinds the same port
            assert await eventually(driver.poll) == meter.values()
        finally:
            await driver.close()
            await sim.stop()

    run(main())


def test_close_is_idempotent_and_never_raises(sdm630: Profile) -> None:
    async def main() -> None:
        driver = ModbusTcpDriver(host="127.0.0.1", port=1, unit_id=1, profile=sdm630)
        await driver.close()
        await driver.close()

    run(main())


def test_driver_metrics_come_from_the_profile(sdm630: Profile) -> None:
    driver = ModbusTcpDriver(host="127.0.0.1", port=502, unit_id=1, profile=sdm630)
    assert driver.metrics == sdm630.metrics
    assert driver.metrics["energy_import"].unit == "kWh"
    with pytest.raises(ValueError, match="unit_id"):
        ModbusTcpDriver(host="h", port=502, unit_id=256, profile=sdm630)


# --- the meter model itself ------------------------------------------------------------------


def _week(seed: int) -> Iterator[tuple[float, dict[str, float]]]:
    """(local hour, served values) every 15 minutes for a week from Monday 03:00 CET."""
    clock = FakeClock(MONDAY_NIGHT)
    meter = Sdm630Meter(seed=seed, clock=clock)
    for step in range(1, 7 * 96 + 1):
        clock.advance(900.0)
        meter.refresh()
        yield (3.0 + step / 4) % 24, dict(meter.values())


def test_meter_model_is_plausible_and_consistent() -> None:
    previous: dict[str, float] | None = None
    night, all_powers = [], []
    first_export = None
    for hour, values in _week(seed=11):
        for phase in (1, 2, 3):
            volts = values[f"voltage_l{phase}"]
            assert 230 * 0.97 <= volts <= 230 * 1.03
            watts = values[f"power_l{phase}"]
            assert values[f"current_l{phase}"] == pytest.approx(abs(watts) / (volts * 0.95))
        assert 49.95 <= values["frequency"] <= 50.05
        assert values["power"] == pytest.approx(
            values["power_l1"] + values["power_l2"] + values["power_l3"], abs=0.01
        )
        assert values["energy_total"] == pytest.approx(
            values["energy_import"] + values["energy_export"], abs=0.01
        )
        assert all(math.isfinite(v) for v in values.values())
        if previous is not None:
            assert values["energy_import"] >= previous["energy_import"]
            assert values["energy_export"] >= previous["energy_export"]
        previous = values
        first_export = values["energy_export"] if first_export is None else first_export
        all_powers.append(values["power"])
        if 0 <= hour < 5:
            night.append(values["power"])
    # Night base load ≈ 1.5 kW; weekday peaks well above; the roof PV exports at weekend noons.
    assert all(1000 < p < 2500 for p in night)
    assert max(all_powers) > 6000
    assert min(all_powers) < 0
    assert previous is not None and first_export is not None
    assert previous["energy_export"] > first_export


def test_meter_model_is_deterministic_per_seed() -> None:
    assert list(_week(seed=5))[:20] == list(_week(seed=5))[:20]
    assert list(_week(seed=5))[:20] != list(_week(seed=6))[:20]


def test_meter_registry_builds_models_by_profile_name() -> None:
    meter = METER_MODELS["sdm630"](seed=1, clock=FakeClock(MONDAY_NIGHT))
    assert isinstance(meter, Sdm630Meter)
    assert set(meter.values()) == set(load_profile("sdm630").metrics)
