"""The buffer contract (`gateway.buffer.base.Buffer`), pinned once for every implementation.

In the spirit of Telegraf's ``models/buffer_suite_test.go``: the same suite runs against
`MemoryBuffer` and `SqliteBuffer`. It pins delivery order (oldest first, rejected readings ahead of
newer ones, in seq order), at-least-once delivery without loss or duplication under any interleaving
of append / begin / end (a Hypothesis state machine against a one-line model), the sequence
high-water mark, and exact round-trips of every value type and of millisecond timestamps.

`SqliteBuffer` additionally promises durability across restarts (in-flight readings included), WAL
mode with one transaction per ``append``, and recovery from a damaged file. `BufferWorker` promises
to run every call in order on one named thread that ``close`` joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway.buffer import Batch, Buffer, BufferWorker, MemoryBuffer, SqliteBuffer
from gateway.buffer.sqlite import SEQ_BLOCK
from gateway.model import Quality, Reading, Value, utc_ms

TS = utc_ms(datetime(2026, 3, 14, 9, 26, 53, 589793, tzinfo=UTC))

KINDS = ["memory", "sqlite"]


def make_buffer(kind: str, path: Path) -> Buffer:
    """A fresh buffer of ``kind``; ``path`` is only used by the durable one."""
    if kind == "memory":
        return MemoryBuffer()
    return SqliteBuffer(path)


def reading(seq: int, value: Value = 21.5, *, ts: datetime = TS, metric: str = "t") -> Reading:
    """A reading whose quality follows the model's rule (NO_VALUE exactly when value is None)."""
    return Reading(
        device="room-1",
        metric=metric,
        value=value,
        unit="Cel",
        ts=ts,
        seq=seq,
        quality=Quality.NO_VALUE if value is None else Quality.GOOD,
    )


def readings(seqs: Sequence[int] | range) -> list[Reading]:
    return [reading(seq, float(seq)) for seq in seqs]


def seqs_of(batch: Batch | None) -> list[int]:
    assert batch is not None, "expected a batch, got None"
    return [r.seq for r in batch.readings]


def assert_same_reading(got: Reading, want: Reading) -> None:
    """Stricter than ``==``: True == 1 == 1.0 and -0.0 == 0.0 in Python, but not on the wire."""
    assert got == want
    assert type(got.value) is type(want.value), (got.value, want.value)
    assert repr(got.value) == repr(want.value)
    assert type(got.quality) is Quality
    assert got.ts.utcoffset() == timedelta(0)


@pytest.fixture(params=KINDS)
def buffer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Buffer]:
    buf = make_buffer(request.param, tmp_path / "buffer.db")
    yield buf
    buf.close()


# --- The shared suite -------------------------------------------------------------------------


def test_begin_on_empty_buffer_returns_none(buffer: Buffer) -> None:
    assert buffer.begin(10) is None
    assert buffer.pending() == 0
    assert buffer.last_seq() == 0


def test_begin_hands_out_oldest_first_at_most_limit_and_skips_in_flight(buffer: Buffer) -> None:
    buffer.append(readings(range(1, 6)))
    buffer.append(readings(range(6, 11)))

    first = buffer.begin(4)
    assert seqs_of(first) == [1, 2, 3, 4]
    assert seqs_of(buffer.begin(4)) == [5, 6, 7, 8]
    assert seqs_of(buffer.begin(4)) == [9, 10]
    assert buffer.begin(4) is None
    # In flight is still pending: nothing is forgotten before a sink confirmed it.
    assert buffer.pending() == 10
    assert first is not None
    for got, want in zip(first.readings, readings(range(1, 5)), strict=True):
        assert_same_reading(got, want)


def test_batch_ids_are_unique(buffer: Buffer) -> None:
    buffer.append(readings(range(1, 7)))
    batches = [buffer.begin(2) for _ in range(3)]
    assert len({b.id for b in batches if b is not None}) == 3


def test_accepted_batch_is_forgotten(buffer: Buffer) -> None:
    buffer.append(readings(range(1, 6)))
    batch = buffer.begin(3)
    assert batch is not None
    buffer.end(batch, accepted=True)

    assert buffer.pending() == 2
    assert seqs_of(buffer.begin(10)) == [4, 5]


