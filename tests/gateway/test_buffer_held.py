"""Held readings (untrusted clock): both buffer implementations hold, re-stamp and release alike."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.buffer import Buffer, MemoryBuffer, SqliteBuffer
from gateway.model import Reading, utc_ms

T0 = utc_ms(datetime(2026, 11, 2, 8, 0, tzinfo=UTC))


def reading(seq: int, *, synced: bool = True, ts: datetime = T0) -> Reading:
    return Reading(
        device="room", metric="co2", value=seq, unit="ppm", ts=ts, seq=seq, time_synced=synced
    )


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Buffer]]:
    opened: list[Buffer] = []

    def factory() -> Buffer:
        buffer: Buffer = (
            MemoryBuffer() if request.param == "memory" else SqliteBuffer(tmp_path / "b.db")
        )
        opened.append(buffer)
        return buffer

    yield factory
    for buffer in opened:
        buffer.close()


def seqs(buffer: Buffer) -> list[int]:
    batch = buffer.begin(100)
    return [] if batch is None else [r.seq for r in batch.readings]


def test_nothing_at_or_after_the_first_held_reading_is_served(make: Callable[[], Buffer]) -> None:
    buffer = make()
    buffer.commit([reading(1), reading(2)], ())
    buffer.commit([reading(3, synced=False), reading(4, synced=False)], (), {3: 1000, 4: 1000})
    buffer.commit([reading(5)], ())  # trusted again, but behind held ones: stays in order
    assert seqs(buffer) == [1, 2]
    assert buffer.begin(100, live=True) is None
    assert buffer.begin(100, live=False) is None


def test_restamp_corrects_held_timestamps_by_the_clock_offset_change(
    make: Callable[[], Buffer],
) -> None:
    buffer = make()
    stepped = T0 + timedelta(hours=2)  # the clock ran 2 h ahead while these were polled
    buffer.commit(
        [
            reading(1, synced=False, ts=stepped),
            reading(2, synced=False, ts=stepped + timedelta(seconds=5)),
        ],
        (),
        {1: 7_200_000, 2: 7_200_000},
    )
    buffer.commit([reading(3)], ())
    assert buffer.begin(100) is None
    assert buffer.restamp(0) == 2  # the offset is back to 0: shift by -2 h
    batch = buffer.begin(100)
    assert batch is not None
    assert [(r.seq, r.ts, r.time_synced) for r in batch.readings] == [
        (1, T0, True),
        (2, T0 + timedelta(seconds=5), True),
        (3, T0, True),
    ]


def test_release_lets_held_readings_go_flagged(make: Callable[[], Buffer]) -> None:
    buffer = make()
    buffer.commit([reading(1, synced=False)], (), {1: 5})
    assert buffer.release_unsynced() == 1
    batch = buffer.begin(100)
    assert batch is not None
    assert [(r.seq, r.ts, r.time_synced) for r in batch.readings] == [(1, T0, False)]


def test_an_unsynced_reading_without_offset_is_stored_released(make: Callable[[], Buffer]) -> None:
    buffer = make()
    buffer.commit([reading(1, synced=False)], ())
    batch = buffer.begin(100)
    assert batch is not None and not batch.readings[0].time_synced


def test_held_readings_survive_a_restart_in_the_same_boot_only(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    first = SqliteBuffer(path, boot_id=7)
    first.commit([reading(1), reading(2, synced=False)], (), {2: 1000})
    first.close()

    same_boot = SqliteBuffer(path, boot_id=7)
    assert seqs(same_boot) == [1], "still held after a process restart"
    assert same_boot.restamp(1000) == 1
    same_boot.close()

    again = SqliteBuffer(path, boot_id=7)
    again.commit([reading(3, synced=False)], (), {3: 50})
    again.close()
    new_boot = SqliteBuffer(path, boot_id=8)  # the monotonic clock restarted: cannot re-stamp
    batch = new_boot.begin(100)
    assert batch is not None
    assert [(r.seq, r.time_synced) for r in batch.readings] == [(1, True), (2, True), (3, False)]
    new_boot.close()
