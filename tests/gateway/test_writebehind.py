"""Write-behind delivery and durable sequence reservation (issue 16, items 1 and 2).

Pins: a live reading is handed to the publisher from memory before any commit and, once
acknowledged, never touches the file; what is not acknowledged within the window is written,
in-flight batches included (adopted, so that their late acknowledgement deletes the rows, also
when it arrives while the write is under way); the durable lane goes before memory; held
readings never leave from memory; a storage failure keeps readings in memory; numbers are
reserved durably ahead of use, and an unclean stop declares the range that may be lost.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import pytest

from gateway.buffer import Batch, BufferWorker, MemoryBuffer, SqliteBuffer
from gateway.buffer.base import Gap
from gateway.buffer.writebehind import WriteBehind
from gateway.errors import StorageError
from gateway.model import Reading
from gateway.scheduler import SequenceCounter
from tests.gateway.test_buffer import reading, readings, seqs_of

WINDOW = 0.2


async def until(predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    """Wait for ``predicate`` with a deadline (no fixed sleeps)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def stored(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [seq for (seq,) in db.execute("SELECT seq FROM readings ORDER BY seq")]


class GatedBuffer(SqliteBuffer):
    """A SqliteBuffer whose commits wait for ``gate`` (to act while a write is under way) and
    fail while ``failing`` is set (a refusing card)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.refused = threading.Event()
        self.failing = False

    def commit(
        self,
        readings: Sequence[Reading],
        accepted: Sequence[Batch],
        offsets: Mapping[int, int] | None = None,
        adopted: Sequence[Batch] = (),
    ) -> int:
        self.entered.set()
        self.gate.wait(10)
        if self.failing and readings:
            self.refused.set()
            raise sqlite3.OperationalError("disk I/O error")
        return super().commit(readings, accepted, offsets, adopted)


def write_behind(storage: SqliteBuffer | MemoryBuffer) -> WriteBehind:
    return WriteBehind(BufferWorker(storage, commit_interval=WINDOW), commit_interval=WINDOW)


def test_an_acknowledged_live_reading_never_touches_the_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        buffer = write_behind(SqliteBuffer(tmp_path / "b.db"))
        buffer.stage(readings(range(1, 4)))
        assert buffer.appended.is_set()  # the publisher wakes at once, not after a commit
        batch = await buffer.begin(10, live=True)
        assert seqs_of(batch) == [1, 2, 3]
        assert await buffer.begin(10, live=True) is None  # in flight
        assert batch is not None
        await buffer.end(batch, accepted=True)
        assert await buffer.pending() == 0
        await asyncio.sleep(2 * WINDOW)  # past the window: nothing left to write
        assert buffer.written == 0 and buffer.acked_from_memory == 3
        await buffer.close()

    asyncio.run(scenario())
    assert stored(tmp_path / "b.db") == []


def test_unacknowledged_readings_are_written_within_the_window_and_adopted(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        path = tmp_path / "b.db"
        buffer = write_behind(SqliteBuffer(path))
        loop = asyncio.get_running_loop()
        staged_at = loop.time()
        buffer.stage(readings(range(1, 6)))
        batch = await buffer.begin(3, live=True)  # 1..3 in flight, 4..5 idle
        await until(lambda: stored(path) == [1, 2, 3, 4, 5])
        assert loop.time() - staged_at <= WINDOW + 0.15  # one window, plus scheduling slack
        # The in-flight batch was adopted: the durable buffer does not hand it out again ...
        assert seqs_of(await buffer.begin(10, live=True)) == [4, 5]
        # ... and its late acknowledgement deletes its rows.
        assert batch is not None
        await buffer.end(batch, accepted=True)
        await until(lambda: stored(path) == [4, 5])
        await buffer.close()

    asyncio.run(scenario())


def test_an_acknowledgement_during_the_write_that_adopts_the_batch_is_not_lost(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        path = tmp_path / "b.db"
        storage = GatedBuffer(path)
        buffer = write_behind(storage)
        buffer.stage(readings(range(1, 4)))
        batch = await buffer.begin(10, live=True)
        assert batch is not None
        storage.gate.clear()
        storage.entered.clear()
        await until(storage.entered.is_set)  # the write that adopts the batch is under way
        await buffer.end(batch, accepted=True)  # the PUBACK arrives right now
        storage.gate.set()
        await until(lambda: buffer.written == 3)  # written, adopted ...

        async def gone() -> bool:
            return await buffer.pending() == 0

        await until(gone)  # ... and deleted by the acknowledgement that came meanwhile
        assert stored(path) == []
        await buffer.close()

    asyncio.run(scenario())


def test_an_acknowledgement_during_a_write_that_fails_is_applied_in_memory(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        path = tmp_path / "b.db"
        storage = GatedBuffer(path)
        buffer = write_behind(storage)
        buffer.stage(readings(range(1, 4)))
        batch = await buffer.begin(2, live=True)
        assert batch is not None
        storage.failing = True
        storage.gate.clear()
        storage.entered.clear()
        await until(storage.entered.is_set)  # the write that would adopt the batch ...
        await buffer.end(batch, accepted=True)  # ... while its PUBACK arrives ...
        storage.gate.set()  # ... and then the write fails
        await until(storage.refused.is_set)  # (the flag was read before it was set)
        storage.failing = False
        await until(lambda: stored(path) == [3])  # the acknowledged ones are gone for good

        async def one_left() -> bool:
            return await buffer.pending() == 1

        await until(one_left)
        await buffer.close()

    asyncio.run(scenario())


def test_the_durable_lane_goes_before_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        buffer = write_behind(SqliteBuffer(tmp_path / "b.db"))
        buffer.stage(readings(range(1, 3)))
        await buffer.flush()  # 1, 2 stored (e.g. the window was full)
        buffer.stage(readings(range(3, 5)))
        assert seqs_of(await buffer.begin(10, live=True)) == [1, 2]
        assert seqs_of(await buffer.begin(10, live=True)) == [3, 4]
        await buffer.close()

    asyncio.run(scenario())


def test_held_readings_never_leave_from_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        buffer = write_behind(SqliteBuffer(tmp_path / "b.db"))
        unsynced = [Reading(**{**vars_of(r), "time_synced": False}) for r in readings(range(2, 4))]
        buffer.stage(readings([1]))
        buffer.stage(unsynced, clock_offset_ms=1000)
        buffer.stage(readings([4]))  # trusted again, but after held ones: must wait too
        assert seqs_of(await buffer.begin(10, live=True)) == [1]
        assert await buffer.begin(10, live=True) is None
        assert await buffer.restamp(1500) == 2
        assert seqs_of(await buffer.begin(10, live=True)) == [2, 3, 4]
        await buffer.close()

    asyncio.run(scenario())


def vars_of(r: Reading) -> dict[str, object]:
    return {f: getattr(r, f) for f in Reading.__dataclass_fields__}


def test_a_refusing_card_keeps_readings_in_memory_and_deliverable(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "b.db"
        storage = GatedBuffer(path)
        storage.failing = True
        buffer = write_behind(storage)
        buffer.stage(readings(range(1, 4)))
        await asyncio.sleep(2 * WINDOW)  # at least one failed write
        assert stored(path) == []
        assert await buffer.pending() == 3
        batch = await buffer.begin(2, live=True)  # still published from memory
        assert seqs_of(batch) == [1, 2]
        storage.failing = False
        await until(lambda: stored(path) == [1, 2, 3])
        assert batch is not None
        await buffer.end(batch, accepted=True)
        await until(lambda: stored(path) == [3])
        assert buffer.unstored == 0
        await buffer.close()

    asyncio.run(scenario())


# --- sequence numbers ---------------------------------------------------------------------


def test_an_unclean_stop_declares_the_numbers_that_may_be_lost(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    first = SqliteBuffer(path, declared_at_ms=1)
    first.append(readings(range(1, 11)))  # 1..10 stored
    first.reserve(2000, safe=12)  # 11, 12 delivered from memory; up to 2000 may be handed out
    first.close()  # no finish(): a crash
    second = SqliteBuffer(path, declared_at_ms=2)
    assert second.seq_floor() == 2000
    assert second.declared_gaps() == [Gap(13, 2000, "unclean_stop", 2)]
    second.finish(2040)  # the restarted gateway used 2001..2040, then stopped cleanly
    second.close()
    third = SqliteBuffer(path, declared_at_ms=3)
    assert third.seq_floor() == 2040  # a clean stop continues without a gap ...
    assert third.declared_gaps() == [Gap(13, 2000, "unclean_stop", 2)]  # ... until announced
    third.gap_published(third.declared_gaps()[0])
    assert third.declared_gaps() == []
    third.finish(2040)
    third.close()
    fourth = SqliteBuffer(path)
    assert fourth.declared_gaps() == []
    fourth.close()


def test_a_reservation_raises_the_mark_that_outlives_the_buffer_file(tmp_path: Path) -> None:
    """Numbers handed out from memory are never stored: if the buffer file is then lost, the
    `.seq` mark beside it must still be above them."""
    path = tmp_path / "b.db"
    first = SqliteBuffer(path)
    far = 5_000_000  # beyond the mark's first block
    first.reserve(far, safe=0)
    first.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    second = SqliteBuffer(path, declared_at_ms=7)
    assert second.seq_floor() >= far
    # ... and the loss of the file (and of its record of what was delivered) is declared.
    assert second.declared_gaps() == [Gap(1, second.seq_floor(), "buffer_lost", 7)]
    second.close()


def test_a_stored_reading_proves_the_numbers_below_it(tmp_path: Path) -> None:
    """Readings are written in sequence order, so the gap starts above the last stored one."""
    path = tmp_path / "b.db"
    first = SqliteBuffer(path)
    first.reserve(1000, safe=0)
    first.append(readings(range(1, 21)))
    first.close()
    assert SqliteBuffer(path, declared_at_ms=5).declared_gaps() == [
        Gap(21, 1000, "unclean_stop", 5)
    ]


def test_the_counter_reserves_ahead_and_never_passes_a_durable_reservation() -> None:
    reserved: list[tuple[int, int]] = []

    async def reserve(upto: int, last: int) -> None:
        await asyncio.sleep(0.01)  # the card takes its time
        reserved.append((upto, last))

    async def scenario() -> None:
        counter = SequenceCounter(100, reserve=reserve, block=10)
        handed: list[int] = []
        for _ in range(40):
            await counter.ensure(3)
            handed.extend(counter.next() for _ in range(3))
            durable = max((u for u, _ in reserved), default=100)
            assert handed[-1] <= durable
        assert handed == list(range(101, 221))
        assert counter.unreserved == 0

    asyncio.run(scenario())
    assert all(upto - last >= 10 for upto, last in reserved)


def test_a_failed_reservation_does_not_stop_numbering_and_is_counted() -> None:
    async def reserve(upto: int, last: int) -> None:
        raise StorageError("disk I/O error")

    async def scenario() -> None:
        counter = SequenceCounter(0, reserve=reserve, block=10)
        await counter.ensure(5)
        assert [counter.next() for _ in range(5)] == [1, 2, 3, 4, 5]
        assert counter.unreserved >= 5

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_adopted_batches_are_in_flight_and_never_dropped_by_the_limits(
    kind: str, tmp_path: Path
) -> None:
    from gateway.buffer import BufferLimits  # noqa: PLC0415 - local to this test

    limits = BufferLimits(max_readings=2)
    storage = (
        MemoryBuffer(limits=limits)
        if kind == "memory"
        else SqliteBuffer(tmp_path / "b.db", limits=limits)
    )
    adopted = Batch(-1, tuple(readings(range(1, 4))))
    dropped = storage.commit([*adopted.readings, reading(4)], (), None, (adopted,))
    assert dropped == 1  # over the cap of 2, but 1..3 are in flight: only 4 may go
    assert storage.begin(10) is None  # and the adopted ones are not handed out twice
    storage.end(adopted, accepted=True)
    assert storage.pending() == 0
    storage.close()
