"""The buffer's caps (`BufferLimits`), pinned for both implementations.

The age cap compares trusted timestamps only: a held reading (its clock not trusted yet) or one
released unsynced may carry any time at all, a year ahead after a bad clock step or years behind
after a power cut, and must neither set the horizon (which would age out every trusted reading)
nor be aged out itself. The count cap applies to every reading alike, oldest first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.buffer import Buffer, BufferLimits, MemoryBuffer, SqliteBuffer
from gateway.model import Reading, utc_ms

T0 = utc_ms(datetime(2026, 11, 2, 8, 0, tzinfo=UTC))
DAY = timedelta(days=1)


def reading(seq: int, ts: datetime, *, synced: bool = True) -> Reading:
    return Reading(
        device="room", metric="co2", value=seq, unit="ppm", ts=ts, seq=seq, time_synced=synced
    )


@pytest.fixture(params=["memory", "sqlite"])
def make(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[BufferLimits], Buffer]]:
    opened: list[Buffer] = []

    def factory(limits: BufferLimits) -> Buffer:
        buffer: Buffer = (
            MemoryBuffer(limits=limits)
            if request.param == "memory"
            else SqliteBuffer(tmp_path / "b.db", limits=limits)
        )
        opened.append(buffer)
        return buffer

    yield factory
    for buffer in opened:
        buffer.close()


def stored(buffer: Buffer) -> list[int]:
    batch = buffer.begin(1000)
    if batch is None:
        return []
    buffer.end(batch, accepted=False)
    return [r.seq for r in batch.readings]


def test_the_age_cap_drops_the_oldest_trusted_readings_and_counts_them(
    make: Callable[[BufferLimits], Buffer],
) -> None:
    buffer = make(BufferLimits(max_age=DAY))
    assert buffer.commit([reading(1, T0), reading(2, T0 + DAY / 2)], ()) == 0
    assert buffer.commit([reading(3, T0 + DAY + timedelta(hours=1))], ()) == 1
    assert stored(buffer) == [2, 3]
    assert buffer.dropped() == 1


def test_a_held_reading_stamped_far_ahead_does_not_age_out_the_trusted_ones(
    make: Callable[[BufferLimits], Buffer],
) -> None:
    buffer = make(BufferLimits(max_age=DAY))
    buffer.commit([reading(1, T0), reading(2, T0 + timedelta(minutes=1))], ())
    ahead = T0 + timedelta(days=400)  # a wrong clock step while the clock was untrusted
    dropped = buffer.commit([reading(3, ahead, synced=False)], (), {3: 1000})
    buffer.commit([reading(4, ahead + timedelta(seconds=5), synced=False)], ())  # released
    assert dropped == 0
    assert buffer.dropped() == 0
    assert buffer.pending() == 4
    assert buffer.release_unsynced() == 1
    assert stored(buffer) == [1, 2, 3, 4]


def test_a_held_reading_stamped_years_behind_is_not_aged_out(
    make: Callable[[BufferLimits], Buffer],
) -> None:
    buffer = make(BufferLimits(max_age=DAY))
    stale = T0 - timedelta(days=3 * 365)  # a Pi that booted without a clock
    buffer.commit([reading(1, T0)], ())
    buffer.commit([reading(2, stale, synced=False)], (), {2: -(3 * 365 * 86_400_000)})
    buffer.commit([reading(3, stale, synced=False)], ())  # released unsynced: time unknown
    assert buffer.dropped() == 0
    # Time moves on: the old trusted reading ages out; the untrusted ones are not compared.
    assert buffer.commit([reading(4, T0 + 2 * DAY)], ()) == 1
    assert buffer.release_unsynced() == 1
    assert stored(buffer) == [2, 3, 4]


def test_the_count_cap_drops_the_oldest_readings_whatever_their_clock(
    make: Callable[[BufferLimits], Buffer],
) -> None:
    buffer = make(BufferLimits(max_readings=2))
    buffer.commit([reading(1, T0, synced=False)], (), {1: 0})
    buffer.commit([reading(2, T0), reading(3, T0)], ())
    assert buffer.dropped() == 1
    assert buffer.release_unsynced() == 0  # the held reading was the oldest: dropped
    assert stored(buffer) == [2, 3]