def test_rejected_batch_is_delivered_again_before_newer_readings(buffer: Buffer) -> None:
    buffer.append(readings(range(1, 4)))
    batch = buffer.begin(10)
    assert batch is not None
    buffer.append(readings(range(4, 6)))

    buffer.end(batch, accepted=False)

    assert buffer.pending() == 5
    again = buffer.begin(10)
    assert seqs_of(again) == [1, 2, 3, 4, 5]
    assert again is not None
    for got, want in zip(again.readings, batch.readings, strict=False):
        assert_same_reading(got, want)


def test_batches_rejected_out_of_order_come_back_in_seq_order(buffer: Buffer) -> None:
    buffer.append(readings(range(1, 10)))
    b1, b2, b3 = (buffer.begin(3) for _ in range(3))
    assert b1 is not None and b2 is not None and b3 is not None
    buffer.append(readings(range(10, 13)))

    buffer.end(b3, accepted=False)
    buffer.end(b1, accepted=False)

    # The limit applies to returned readings too; b2 stays in flight and is not handed out.
    assert seqs_of(buffer.begin(2)) == [1, 2]
    assert seqs_of(buffer.begin(100)) == [3, 7, 8, 9, 10, 11, 12]
    buffer.end(b2, accepted=False)
    assert seqs_of(buffer.begin(100)) == [4, 5, 6]
    assert buffer.begin(100) is None


def test_ending_an_unknown_or_already_ended_batch_raises(buffer: Buffer) -> None:
    buffer.append(readings(range(1, 4)))
    batch = buffer.begin(10)
    assert batch is not None
    buffer.end(batch, accepted=False)

    with pytest.raises(ValueError):
        buffer.end(batch, accepted=True)
    with pytest.raises(ValueError):
        buffer.end(batch, accepted=False)
    with pytest.raises(ValueError):
        buffer.end(Batch(id=10_000, readings=()), accepted=True)
    # The failed calls changed nothing.
    assert buffer.pending() == 3
    assert seqs_of(buffer.begin(10)) == [1, 2, 3]


def test_last_seq_survives_deleting_everything(buffer: Buffer) -> None:
    buffer.append(readings([3, 7, 42]))
    batch = buffer.begin(10)
    assert batch is not None
    buffer.end(batch, accepted=True)

    assert buffer.pending() == 0
    assert buffer.last_seq() == 42
    with pytest.raises(ValueError):
        buffer.append(readings([42]))
    buffer.append(readings([43]))
    assert buffer.last_seq() == 43


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([3], id="equal-to-last"),
        pytest.param([1], id="below-last"),
        pytest.param([4, 2], id="valid-then-below-last"),
        pytest.param([5, 5], id="duplicate-in-one-call"),
    ],
)
def test_append_at_or_below_last_seq_raises_and_stores_nothing(
    buffer: Buffer, bad: list[int]
) -> None:
    buffer.append(readings([1, 2, 3]))

    with pytest.raises(ValueError):
        buffer.append(readings(bad))

    assert buffer.last_seq() == 3
    assert buffer.pending() == 3
    # Nothing of the rejected call is stored: the next fresh seq is still free.
    buffer.append(readings([4]))
    assert seqs_of(buffer.begin(100)) == [1, 2, 3, 4]


ROUND_TRIP_VALUES: list[Value] = [
    0.1,
    -0.0,
    0.0,
    1e308,
    -1e308,
    5e-324,
    1.0,
    -273.15,
    0,
    1,
    -1,
    2**62,
    -(2**62),
    2**63 - 1,
    True,
    False,
    "",
    "ok",
    "CO₂ ≤ 1000 ppm — Größe 😀",
    None,
]


def test_every_value_type_round_trips_exactly(buffer: Buffer) -> None:
    originals = [reading(i + 1, v) for i, v in enumerate(ROUND_TRIP_VALUES)]
    buffer.append(originals)

    batch = buffer.begin(len(originals))
    assert batch is not None
    assert len(batch.readings) == len(originals)
    for got, want in zip(batch.readings, originals, strict=True):
        assert_same_reading(got, want)
    assert [r.quality for r in batch.readings if r.value is None] == [Quality.NO_VALUE]


