"""The real, unmodified adafruit_scd4x driver reading the simulated chip, in-process and over TCP.

The Adafruit driver's ``time.sleep`` is replaced by the fake clock's ``advance``: its command
delays (0.5 s after a stop) then pass in simulated time, exactly as long as the chip needs.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import types
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import adafruit_scd4x
import pytest

from drivers.sensors.i2c_bus import RemoteI2C, open_i2c_bus
from drivers.sensors.scd4x import Scd4xDriver
from gateway.errors import DecodeError, DeviceError, DeviceNotReady, DeviceTimeout
from simulators.classroom import ClassroomAir
from simulators.i2c import SimI2CBus
from simulators.i2c_server import I2CBusServer
from simulators.scd4x import ADDRESS, Mode, Scd4xChip
from tests.fakeclock import FakeClock

START = 50_000.0  # mid-lesson in ClassroomAir's timetable


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock(START)
    monkeypatch.setattr(adafruit_scd4x, "time", types.SimpleNamespace(sleep=clock.advance))
    return clock


@pytest.fixture
def air() -> ClassroomAir:
    return ClassroomAir(seed=7)


@pytest.fixture
def chip(clock: FakeClock, air: ClassroomAir) -> Scd4xChip:
    return Scd4xChip(clock=clock, environment=air)


@pytest.fixture
def bus(chip: Scd4xChip) -> SimI2CBus:
    bus = SimI2CBus()
    bus.attach(ADDRESS, chip)
    return bus


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def expected(air: ClassroomAir, t: float) -> dict[str, Any]:
    co2, temperature, humidity = air(t)
    return {"co2": round(co2), "temperature": temperature, "humidity": humidity}


def assert_matches(values: Any, want: dict[str, Any]) -> None:
    assert values["co2"] == want["co2"]
    assert isinstance(values["co2"], int)
    assert values["temperature"] == pytest.approx(want["temperature"], abs=0.011)
    assert values["humidity"] == pytest.approx(want["humidity"], abs=0.011)


def test_metrics_declare_their_units(bus: SimI2CBus) -> None:
    metrics = Scd4xDriver(bus=bus).metrics
    assert {key: spec.unit for key, spec in metrics.items()} == {
        "co2": "ppm",
        "temperature": "°C",
        "humidity": "%RH",
    }


def test_reads_the_environment_through_the_sim_bus(
    bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock, air: ClassroomAir
) -> None:
    async def scenario() -> None:
        driver = Scd4xDriver(bus=bus)
        await driver.open()
        started = clock()
        assert chip.mode is Mode.PERIODIC
        clock.advance(5.0)
        assert_matches(await driver.poll(), expected(air, started + 5.0))
        clock.advance(5.0)
        assert_matches(await driver.poll(), expected(air, started + 10.0))
        await driver.close()
        assert chip.mode is Mode.IDLE

    run(scenario)
    stop, start, ready, read = (bytes.fromhex(h) for h in ("3f86", "21b1", "e4b8", "ec05"))
    # constructor stop, start, then per poll exactly one data-ready check and one read.
    assert chip.log == [stop, start, ready, read, ready, read, stop]


def test_one_poll_is_one_ready_check_and_at_most_one_read(
    bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock, air: ClassroomAir
) -> None:
    """Each I2C command per poll, counted on the simulated chip (issue 15): the Adafruit value
    properties would send a data-ready check each; a poll sends one, then one read_measurement,
    and CO2, temperature and humidity come from that one measurement."""
    ready, read = bytes.fromhex("e4b8"), bytes.fromhex("ec05")

    async def scenario() -> None:
        driver = Scd4xDriver(bus=bus, monotonic=clock)
        await driver.open()
        started = clock()
        for period in range(1, 13):  # a minute of 5 s measurements
            before = len(chip.log)
            with pytest.raises(DeviceNotReady):
                await driver.poll()  # asked too early: the check alone, nothing read
            assert chip.log[before:] == [ready]
            clock.advance(5.0)
            before = len(chip.log)
            assert_matches(await driver.poll(), expected(air, started + 5.0 * period))
            assert chip.log[before:] == [ready, read]
        await driver.close()

    run(scenario)


def test_not_ready_between_measurements_then_times_out(
    bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock
) -> None:
    async def scenario() -> None:
        driver = Scd4xDriver(bus=bus, data_timeout=6.0, monotonic=clock)
        await driver.open()
        with pytest.raises(DeviceNotReady) as info:
            await driver.poll()  # the first measurement is 5 s away: ask again soon
        assert 0 < info.value.retry_after <= 1
        clock.advance(5.0)
        await driver.poll()
        with pytest.raises(DeviceNotReady):
            await driver.poll()  # that measurement was already returned
        bus.writeto(0x62, bytes.fromhex("3f86"))  # the chip stops measuring behind our back
        clock.advance(6.5)
        with pytest.raises(DeviceTimeout, match=r"no new data within 6\.0 s"):
            await driver.poll()
        await driver.close()

    run(scenario)


def test_low_power_mode_starts_the_30_s_measurement(
    bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock
) -> None:
    async def scenario() -> None:
        driver = Scd4xDriver(bus=bus, low_power=True, data_timeout=61.0, monotonic=clock)
        await driver.open()
        assert chip.mode is Mode.LOW_POWER
        clock.advance(29.0)
        with pytest.raises(DeviceNotReady):
            await driver.poll()
        clock.advance(1.0)
        await driver.poll()
        await driver.close()

    run(scenario)
    assert chip.log[1] == bytes.fromhex("21ac")


def test_crc_fault_is_a_decode_error(bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock) -> None:
    async def scenario() -> None:
        driver = Scd4xDriver(bus=bus)
        await driver.open()
        clock.advance(5.0)
        chip.fault_crc = 1
        with pytest.raises(DecodeError) as info:
            await driver.poll()
        assert isinstance(info.value.__cause__, RuntimeError)
        await driver.poll()  # the next reply is clean again
        await driver.close()

    run(scenario)


def test_nack_is_a_device_timeout(bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock) -> None:
    async def scenario() -> None:
        driver = Scd4xDriver(bus=bus)
        await driver.open()
        clock.advance(5.0)
        chip.fault_nack = 1  # the command write of data_ready
        with pytest.raises(DeviceTimeout) as info:
            await driver.poll()
        assert isinstance(info.value.__cause__, RuntimeError)
        bus.detach(ADDRESS)  # now the read of data_ready's reply as well
        with pytest.raises(DeviceTimeout):
            await driver.poll()
        await driver.close()  # never raises, even with the chip gone

    run(scenario)


def test_absent_chip_fails_at_open(clock: FakeClock) -> None:
    async def scenario() -> None:
        driver = Scd4xDriver(bus=SimI2CBus())
        with pytest.raises(DeviceTimeout, match="no device"):
            await driver.open()
        with pytest.raises(DeviceError):
            await driver.poll()
        await driver.close()

    run(scenario)


def test_open_is_refused_while_the_chip_is_busy(
    bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock
) -> None:
    # A gateway restarted within 500 ms of a stop: the probe is NACKed, open fails cleanly.
    bus.writeto(ADDRESS, bytes.fromhex("3f86"))

    async def scenario() -> None:
        with pytest.raises(DeviceTimeout):
            await Scd4xDriver(bus=bus).open()

    run(scenario)


def test_reads_through_the_tcp_server(
    bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock, air: ClassroomAir
) -> None:
    async def scenario() -> None:
        async with I2CBusServer(bus=bus) as server:
            remote = RemoteI2C("127.0.0.1", server.port)
            try:
                assert await asyncio.to_thread(remote.scan) == [ADDRESS]
                driver = Scd4xDriver(bus=remote)
                await driver.open()
                started = clock()
                clock.advance(5.0)
                assert_matches(await driver.poll(), expected(air, started + 5.0))
                chip.fault_crc = 1
                with pytest.raises(DecodeError):
                    await driver.poll()
                chip.fault_nack = 1
                with pytest.raises(DeviceTimeout):
                    await driver.poll()
                await driver.close()
            finally:
                remote.deinit()

    run(scenario)
    assert chip.log[:2] == [bytes.fromhex("3f86"), bytes.fromhex("21b1")]
    assert chip.mode is Mode.IDLE


def test_remote_bus_transfers_and_nacks(bus: SimI2CBus, chip: Scd4xChip) -> None:
    async def scenario() -> None:
        async with I2CBusServer(bus=bus) as server:
            remote = RemoteI2C("127.0.0.1", server.port)
            try:
                buffer = bytearray(b"\x00" * 4)
                await asyncio.to_thread(
                    remote.writeto_then_readfrom, ADDRESS, b"\x00\x23\x22\x00", buffer,
                    out_start=1, out_end=3, in_start=1,
                )  # fmt: skip
                assert buffer == b"\x00\x00\x00\x81"  # altitude 0 + CRC
                with pytest.raises(OSError) as info:
                    await asyncio.to_thread(remote.writeto, 0x61, b"\x36\x82")
                assert info.value.errno == 121
            finally:
                remote.deinit()

    run(scenario)


def test_absent_chip_and_absent_server_fail_at_open(clock: FakeClock) -> None:
    async def scenario() -> None:
        async with I2CBusServer(bus=SimI2CBus()) as server:
            remote = RemoteI2C("127.0.0.1", server.port)
            with pytest.raises(DeviceTimeout):
                await Scd4xDriver(bus=remote).open()
            remote.deinit()
        remote = RemoteI2C("127.0.0.1", free_port(), timeout=0.5)  # nobody listens
        with pytest.raises(DeviceTimeout):
            await Scd4xDriver(bus=remote).open()
        remote.deinit()

    run(scenario)


def test_remote_bus_fails_while_the_server_is_gone_and_reconnects(bus: SimI2CBus) -> None:
    async def scenario() -> None:
        port = free_port()
        remote = RemoteI2C("127.0.0.1", port)
        try:
            async with I2CBusServer(bus=bus, port=port):
                assert await asyncio.to_thread(remote.scan) == [ADDRESS]
            with pytest.raises(OSError):
                await asyncio.to_thread(remote.scan)  # server gone: a device error, no hang
            async with I2CBusServer(bus=bus, port=port):
                assert await asyncio.to_thread(remote.scan) == [ADDRESS]
        finally:
            remote.deinit()

    run(scenario)


def test_open_i2c_bus_parses_its_spec() -> None:
    remote = open_i2c_bus("tcp://127.0.0.1:4711")
    assert isinstance(remote, RemoteI2C)
    for bad in ("i2c-1", "tcp://127.0.0.1", "tcp://:4711", "/dev/i2c-x", "udp://h:1", ""):
        with pytest.raises(ValueError, match="unsupported I2C bus"):
            open_i2c_bus(bad)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads leaked: {leaked}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
