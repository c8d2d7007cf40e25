"""The gateway's poll sink (`gateway.app._sink`): the data path first, the display contained.

Pinned: a poll's readings are staged in the buffer before the classroom display sees them; an
exception from the display (a bug in the status code) neither loses the poll nor reaches the
poller, and is logged once per episode with its traceback, its recovery once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from gateway.app import _sink
from gateway.buffer import BufferWorker, MemoryBuffer
from gateway.model import Reading, utc_ms


def readings(first: int, count: int) -> list[Reading]:
    ts = utc_ms(datetime.now(UTC))
    return [
        Reading(device="room", metric="co2", value=800.0, unit="ppm", ts=ts, seq=s)
        for s in range(first, first + count)
    ]


class Keeper:
    def offset_for_stage(self) -> int | None:
        return None


class BrokenDisplay:
    """Fails on the polls listed in ``broken`` (1-based); records what was staged before."""

    def __init__(self, buffer: BufferWorker, broken: set[int]) -> None:
        self.buffer = buffer
        self.broken = broken
        self.calls = 0
        self.staged_before: list[int] = []

    def observe(self, readings: Sequence[Reading]) -> None:
        self.calls += 1
        self.staged_before.append(self.buffer.staged)
        if self.calls in self.broken:
            raise ZeroDivisionError("a bug in the air-quality rules")


def test_readings_are_staged_first_and_a_display_bug_never_costs_a_poll(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.app")

    async def main() -> tuple[int, BrokenDisplay]:
        buffer = BufferWorker(MemoryBuffer(), commit_interval=60)  # nothing committed meanwhile
        display = BrokenDisplay(buffer, broken={1, 2, 4})
        sink = _sink(buffer, Keeper(), display)  # type: ignore[arg-type]
        for poll in range(5):
            await sink(readings(poll * 3 + 1, 3))  # never raises
        await buffer.flush()
        pending = await buffer.pending()
        await buffer.close()
        return pending, display

    pending, display = asyncio.run(main())

    assert pending == 15, "every poll is buffered, also those the display failed on"
    assert display.staged_before == [3, 6, 9, 12, 15], "staged before the display saw them"
    records = [r for r in caplog.records if r.name == "gateway.app"]
    levels = [(r.levelno, r.exc_info is not None) for r in records]
    assert levels == [
        (logging.ERROR, True),  # poll 1: the episode starts, with the traceback
        (logging.DEBUG, True),  # poll 2: the same episode, at DEBUG only
        (logging.INFO, False),  # poll 3: recovered
        (logging.ERROR, True),  # poll 4: a new episode
        (logging.INFO, False),  # poll 5: recovered
    ]
