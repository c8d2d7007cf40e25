"""The simulated SCD4x against the datasheet's byte sequences, driven by a fake clock.

Frames marked "datasheet" are the worked examples of the Sensirion SCD4x datasheet (v1.7).
"""

from __future__ import annotations

import errno

import pytest

from simulators.classroom import ClassroomAir
from simulators.i2c import SimI2CBus
from simulators.scd4x import ADDRESS, Mode, Scd4xChip, crc8, decode_words, encode_words
from tests.fakeclock import FakeClock

#: The datasheet's read_measurement example: 500 ppm, 25.0 °C (0x6667), 37.0 %RH (0x5EB9).
DATASHEET_AIR = (500.0, -45 + 175 * 0x6667 / 65535, 100 * 0x5EB9 / 65535)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def chip(clock: FakeClock) -> Scd4xChip:
    return Scd4xChip(clock=clock, environment=lambda t: DATASHEET_AIR)


@pytest.fixture
def bus(chip: Scd4xChip) -> SimI2CBus:
    bus = SimI2CBus()
    bus.attach(ADDRESS, chip)
    return bus


def send(bus: SimI2CBus, frame: str) -> None:
    bus.writeto(ADDRESS, bytes.fromhex(frame))


def receive(bus: SimI2CBus, n: int) -> str:
    buffer = bytearray(n)
    bus.readfrom_into(ADDRESS, buffer)
    return buffer.hex()


def assert_nack(action: object, *args: object) -> None:
    with pytest.raises(OSError) as info:
        action(*args)  # type: ignore[operator]
    assert info.value.errno == errno.EREMOTEIO == 121


def test_crc8_matches_the_datasheet_vector() -> None:
    assert crc8(b"\xbe\xef") == 0x92
    assert encode_words([0xBEEF, 0x8000]) == bytes.fromhex("beef92 8000a2")
    assert decode_words(bytes.fromhex("beef92")) == [0xBEEF]
    assert_nack(decode_words, bytes.fromhex("beef93"))


def test_probe_and_scan_acknowledge_without_logging_a_command(
    bus: SimI2CBus, chip: Scd4xChip
) -> None:
    bus.writeto(ADDRESS, b"")
    assert bus.scan() == [ADDRESS]
    assert chip.log == []


def test_an_absent_address_is_nacked_like_linux(bus: SimI2CBus) -> None:
    assert_nack(bus.writeto, 0x61, b"\x36\x82")
    assert_nack(bus.readfrom_into, 0x12, bytearray(3))


def test_set_and_get_temperature_offset_byte_exact(bus: SimI2CBus, chip: Scd4xChip) -> None:
    send(bus, "241d 07e6 48")  # datasheet: set 5.4 °C
    send(bus, "2318")
    assert receive(bus, 3) == "07e648"
    assert chip.log == [bytes.fromhex("241d07e648"), bytes.fromhex("2318")]


def test_set_and_get_altitude_byte_exact(bus: SimI2CBus) -> None:
    send(bus, "2427 079e 09")  # datasheet: 1950 m
    send(bus, "2322")
    assert receive(bus, 3) == "079e09"


def test_an_argument_with_a_bad_crc_is_nacked_and_ignored(bus: SimI2CBus, chip: Scd4xChip) -> None:
    assert_nack(send, bus, "2427 079e 0a")
    assert chip.settings["altitude"] == 0
    assert_nack(send, bus, "2427 079e")  # a word without its CRC
    assert_nack(send, bus, "2427")  # set without an argument


def test_ambient_pressure_shares_its_opcode_for_get_and_set(bus: SimI2CBus) -> None:
    send(bus, "e000")
    assert receive(bus, 3) == encode_words([1013]).hex()
    send(bus, "e000" + encode_words([987]).hex())
    send(bus, "e000")
    assert receive(bus, 3) == encode_words([987]).hex()


