"""The simulated PMSA003I against the frame layout of the Plantower datasheet, on a fake clock."""

from __future__ import annotations

import errno

import pytest

from simulators.i2c import SimI2CBus
from simulators.particles import ClassroomDust, PmEvent, PmSample
from simulators.pmsa003i import (
    ADDRESS,
    WARMUP_S,
    Pmsa003iChip,
    cf1_from_atm,
    counts_from_mass,
    encode_frame,
)
from tests.fakeclock import FakeClock

START = 50_000.0


CLEAN = PmSample(pm1=5.0, pm25=12.0, pm10=20.0)
SMOKY = PmSample(pm1=60.0, pm25=90.0, pm10=110.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def make(clock: FakeClock, sample: PmSample = CLEAN) -> tuple[Pmsa003iChip, SimI2CBus]:
    chip = Pmsa003iChip(clock=clock, environment=lambda t: sample)
    bus = SimI2CBus()
    bus.attach(ADDRESS, chip)
    return chip, bus


def read_frame(bus: SimI2CBus) -> bytes:
    buffer = bytearray(32)
    bus.readfrom_into(ADDRESS, buffer)
    return bytes(buffer)


def words(frame: bytes) -> list[int]:
    return [int.from_bytes(frame[i : i + 2], "big") for i in range(4, 28, 2)]


def test_encode_frame_layout_and_checksum() -> None:
    frame = encode_frame(list(range(1, 13)))
    assert len(frame) == 32
    assert frame[:4] == bytes.fromhex("424d001c")  # "BM", length 28
    assert words(frame) == list(range(1, 13))
    assert frame[28:30] == bytes([0x97, 0x00])  # version, error code
    assert int.from_bytes(frame[30:32], "big") == sum(frame[:30])
    with pytest.raises(ValueError, match="12 measurement words"):
        encode_frame([1, 2, 3])


def test_a_warm_chip_reports_cf1_atm_and_counts(clock: FakeClock) -> None:
    _, bus = make(clock, SMOKY)
    clock.advance(WARMUP_S)
    w = words(read_frame(bus))
    assert w[3:6] == [60, 90, 110]  # atmospheric environment
    assert w[0:3] == [round(cf1_from_atm(v)) for v in (60.0, 90.0, 110.0)]  # CF=1 above 30
    counts = w[6:]
    expected = counts_from_mass(SMOKY)
    assert all(abs(c - e) <= 0.05 * e + 1 for c, e in zip(counts, expected, strict=True))
    assert counts == sorted(counts, reverse=True)


def test_cf1_equals_atm_in_clean_air() -> None:
    assert cf1_from_atm(12.0) == 12.0
    assert cf1_from_atm(50.0) == 60.0


def test_warm_up_serves_valid_frames_with_wrong_numbers(clock: FakeClock) -> None:
    """The chip gives no warm-up flag: frames are well-formed, the fan is just slow."""
    chip, bus = make(clock, SMOKY)
    early = read_frame(bus)
    assert early[:2] == b"BM" and int.from_bytes(early[30:], "big") == sum(early[:30])
    assert words(early)[4] == 0  # fan not yet turning
    clock.advance(WARMUP_S / 2)
    assert words(read_frame(bus))[4] == 45  # half speed, half the PM2.5
    clock.advance(WARMUP_S / 2)
    assert words(read_frame(bus))[4] == 90
    chip.power_on()  # a wake restarts the warm-up
    assert words(read_frame(bus))[4] == 0


def test_frame_refreshes_once_a_second(clock: FakeClock) -> None:
    chip = Pmsa003iChip(clock=clock, seed=3)
    bus = SimI2CBus()
    bus.attach(ADDRESS, chip)
    clock.advance(WARMUP_S + 0.1)
    first = read_frame(bus)
    clock.advance(0.5)
    assert read_frame(bus) == first  # same slot, same frame
    clock.advance(0.5)
    assert read_frame(bus) != first  # new slot: counts carry noise
    assert chip.reads == 3


def test_fault_knobs(clock: FakeClock) -> None:
    chip, bus = make(clock)
    clock.advance(WARMUP_S)
    chip.fault_header = 1
    assert read_frame(bus)[:2] == b"\x00\x00"
    assert read_frame(bus)[:2] == b"BM"
    chip.fault_checksum = 1
    bad = read_frame(bus)
    assert int.from_bytes(bad[30:], "big") != sum(bad[:30])
    good = read_frame(bus)
    assert int.from_bytes(good[30:], "big") == sum(good[:30])
    chip.fault_nack = 1
    with pytest.raises(OSError) as info:
        read_frame(bus)
    assert info.value.errno == errno.EREMOTEIO
    chip.powered = False
    assert bus.scan() == []
    chip.power_on()
    assert bus.scan() == [ADDRESS]


def test_stuck_chip_repeats_its_frame(clock: FakeClock) -> None:
    chip = Pmsa003iChip(clock=clock, seed=1)
    bus = SimI2CBus()
    bus.attach(ADDRESS, chip)
    clock.advance(WARMUP_S)
    frozen = read_frame(bus)
    chip.stuck = True
    for _ in range(5):
        clock.advance(10)
        assert read_frame(bus) == frozen
    chip.stuck = False
    clock.advance(10)
    assert read_frame(bus) != frozen


def test_classroom_dust_is_plausible_and_deterministic() -> None:
    for seed in range(4):
        dust = ClassroomDust(seed=seed)
        samples = [dust(t) for t in range(0, 2 * 86_400, 120)]
        assert all(0 < s.pm1 <= s.pm25 <= s.pm10 for s in samples)
        assert max(s.pm25 for s in samples) > 35  # lunch in the kitchen next door
        assert min(s.pm25 for s in samples) < 10  # clean outdoor air at night
    assert ClassroomDust(seed=2)(1234.5) == ClassroomDust(seed=2)(1234.5)


def test_scripted_cooking_and_window() -> None:
    night = 2 * 3600.0  # far from the daily lunch
    cooking = PmEvent(kind="cooking", start=night, duration=1800, level=100)
    window = PmEvent(kind="window", start=night + 1500, duration=300)
    dust = ClassroomDust(seed=5, events=[cooking, window])
    plain = ClassroomDust(seed=5)
    assert dust(night - 1) == plain(night - 1)
    assert dust(night + 1200).pm25 > plain(night + 1200).pm25 + 60  # smoke drifts in
    assert dust(night + 1600).pm25 < dust(night + 1400).pm25  # opening the window helps
    assert dust(night + 1800 + 3600).pm25 < plain(night + 5400).pm25 + 2  # and it clears
    lesson, brk = 10 * 3600.0 + 1200, 10 * 3600.0 + 3000
    assert plain(lesson).pm10 - plain(lesson).pm25 > plain(brk).pm10 - plain(brk).pm25
