"""Acceptance 4: SCD4x compensation and forced recalibration reach the simulated chip as the
datasheet's byte sequences (``chip.log``), and the EEPROM is written only when a setting changes.

Also the SCD4x half of acceptance 1 that is new here: a stuck sensor gives no value plus a counted
error. The Adafruit driver's ``time.sleep`` and the calibration's clock are one fake clock.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Iterator
from pathlib import Path

import adafruit_scd4x
import pytest

import simulators.scd4x
from drivers.sensors.scd4x import Scd4xDriver
from drivers.sensors.scd4x_settings import (
    CalibrationError,
    Scd4xSettings,
    apply_settings,
    forced_recalibration,
)
from gateway import calibrate
from gateway.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, main
from gateway.config import Scd4xDevice
from gateway.errors import DeviceStuck
from simulators.i2c import SimI2CBus
from simulators.scd4x import ADDRESS, Mode, Scd4xChip
from tests.fakeclock import FakeClock

START = 50_000.0
CONSTANT_AIR = (500.0, 21.0, 40.0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock(START)
    monkeypatch.setattr(adafruit_scd4x, "time", types.SimpleNamespace(sleep=clock.advance))
    monkeypatch.setattr(
        calibrate, "time", types.SimpleNamespace(sleep=clock.advance, monotonic=clock)
    )
    return clock


@pytest.fixture
def chip(clock: FakeClock) -> Scd4xChip:
    return Scd4xChip(clock=clock, environment=lambda t: CONSTANT_AIR)


@pytest.fixture
def bus(chip: Scd4xChip) -> SimI2CBus:
    bus = SimI2CBus()
    bus.attach(ADDRESS, chip)
    return bus


def frames(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


SETTINGS = Scd4xSettings(self_calibration=False, altitude_m=1950, temperature_offset_c=5.4)


def open_and_close(driver: Scd4xDriver) -> None:
    async def scenario() -> None:
        await driver.open()
        await driver.close()

    asyncio.run(scenario())


def test_compensation_at_open_is_the_datasheet_byte_sequence(
    bus: SimI2CBus, chip: Scd4xChip
) -> None:
    settings = Scd4xSettings(
        self_calibration=False, ambient_pressure_hpa=987, temperature_offset_c=5.4
    )
    open_and_close(Scd4xDriver(bus=bus, settings=settings))
    assert chip.log == frames(
        "3f86",  # the SCD4X constructor stops any measurement
        "3f86",  # reinit stops first, then ...
        "3646",  # ... reinit: compare against the persisted (EEPROM) values
        "2313",  # get_automatic_self_calibration_enabled -> 1 (factory)
        "2416 0000 81",  # set_automatic_self_calibration_enabled(0)
        "2318",  # get_temperature_offset -> 4 °C (factory)
        "241d 07e6 48",  # set_temperature_offset(5.4 °C): datasheet example
        "3615",  # persist_settings: something changed
        "e000 03db 42",  # set_ambient_pressure(987 hPa): RAM only, allowed any time
        "21b1",  # start_periodic_measurement
        "3f86",  # close
    )
    assert chip.eeprom["asc_enabled"] == 0 and chip.eeprom["temperature_offset"] == 0x07E6
    assert chip.ambient_pressure_hpa == 987
    assert chip.eeprom_writes == 1


def test_altitude_is_the_datasheet_frame(bus: SimI2CBus, chip: Scd4xChip) -> None:
    open_and_close(Scd4xDriver(bus=bus, settings=Scd4xSettings(altitude_m=1950)))
    assert frames("2322", "2427 079e 09", "3615") == chip.log[3:6]  # datasheet: 1950 m
    assert chip.eeprom["altitude"] == 1950


def test_unchanged_settings_never_write_the_eeprom(bus: SimI2CBus, chip: Scd4xChip) -> None:
    open_and_close(Scd4xDriver(bus=bus, settings=SETTINGS))
    assert chip.eeprom_writes == 1
    chip.log.clear()
    for _ in range(3):  # daily restarts with the same configuration
        open_and_close(Scd4xDriver(bus=bus, settings=SETTINGS))
    assert chip.eeprom_writes == 1
    assert not [
        f for f in chip.log if f[:2] in (b"\x24\x16", b"\x24\x27", b"\x24\x1d", b"\x36\x15")
    ]


def test_a_setting_changed_in_ram_only_is_caught_by_reinit(bus: SimI2CBus, chip: Scd4xChip) -> None:
    open_and_close(Scd4xDriver(bus=bus, settings=SETTINGS))
    chip.settings["altitude"] = 1950  # RAM matches, EEPROM does not
    chip.eeprom["altitude"] = 0
    open_and_close(Scd4xDriver(bus=bus, settings=SETTINGS))
    assert chip.eeprom_writes == 2 and chip.eeprom["altitude"] == 1950


def test_eeprom_writes_are_capped_per_driver(bus: SimI2CBus, chip: Scd4xChip) -> None:
    driver = Scd4xDriver(bus=bus, settings=SETTINGS, max_persists=2)
    for _ in range(4):
        chip.eeprom = dict(simulators.scd4x._FACTORY_SETTINGS)  # a part that forgets
        open_and_close(driver)
    assert driver.eeprom_writes == chip.eeprom_writes == 2
    assert chip.settings["altitude"] == 1950  # still applied, in RAM


def test_no_settings_means_no_setting_commands(bus: SimI2CBus, chip: Scd4xChip) -> None:
    open_and_close(Scd4xDriver(bus=bus))
    assert chip.log == frames("3f86", "21b1", "3f86")


def test_stuck_scd4x_is_withheld_and_counted(
    bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock
) -> None:
    moving = Scd4xChip(clock=clock, environment=lambda t: (400 + t % 1000, 21.0, 40.0))
    moving_bus = SimI2CBus()
    moving_bus.attach(ADDRESS, moving)

    async def scenario() -> None:
        driver = Scd4xDriver(bus=moving_bus, stuck_polls=3)
        await driver.open()
        for _ in range(4):
            clock.advance(5)
            await driver.poll()
        moving.stuck = True
        clock.advance(5)
        await driver.poll()  # the frozen value a second time: still published
        clock.advance(5)
        with pytest.raises(DeviceStuck) as info:
            await driver.poll()
        assert info.value.kind == "stuck"
        moving.stuck = False
        clock.advance(5)
        await driver.poll()
        await driver.close()

    asyncio.run(scenario())


def sensor_on(bus: SimI2CBus) -> adafruit_scd4x.SCD4X:
    return adafruit_scd4x.SCD4X(bus, ADDRESS)


def test_forced_recalibration_follows_the_datasheet(
    bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock
) -> None:
    seen: list[tuple[int, float]] = []
    sensor = sensor_on(bus)
    chip.log.clear()
    started = clock()
    correction = forced_recalibration(
        sensor,
        420,
        sleep=clock.advance,
        clock=clock,
        progress=lambda co2, left: seen.append((co2, left)),
    )
    assert correction == 420 - 500
    assert chip.log[0] == bytes.fromhex("21b1")  # periodic measurement ...
    assert clock() - started >= 180  # ... for at least 3 minutes
    assert len(seen) >= 35 and {co2 for co2, _ in seen} == {500}
    stop, frc = chip.log[-2:]
    assert stop == bytes.fromhex("3f86")
    assert frc == bytes([0x36, 0x2F, 0x01, 0xA4, 0x4D])  # FRC 420 ppm with its CRC
    assert chip.mode is Mode.IDLE
    assert chip._frc_offset == -80


def test_refused_recalibration_is_a_clear_error(
    bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simulators.scd4x, "_FRC_WARMUP_S", 10_000.0)  # the chip says 0xFFFF
    with pytest.raises(CalibrationError, match=r"refused.*0xFFFF"):
        forced_recalibration(sensor_on(bus), 420, sleep=clock.advance, clock=clock)


def test_unstable_co2_aborts_before_the_frc(clock: FakeClock) -> None:
    chip = Scd4xChip(clock=clock, environment=lambda t: (400 + (t - START) % 1000, 21.0, 40.0))
    bus = SimI2CBus()
    bus.attach(ADDRESS, chip)
    with pytest.raises(CalibrationError, match="not stable"):
        forced_recalibration(sensor_on(bus), 420, sleep=clock.advance, clock=clock)
    assert bytes.fromhex("362f01a44d") not in chip.log
    assert chip.mode is Mode.IDLE


def test_another_reader_is_detected(bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock) -> None:
    def daemon_interferes(co2: int, left: float) -> None:
        if left < 120 and chip.mode is Mode.PERIODIC:
            bus.writeto(ADDRESS, bytes.fromhex("3f86"))  # the daemon reopening the device

    with pytest.raises(CalibrationError, match="another process"):
        forced_recalibration(
            sensor_on(bus), 420, sleep=clock.advance, clock=clock, progress=daemon_interferes
        )
    assert bytes.fromhex("362f01a44d") not in chip.log


def test_recalibration_needs_three_minutes(bus: SimI2CBus, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="180"):
        forced_recalibration(sensor_on(bus), 420, measure_s=60, sleep=clock.advance, clock=clock)


def test_apply_settings_reports_what_it_did(bus: SimI2CBus, clock: FakeClock) -> None:
    sensor = sensor_on(bus)
    assert apply_settings(sensor, SETTINGS).persisted
    again = apply_settings(sensor, SETTINGS)
    assert again.changed == () and not again.persisted


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, bus: SimI2CBus, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[site]\nid = "kg"\n'
        '[[devices]]\nid = "room"\ndriver = "scd4x"\nbus = "tcp://127.0.0.1:17999"\n'
        "altitude_m = 1950\n"
        '[[devices]]\nid = "dust"\ndriver = "pmsa003i"\nbus = "tcp://127.0.0.1:17999"\n'
    )
    opened: list[str] = []

    def open_bus(spec: str) -> SimI2CBus:
        opened.append(spec)
        return bus

    monkeypatch.setattr(calibrate, "open_i2c_bus", open_bus)
    yield path
    assert set(opened) <= {"tcp://127.0.0.1:17999"}


def test_cli_calibrate_co2(
    site: Path, chip: Scd4xChip, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["calibrate", "co2", "--ppm", "420", "--config", str(site), "room"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert "stop the gateway daemon first" in err
    assert "room: applied altitude_m from the configuration" in out
    assert "co2 = 500 ppm" in out
    assert out.rstrip().endswith("forced recalibration to 420 ppm done (-80 ppm)")
    assert bytes.fromhex("2427 079e 09") in chip.log  # compensation first ...
    assert chip.log[-1] == bytes.fromhex("362f 01a4 4d")  # ... then the FRC


def test_cli_calibrate_refused(
    site: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(simulators.scd4x, "_FRC_WARMUP_S", 10_000.0)
    assert main(["calibrate", "co2", "--ppm", "420", "--config", str(site), "room"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "error: the sensor refused the forced recalibration (result 0xFFFF)" in err
    assert "Traceback" not in err


def test_cli_calibrate_show(
    site: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["calibrate", "show", "--config", str(site), "room"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "room: self_calibration = True" in out
    assert "room: temperature_offset_c = 4.0" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["co2", "--ppm", "420", "--config", "{site}", "dust"], "no scd4x device 'dust'"),
        (["co2", "--ppm", "100", "--config", "{site}", "room"], "--ppm must be 300-2000"),
        (["co2", "--ppm", "420", "--measure-s", "60", "--config", "{site}", "room"], "at least"),
    ],
)
def test_cli_calibrate_usage_errors(
    site: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    args = ["calibrate", *(a.replace("{site}", str(site)) for a in argv)]
    assert main(args) == EXIT_CONFIG
    assert message in capsys.readouterr().err


def test_config_device_keys_reach_the_settings() -> None:
    device = Scd4xDevice(
        id="r", driver="scd4x", self_calibration=False, altitude_m=300, temperature_offset_c=2.5
    )
    assert calibrate.settings_of(device) == Scd4xSettings(
        self_calibration=False, altitude_m=300, temperature_offset_c=2.5
    )