ROUND_TRIP_TIMES = [
    datetime(2026, 3, 14, 9, 26, 53, 589793, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2027, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
    datetime(2024, 2, 29, 12, 0, 0, 0, tzinfo=UTC),
    datetime(2026, 6, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
    datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
    datetime(2099, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
]


def test_millisecond_timestamps_round_trip_exactly(buffer: Buffer) -> None:
    originals = [reading(i + 1, ts=utc_ms(ts)) for i, ts in enumerate(ROUND_TRIP_TIMES)]
    buffer.append(originals)

    batch = buffer.begin(100)
    assert batch is not None
    for got, want in zip(batch.readings, originals, strict=True):
        assert got.ts == want.ts
        assert got.ts.utcoffset() == timedelta(0)
        assert got.ts.microsecond % 1000 == 0


# --- Random interleavings (Hypothesis state machine) ------------------------------------------

VALUES = st.one_of(
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(max_size=12),
    st.none(),
)
TIMES = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(utc_ms)


class BufferMachine(RuleBasedStateMachine):
    """Model: the readings appended and not yet accepted, and the batches in flight.

    ``begin(n)`` must return exactly the ``n`` lowest pending seqs that are not in flight (rejected
    readings all lie below any never-delivered one, so "rejected first, in seq order" and "oldest
    not in flight" coincide). Teardown rejects what is in flight and drains the buffer: every
    pending reading must come out exactly once.
    """

    kind: ClassVar[str] = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.path = Path(self._dir.name) / "buffer.db"
        self.buffer = self._open()
        self.stored: dict[int, Reading] = {}
        self.inflight: dict[int, Batch] = {}
        self.ended: list[Batch] = []
        self.last = 0

    def _open(self) -> Buffer:
        if self.kind == "memory":
            return MemoryBuffer()
        # NORMAL only skips fsyncs; restarts here are clean closes, so the model is unaffected.
        return SqliteBuffer(self.path, synchronous="NORMAL")

    @rule(
        new=st.lists(
            st.tuples(st.integers(min_value=1, max_value=3), VALUES, TIMES), min_size=1, max_size=5
        )
    )
    def append(self, new: list[tuple[int, Value, datetime]]) -> None:
        batch = []
        for gap, value, ts in new:
            self.last += gap
            batch.append(reading(self.last, value, ts=ts))
        self.buffer.append(batch)
        self.stored.update((r.seq, r) for r in batch)

    @rule(limit=st.integers(min_value=1, max_value=6))
    def begin(self, limit: int) -> None:
        in_flight = {r.seq for b in self.inflight.values() for r in b.readings}
        expected = sorted(set(self.stored) - in_flight)[:limit]
        batch = self.buffer.begin(limit)
        if not expected:
            assert batch is None
            return
        assert seqs_of(batch) == expected
        assert batch is not None
        for got in batch.readings:
            assert_same_reading(got, self.stored[got.seq])
        assert batch.id not in self.inflight
        self.inflight[batch.id] = batch

    @precondition(lambda self: bool(self.inflight))
    @rule(data=st.data(), accepted=st.booleans())
    def end(self, data: st.DataObject, accepted: bool) -> None:
        batch_id = data.draw(st.sampled_from(sorted(self.inflight)), label="batch")
        batch = self.inflight.pop(batch_id)
        self.buffer.end(batch, accepted=accepted)
        if accepted:
            for r in batch.readings:
                del self.stored[r.seq]
        self.ended.append(batch)

    @precondition(lambda self: bool(self.ended))
    @rule(data=st.data(), accepted=st.booleans())
    def end_again(self, data: st.DataObject, accepted: bool) -> None:
        batch = data.draw(st.sampled_from(self.ended), label="ended batch")
        with pytest.raises(ValueError):
            self.buffer.end(batch, accepted=accepted)

    @precondition(lambda self: self.kind == "sqlite")
    @rule()
    def restart(self) -> None:
        """A restart forgets what was in flight: those readings are deliverable again."""
        self.buffer.close()
        self.buffer = self._open()
        self.inflight.clear()
        # Batch ids are unique per buffer instance only; old batches die with their instance.
        self.ended.clear()

    @invariant()
    def counts_match_model(self) -> None:
        assert self.buffer.pending() == len(self.stored)
        assert self.buffer.last_seq() == self.last

    def teardown(self) -> None:
        try:
            for in_flight in self.inflight.values():
                self.buffer.end(in_flight, accepted=False)
            delivered: list[int] = []
            while (batch := self.buffer.begin(4)) is not None:
                delivered.extend(r.seq for r in batch.readings)
                self.buffer.end(batch, accepted=True)
            assert delivered == sorted(self.stored)
            assert self.buffer.pending() == 0
        finally:
            self.buffer.close()
            self._dir.cleanup()


@pytest.mark.parametrize("kind", KINDS)
def test_random_interleavings_never_lose_or_duplicate_a_reading(kind: str) -> None:
    machine = type(f"{kind.title()}BufferMachine", (BufferMachine,), {"kind": kind})
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )


# --- SqliteBuffer only ------------------------------------------------------------------------


def test_reopening_keeps_unacknowledged_readings_including_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = SqliteBuffer(path)
    originals = readings(range(1, 11))
    buf.append(originals)
    accepted = buf.begin(2)  # 1, 2
    assert accepted is not None
    buf.end(accepted, accepted=True)
    rejected = buf.begin(2)  # 3, 4
    assert rejected is not None
    buf.end(rejected, accepted=False)
    assert seqs_of(buf.begin(4)) == [3, 4, 5, 6]  # in flight when the process "dies"
    buf.close()

    again = SqliteBuffer(path)
    try:
        assert again.recovered_from is None
        assert again.last_seq() == 10
        assert again.pending() == 8
        batch = again.begin(100)
        assert seqs_of(batch) == list(range(3, 11))
        assert batch is not None
        for got, want in zip(batch.readings, originals[2:], strict=True):
            assert_same_reading(got, want)
        with pytest.raises(ValueError):
            again.append(readings([10]))
    finally:
        again.close()


def test_last_seq_survives_a_restart_after_everything_was_delivered(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = SqliteBuffer(path)
    buf.append(readings([5, 9]))
    batch = buf.begin(10)
    assert batch is not None
    buf.end(batch, accepted=True)
    buf.close()

    again = SqliteBuffer(path)
    try:
        assert again.pending() == 0
        assert again.last_seq() == 9
        with pytest.raises(ValueError):
            again.append(readings([9]))
    finally:
        again.close()


def wal_commits(db_path: Path) -> int:
    """Count commit frames in the current generation of ``db_path``'s WAL file.

    Read straight from the file (https://sqlite.org/fileformat.html#the_write_ahead_log): a frame
    whose header field "database size after commit" is non-zero ends a transaction. Frames whose
    salts differ from the WAL header's belong to an earlier generation and end the scan.
    """
    data = Path(f"{db_path}-wal").read_bytes()
    if len(data) < 32:
        return 0
    page_size = int.from_bytes(data[8:12], "big")
    salts = data[16:24]
    commits, offset = 0, 32
    while offset + 24 + page_size <= len(data):
        header = data[offset : offset + 24]
        if header[8:16] != salts:
            break
        if int.from_bytes(header[4:8], "big"):
            commits += 1
        offset += 24 + page_size
    return commits


def test_file_is_in_wal_mode_and_each_append_is_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = SqliteBuffer(path)
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        base = wal_commits(path)

        buf.append(readings(range(1, 51)))
        assert wal_commits(path) == base + 1
        # Committed before append returned: another connection sees every row.
        assert other.execute("SELECT count(*) FROM readings").fetchone()[0] == 50

        for start in (51, 52, 53):
            buf.append(readings([start]))
        assert wal_commits(path) == base + 4
        assert other.execute("SELECT count(*) FROM readings").fetchone()[0] == 53
    finally:
        other.close()
        buf.close()


def corrupt(path: Path) -> bytes:
    """Overwrite the SQLite header of ``path``: nothing in it can be read any more."""
    with path.open("r+b") as f:
        f.write(b"\xde\xad\xbe\xef" * 25)
    return path.read_bytes()


def test_corrupt_file_is_moved_aside_and_a_new_buffer_starts(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    old = SqliteBuffer(path)
    old.append(readings(range(1, 6)))
    old.close()
    damaged = corrupt(path)

    before = time.time_ns()
    buf = SqliteBuffer(path)
    after = time.time_ns()
    try:
        moved = buf.recovered_from
        assert moved is not None
        assert moved.parent == path.parent
        prefix = f"{path.name}.corrupt-"
        assert moved.name.startswith(prefix)
        assert before <= int(moved.name.removeprefix(prefix)) <= after
        assert moved.read_bytes() == damaged

        assert buf.pending() == 0
        # The damaged file's high-water mark is unreadable (its header is gone): sequence numbers
        # continue above the separate mark file, so consumers see a gap, never a repeat of 1..5.
        floor = buf.last_seq()
        assert floor == SEQ_BLOCK  # the mark written when the old buffer was created
        assert buf.begin(10) is None
        buf.append(readings([floor + 1, floor + 2]))
        batch = buf.begin(10)
        assert seqs_of(batch) == [floor + 1, floor + 2]
        assert batch is not None
        buf.end(batch, accepted=True)
        assert buf.pending() == 0
    finally:
        buf.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    check.close()


def test_the_sequence_mark_is_raised_durably_before_a_number_passes_it(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    mark = tmp_path / "buffer.db.seq"
    buf = SqliteBuffer(path)
    try:
        assert int(mark.read_text()) == SEQ_BLOCK  # written at creation
        buf.append(readings([1, 2]))
        assert int(mark.read_text()) == SEQ_BLOCK, "not rewritten while numbers stay below it"
        buf.append(readings([SEQ_BLOCK + 7]))
        assert int(mark.read_text()) == 2 * SEQ_BLOCK + 7
    finally:
        buf.close()
    mark.unlink()  # a buffer from before the mark file: the mark is rebuilt from last_seq
    SqliteBuffer(path).close()
    assert int(mark.read_text()) == 2 * SEQ_BLOCK + 7


def test_after_corruption_numbers_stay_above_all_used_even_with_a_stale_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Pi without a battery-backed clock boots in 1970 after a power cut that damaged the
    buffer: the new floor must not come from the clock, which is below numbers already used."""
    path = tmp_path / "buffer.db"
    old = SqliteBuffer(path)
    old.append(readings([1, 2, 5_000_000]))
    old.close()
    corrupt(path)
    monkeypatch.setattr("gateway.buffer.sqlite.time", SimpleNamespace(time_ns=lambda: 10**9))

    buf = SqliteBuffer(path)
    try:
        assert buf.recovered_from is not None
        assert buf.last_seq() > 5_000_000
        with pytest.raises(ValueError):
            buf.append(readings([5_000_000]))
    finally:
        buf.close()


def test_after_corruption_a_readable_old_file_counts_too(tmp_path: Path) -> None:
    """When the damaged file still tells its numbers, they count even above a stale mark."""
    path = tmp_path / "buffer.db"
    old = SqliteBuffer(path)
    old.append(readings([1, 2, 3]))
    old.close()
    (tmp_path / "buffer.db.seq").write_text("2\n")  # e.g. a mark restored from an old backup
    # Readable, but fails quick_check: the page of an index is overwritten.
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("CREATE INDEX by_ts ON readings (ts_ms)")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'by_ts'").fetchone()[0]
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
    with path.open("r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xff" * 64)

    buf = SqliteBuffer(path)
    try:
        assert buf.recovered_from is not None
        assert buf.last_seq() == 3
    finally:
        buf.close()


def test_after_losing_both_files_numbers_jump_to_the_wall_clock(tmp_path: Path) -> None:
    """The last resort, when nothing durable survived: the Unix time in milliseconds."""
    path = tmp_path / "buffer.db"
    old = SqliteBuffer(path)
    old.append(readings([1, 2, 3]))
    old.close()
    corrupt(path)
    (tmp_path / "buffer.db.seq").write_bytes(b"\x00garbage")

    before = time.time_ns()
    buf = SqliteBuffer(path)
    after = time.time_ns()
    try:
        assert before // 1_000_000 <= buf.last_seq() <= after // 1_000_000
    finally:
        buf.close()


def test_a_new_buffer_file_starts_above_an_existing_mark(tmp_path: Path) -> None:
    """A buffer deleted by hand, or come back empty after a power cut, never repeats numbers."""
    path = tmp_path / "buffer.db"
    old = SqliteBuffer(path)
    old.append(readings([1, 2, 3]))
    old.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"")  # zero length: SQLite opens it as a new, empty database

    buf = SqliteBuffer(path)
    try:
        assert buf.recovered_from is None
        assert buf.last_seq() == SEQ_BLOCK
    finally:
        buf.close()


class ThreadRecordingBuffer:
    """Delegates to a real buffer and records which method ran on which thread, in order."""

    def __init__(self, inner: Buffer) -> None:
        self.inner = inner
        self.calls: list[tuple[str, threading.Thread]] = []

    def _record(self, name: str) -> None:
        self.calls.append((name, threading.current_thread()))

    def append(self, readings: Sequence[Reading]) -> None:
        self._record("append")
        self.inner.append(readings)

    def commit(
        self,
        readings: Sequence[Reading],
        accepted: Sequence[Batch],
        offsets: Mapping[int, int] | None = None,
    ) -> int:
        self._record("commit")
        return self.inner.commit(readings, accepted, offsets)

    def restamp(self, offset_ms: int) -> int:
        self._record("restamp")
        return self.inner.restamp(offset_ms)

    def release_unsynced(self) -> int:
        self._record("release_unsynced")
        return self.inner.release_unsynced()

    def begin(self, limit: int, *, live: bool | None = None) -> Batch | None:
        self._record("begin")
        return self.inner.begin(limit, live=live)

    def mark_live_boundary(self) -> None:
        self._record("mark_live_boundary")
        self.inner.mark_live_boundary()

    def dropped(self) -> int:
        self._record("dropped")
        return self.inner.dropped()

    def end(self, batch: Batch, *, accepted: bool) -> None:
        self._record("end")
        self.inner.end(batch, accepted=accepted)

    def pending(self) -> int:
        self._record("pending")
        return self.inner.pending()

    def last_seq(self) -> int:
        self._record("last_seq")
        return self.inner.last_seq()

    def close(self) -> None:
        self._record("close")
        self.inner.close()


def test_worker_runs_calls_in_order_on_one_named_thread_and_joins_it(tmp_path: Path) -> None:
    recorder = ThreadRecordingBuffer(SqliteBuffer(tmp_path / "buffer.db"))

    async def main() -> None:
        worker = BufferWorker(recorder)
        assert not worker.appended.is_set()

        async def woken_by_append() -> int:
            await worker.appended.wait()
            return await worker.pending()

        waiter = asyncio.create_task(woken_by_append())
        await worker.append(readings([1]))
        assert worker.appended.is_set()
        # The event is set only once the readings are stored.
        assert await asyncio.wait_for(waiter, timeout=5) == 1
        worker.appended.clear()

        results = await asyncio.gather(
            worker.append(readings([2])),
            worker.begin(10),
            worker.append(readings([3])),
            worker.begin(10),
            worker.pending(),
            worker.last_seq(),
        )
        assert seqs_of(results[1]) == [1, 2]
        assert seqs_of(results[3]) == [3]
        assert list(results[4:]) == [3, 3]
        assert worker.appended.is_set()

        worker.appended.clear()
        with pytest.raises(ValueError):
            await worker.append(readings([3]))
        assert not worker.appended.is_set(), "a failed append stored nothing"

        batch = results[1]
        assert batch is not None
        await worker.end(batch, accepted=True)
        assert await worker.pending() == 1
        await worker.close()

    asyncio.run(main())

    names = [name for name, _ in recorder.calls]
    # Appends and acknowledgements reach storage as group commits (one transaction each).
    assert names == [
        "commit",
        "pending",
        "commit",
        "begin",
        "commit",
        "begin",
        "pending",
        "last_seq",
        "commit",
        "commit",
        "pending",
        "close",
    ]
    threads = {thread for _, thread in recorder.calls}
    assert len(threads) == 1
    (thread,) = threads
    assert thread is not threading.main_thread()
    assert thread.name.startswith("buffer")
    assert not thread.is_alive(), "close() must join the worker thread"


def test_a_buffer_of_a_newer_format_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """A rollback to an older gateway must not take a newer file for a damaged one (moved aside,
    its readings lost): it refuses to start, naming the file and what to do."""
    import sqlite3  # noqa: PLC0415

    from gateway.buffer.sqlite import FORMAT, BufferFormatError  # noqa: PLC0415

    path = tmp_path / "buffer.sqlite3"
    buffer = SqliteBuffer(path)
    buffer.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == FORMAT
        db.execute(f"PRAGMA user_version = {FORMAT + 1}")
    before = path.read_bytes()
    with pytest.raises(BufferFormatError, match="newer Canary Gateway"):
        SqliteBuffer(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.corrupt-*"))