def test_serial_number_and_variant(bus: SimI2CBus, chip: Scd4xChip) -> None:
    send(bus, "3682")
    assert receive(bus, 9) == encode_words(chip.serial_words).hex()
    send(bus, "202f")
    assert receive(bus, 3) == encode_words([0x1440]).hex()  # SCD41
    assert Scd4xChip(seed=1).serial_words != chip.serial_words


def test_data_ready_follows_the_fake_clock(bus: SimI2CBus, clock: FakeClock) -> None:
    send(bus, "21b1")
    clock.advance(4.999)
    send(bus, "e4b8")
    assert receive(bus, 3) == "8000a2"  # datasheet: not ready
    clock.advance(0.001)
    send(bus, "e4b8")
    assert receive(bus, 3) == "800604"  # low 11 bits non-zero: ready
    send(bus, "ec05")
    assert receive(bus, 9) == "01f433 6667a2 5eb93c".replace(" ", "")  # datasheet frame
    send(bus, "e4b8")
    assert receive(bus, 3) == "8000a2"  # reading cleared it
    send(bus, "ec05")
    assert_nack(receive, bus, 9)  # empty output buffer: the read header is NACKed
    clock.advance(5.0)
    send(bus, "e4b8")
    assert receive(bus, 3) == "800604"


def test_low_power_mode_measures_every_30_seconds(bus: SimI2CBus, clock: FakeClock) -> None:
    send(bus, "21ac")
    clock.advance(29.9)
    send(bus, "e4b8")
    assert receive(bus, 3) == "8000a2"
    clock.advance(0.1)
    send(bus, "e4b8")
    assert receive(bus, 3) == "800604"


def test_stop_takes_500_ms_of_simulated_time(
    bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock
) -> None:
    send(bus, "21b1")
    send(bus, "3f86")
    clock.advance(0.499)
    assert_nack(send, bus, "3682")
    assert_nack(bus.writeto, ADDRESS, b"")  # not even the address is acknowledged
    clock.advance(0.001)
    send(bus, "3682")
    assert len(receive(bus, 9)) == 18
    assert chip.mode is Mode.IDLE


@pytest.mark.parametrize(
    "frame",
    [
        "21b1",  # start_periodic_measurement
        "21ac",  # start_low_power_periodic_measurement
        "2318",  # get_temperature_offset
        "241d 07e6 48",  # set_temperature_offset
        "2322",  # get_sensor_altitude
        "2427 079e 09",  # set_sensor_altitude
        "2313",  # get_automatic_self_calibration_enabled
        "2416 0001 b0",  # set_automatic_self_calibration_enabled
        "3615",  # persist_settings
        "3682",  # get_serial_number
        "362f 0190 4c",  # perform_forced_recalibration (datasheet: 400 ppm)
        "3639",  # perform_self_test
        "3632",  # perform_factory_reset
        "3646",  # reinit
        "219d",  # measure_single_shot
        "36e0",  # power_down
        "202f",  # get_sensor_variant
    ],
)
def test_idle_only_commands_are_nacked_while_measuring(
    bus: SimI2CBus, chip: Scd4xChip, frame: str
) -> None:
    send(bus, "21b1")
    assert_nack(send, bus, frame)
    assert chip.mode is Mode.PERIODIC
    assert chip.settings["altitude"] == 0 and chip.eeprom_writes == 0


def test_commands_allowed_while_measuring(bus: SimI2CBus, clock: FakeClock) -> None:
    send(bus, "21b1")
    clock.advance(5)
    for frame in ("e4b8", "ec05", "e000"):
        send(bus, frame)
        receive(bus, 3)
    send(bus, "e000" + encode_words([950]).hex())
    send(bus, "3f86")


def test_persist_counts_eeprom_writes_and_reinit_reloads(
    bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock
) -> None:
    send(bus, "2427 079e 09")
    send(bus, "3615")
    clock.advance(0.8)
    send(bus, "2427" + encode_words([100]).hex())
    send(bus, "3646")
    clock.advance(0.03)
    assert chip.settings["altitude"] == 1950
    assert chip.eeprom_writes == 1
    send(bus, "3632")  # factory reset
    clock.advance(1.2)
    assert chip.settings["altitude"] == 0
    assert chip.eeprom_writes == 2


