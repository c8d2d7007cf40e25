"""Acceptance 1 for the PMSA003I: the real, unmodified ``adafruit_pm25`` reads the simulated chip.

Every fault gives "no value" plus a counted error, never a wrong number: CRC/checksum and header
errors are `DecodeError`, a NACK is `DeviceTimeout`, an absent chip fails at open, warm-up gives
``None`` for every metric, a stuck chip is `DeviceStuck`. The driver's ``time.sleep`` (PM25_I2C
retries 5 x 1 s for an absent chip) is the fake clock's ``advance``; the driver's warm-up clock is
the same fake clock.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable

import adafruit_pm25.i2c
import pytest

from drivers.sensors.i2c_bus import RemoteI2C
from drivers.sensors.pmsa003i import Pmsa003iDriver
from gateway.errors import DecodeError, DeviceError, DeviceStuck, DeviceTimeout
from simulators.i2c import SimI2CBus
from simulators.i2c_server import I2CBusServer
from simulators.particles import PmSample
from simulators.pmsa003i import ADDRESS, WARMUP_S, Pmsa003iChip
from tests.fakeclock import FakeClock

START = 50_000.0
AIR = PmSample(pm1=18.0, pm25=42.0, pm10=61.0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock(START)
    monkeypatch.setattr(adafruit_pm25.i2c, "time", types.SimpleNamespace(sleep=clock.advance))
    return clock


@pytest.fixture
def chip(clock: FakeClock) -> Pmsa003iChip:
    return Pmsa003iChip(clock=clock, environment=lambda t: AIR)


@pytest.fixture
def bus(chip: Pmsa003iChip) -> SimI2CBus:
    bus = SimI2CBus()
    bus.attach(ADDRESS, chip)
    return bus


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


async def warm(driver: Pmsa003iDriver, clock: FakeClock) -> None:
    await driver.open()
    clock.advance(WARMUP_S)


def test_metrics_and_units(bus: SimI2CBus) -> None:
    metrics = Pmsa003iDriver(bus=bus).metrics
    assert {k: m.unit for k, m in metrics.items() if k.startswith("pm")} == {
        "pm1": "µg/m³",
        "pm25": "µg/m³",
        "pm10": "µg/m³",
        "pm1_cf1": "µg/m³",
        "pm25_cf1": "µg/m³",
        "pm10_cf1": "µg/m³",
    }
    counts = [k for k in metrics if k.startswith("particles_")]
    assert counts == [f"particles_{s}um" for s in ("03", "05", "10", "25", "50", "100")]
    assert all(metrics[k].unit == "/dL" for k in counts)


def test_reads_the_atmospheric_values_through_the_real_driver(
    bus: SimI2CBus, chip: Pmsa003iChip, clock: FakeClock
) -> None:
    async def scenario() -> None:
        driver = Pmsa003iDriver(bus=bus, clock=clock)
        await warm(driver, clock)
        values = await driver.poll()
        assert (values["pm1"], values["pm25"], values["pm10"]) == (18, 42, 61)
        assert (values["pm1_cf1"], values["pm25_cf1"], values["pm10_cf1"]) == (18, 48, 76)
        counts = [values[k] for k in driver.metrics if k.startswith("particles_")]
        assert all(isinstance(c, int) for c in counts)
        assert counts == sorted(counts, reverse=True)  # type: ignore[type-var]
        await driver.close()

    run(scenario)
    assert chip.reads == 1


def test_warm_up_gives_no_value_then_values(
    bus: SimI2CBus, chip: Pmsa003iChip, clock: FakeClock
) -> None:
    async def scenario() -> None:
        driver = Pmsa003iDriver(bus=bus, clock=clock)
        await driver.open()
        for _ in range(3):
            clock.advance(9.0)
            assert driver.warming_up
            values = await driver.poll()
            assert set(values) == set(driver.metrics)
            assert all(v is None for v in values.values())  # the chip's half-speed numbers hidden
        clock.advance(3.0)
        assert not driver.warming_up
        assert (await driver.poll())["pm25"] == 42
        # A reopen (after a NACK, e.g. a brown-out) restarts the warm-up.
        await driver.close()
        chip.power_on()
        await driver.open()
        assert (await driver.poll())["pm25"] is None

    run(scenario)
    assert chip.reads == 5  # every poll read and checked a frame, warm-up or not


def test_a_warm_up_of_zero_reports_at_once(bus: SimI2CBus, clock: FakeClock) -> None:
    async def scenario() -> None:
        driver = Pmsa003iDriver(bus=bus, clock=clock, warmup_s=0)
        await driver.open()
        assert (await driver.poll())["pm25"] == 0  # the sim's fan really is at zero: on purpose

    run(scenario)


@pytest.mark.parametrize(
    ("knob", "message"),
    [("fault_checksum", "Invalid PM2.5 checksum"), ("fault_header", "Invalid PM2.5 header")],
)
def test_checksum_and_header_faults_are_decode_errors(
    bus: SimI2CBus, chip: Pmsa003iChip, clock: FakeClock, knob: str, message: str
) -> None:
    async def scenario() -> None:
        driver = Pmsa003iDriver(bus=bus, clock=clock)
        await warm(driver, clock)
        setattr(chip, knob, 1)
        with pytest.raises(DecodeError, match=message) as info:
            await driver.poll()
        assert info.value.kind == "decode"
        assert (await driver.poll())["pm25"] == 42  # the next frame is clean again

    run(scenario)


def test_nack_is_a_device_timeout(bus: SimI2CBus, chip: Pmsa003iChip, clock: FakeClock) -> None:
    async def scenario() -> None:
        driver = Pmsa003iDriver(bus=bus, clock=clock)
        await warm(driver, clock)
        chip.fault_nack = 1
        with pytest.raises(DeviceTimeout, match="not acknowledged") as info:
            await driver.poll()
        assert isinstance(info.value.__cause__, RuntimeError)
        chip.powered = False
        with pytest.raises(DeviceTimeout):
            await driver.poll()
        await driver.close()

    run(scenario)


def test_absent_chip_fails_at_open_without_the_five_retries(clock: FakeClock) -> None:
    async def scenario() -> None:
        driver = Pmsa003iDriver(bus=SimI2CBus(), clock=clock)
        before = clock()
        with pytest.raises(DeviceTimeout, match="no device answers"):
            await driver.open()
        assert clock() == before  # no PM25_I2C retry loop holding the bus task
        with pytest.raises(DeviceError):
            await driver.poll()
        await driver.close()

    run(scenario)


def test_stuck_chip_is_withheld_and_counted_until_it_moves(
    bus: SimI2CBus, chip: Pmsa003iChip, clock: FakeClock
) -> None:
    chip_with_noise = Pmsa003iChip(clock=clock, seed=9)
    noisy = SimI2CBus()
    noisy.attach(ADDRESS, chip_with_noise)

    async def scenario() -> None:
        driver = Pmsa003iDriver(bus=noisy, clock=clock, stuck_polls=3)
        await warm(driver, clock)
        for _ in range(5):  # a healthy chip never trips the check
            clock.advance(10)
            assert (await driver.poll())["pm25"] is not None
        chip_with_noise.stuck = True  # freezes the frame the last poll read
        clock.advance(10)
        assert (await driver.poll())["pm25"] is not None  # twice the same: still published
        for _ in range(2):
            clock.advance(10)
            with pytest.raises(DeviceStuck, match=r"[34] times") as info:
                await driver.poll()
            assert info.value.kind == "stuck" and isinstance(info.value, DecodeError)
        chip_with_noise.stuck = False
        clock.advance(10)
        assert (await driver.poll())["pm25"] is not None

    run(scenario)


def test_reads_through_the_tcp_bus_server(
    bus: SimI2CBus, chip: Pmsa003iChip, clock: FakeClock
) -> None:
    async def scenario() -> None:
        async with I2CBusServer(bus=bus) as server:
            remote = RemoteI2C("127.0.0.1", server.port)
            try:
                driver = Pmsa003iDriver(bus=remote, clock=clock)
                await warm(driver, clock)
                assert (await driver.poll())["pm10"] == 61
                chip.fault_checksum = 1
                with pytest.raises(DecodeError):
                    await driver.poll()
                chip.fault_nack = 1
                with pytest.raises(DeviceTimeout):
                    await driver.poll()
                await driver.close()
            finally:
                remote.deinit()

    run(scenario)


def test_clean_air_for_hours_is_not_stuck_but_a_frozen_frame_still_is(clock: FakeClock) -> None:
    """HEPA-clean air (issue 15): the same all-zero frame for four hours of 10 s polls is a
    legitimate reading, published every time; a frame frozen on dust is still caught."""
    air = {"now": PmSample(pm1=0.0, pm25=0.0, pm10=0.0)}
    chip = Pmsa003iChip(clock=clock, environment=lambda t: air["now"])
    bus = SimI2CBus()
    bus.attach(ADDRESS, chip)

    async def scenario() -> None:
        driver = Pmsa003iDriver(bus=bus, clock=clock, stuck_polls=10)
        await warm(driver, clock)
        frames = set()
        for _ in range(4 * 360):
            clock.advance(10)
            values = await driver.poll()  # never DeviceStuck
            frames.add(tuple(values.values()))
        assert frames == {(0,) * 12}  # really the very same frame, 1440 times
        air["now"] = AIR  # cooking: dust, and counts that change from frame to frame
        for _ in range(3):
            clock.advance(10)
            assert (await driver.poll())["pm25"] == 42
        chip.stuck = True  # the frame the last poll read freezes: that was the 1st of 10
        for _ in range(8):
            clock.advance(10)
            assert (await driver.poll())["pm25"] == 42
        with pytest.raises(DeviceStuck, match="10 times"):
            clock.advance(10)
            await driver.poll()
        chip.stuck = False
        air["now"] = PmSample(pm1=0.0, pm25=0.0, pm10=0.0)
        clock.advance(10)
        assert (await driver.poll())["pm25"] == 0  # clean again: published at once

    run(scenario)
    assert chip.reads == 4 * 360 + 3 + 8 + 1 + 1