def test_forced_recalibration_needs_three_minutes_of_measurement(
    bus: SimI2CBus, clock: FakeClock
) -> None:
    send(bus, "362f 0190 4c")
    clock.advance(0.4)
    assert receive(bus, 3) == encode_words([0xFFFF]).hex()  # failed: never measured
    send(bus, "21b1")
    clock.advance(180)
    send(bus, "3f86")
    clock.advance(0.5)
    send(bus, "362f 0190 4c")  # 400 ppm while the sensor reads 500
    assert_nack(receive, bus, 3)  # still executing (400 ms)
    clock.advance(0.4)
    assert receive(bus, 3) == encode_words([0x8000 - 100]).hex()


def test_single_shot_and_self_test_take_their_execution_time(
    bus: SimI2CBus, clock: FakeClock
) -> None:
    send(bus, "219d")
    clock.advance(4.99)
    assert_nack(send, bus, "e4b8")
    clock.advance(0.01)
    send(bus, "e4b8")
    assert receive(bus, 3) == "800604"
    send(bus, "ec05")
    assert receive(bus, 9) == "01f4336667a25eb93c"
    send(bus, "3639")
    clock.advance(10)
    assert receive(bus, 3) == "000081"  # self test passed


def test_power_down_and_wake_up(bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock) -> None:
    send(bus, "36e0")
    assert chip.mode is Mode.SLEEP
    assert_nack(send, bus, "3682")
    assert_nack(send, bus, "36f6")  # wake_up is never acknowledged ...
    assert chip.mode is Mode.IDLE  # ... but executed
    clock.advance(0.03)
    send(bus, "3682")


def test_fault_knobs(bus: SimI2CBus, chip: Scd4xChip, clock: FakeClock) -> None:
    chip.fault_nack = 2
    assert_nack(send, bus, "3682")
    assert_nack(bus.writeto, ADDRESS, b"")
    send(bus, "3682")
    reply = bytes.fromhex(receive(bus, 9))
    assert decode_words(reply) == chip.serial_words

    chip.fault_crc = 1
    send(bus, "2322")
    assert_nack(decode_words, bytes.fromhex(receive(bus, 3)))
    send(bus, "2322")
    assert receive(bus, 3) == encode_words([0]).hex()


def test_stuck_sensor_repeats_its_last_measurement(clock: FakeClock) -> None:
    chip = Scd4xChip(clock=clock, environment=lambda t: (400 + t % 1000, 21.0, 40.0))
    bus = SimI2CBus()
    bus.attach(ADDRESS, chip)
    send(bus, "21b1")
    clock.advance(5)
    send(bus, "ec05")
    first = receive(bus, 9)
    chip.stuck = True
    clock.advance(5)
    send(bus, "ec05")
    assert receive(bus, 9) == first
    chip.stuck = False
    clock.advance(5)
    send(bus, "ec05")
    assert receive(bus, 9) != first


def test_classroom_air_is_plausible_and_deterministic() -> None:
    for seed in range(5):
        air = ClassroomAir(seed=seed)
        samples = [air(t) for t in range(0, 2 * 86_400, 60)]
        assert all(430 <= co2 <= 1600 for co2, _, _ in samples)
        assert all(20 <= t <= 24 for _, t, _ in samples)
        assert all(35 <= rh <= 55 for _, _, rh in samples)
        assert max(co2 for co2, _, _ in samples) > 1000
    air = ClassroomAir(seed=3)
    assert air(1234.5) == ClassroomAir(seed=3)(1234.5) != ClassroomAir(seed=4)(1234.5)
    assert air(2700)[0] > air(600)[0] > air(0)[0]  # CO2 climbs through a lesson
    assert air(3500)[0] < air(2700)[0]  # and falls in the break
