"""The durable buffer: one SQLite file in WAL mode.

Why SQLite: atomic multi-row commits, crash safety proven by decades of use, and a file an installer
can inspect with the ``sqlite3`` shell. Writes are grouped: `BufferWorker` calls ``commit`` once per
commit window with every reading polled and every batch acknowledged in that window, because an SD
card pays at least one 4 KiB page per transaction.

Durability: ``synchronous=FULL`` (the default) makes a committed window survive a power cut;
``NORMAL`` (fsync at checkpoints only) may lose the last windows on power loss but never corrupts the
file. docs/benchmarks.md has the measured cost of each.

The high-water sequence number and the drop counter live in the ``meta`` table, updated in the same
transaction as the rows, so sequence numbers never repeat, even after every row was delivered.

Sequence numbers are *reserved* in blocks before use (`reserve`, one small transaction synced to
the card whatever ``synchronous`` says), because with write-behind delivery most readings are never
stored: the floor after a crash is the reservation, not the last stored row, so numbers handed out
but lost in a crash are never used again. The file is marked running at open and clean by
`finish`; opening a file that was not finished declares the range ``(safe, reserved]`` as a `Gap`
(kept in the ``gaps`` table until its announcement was acknowledged), so a consumer can tell an
explained gap from a loss.

A file that SQLite cannot open, or whose ``quick_check`` fails, is renamed to
``<name>.corrupt-<time>`` and a fresh buffer is started: a damaged card must not put the gateway into
a crash loop. Sequence numbers then continue above everything possibly used before, which must come
from something that survives the damage. So the buffer keeps a second, tiny file next to it,
``<name>.seq``: a number above every sequence number ever committed, raised in blocks of
`SEQ_BLOCK` (written and fsynced before the commit that would pass it, so once per million
readings, not once per commit). After a recovery the floor is the highest of that mark and of the
damaged file's ``last_seq`` and ``max(seq)`` where they can still be read. Only when none of them
is readable does it fall back to the Unix time in milliseconds, which a Pi with a stale clock after
a power cut may set too low: that needs the loss of both files. A consumer sees a gap, which is the
truth (the damaged file's readings are lost), and never a repeat. For the same reason a buffer file
that is new (deleted by hand, or come back empty after a power cut) while the mark exists starts
above the mark.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from gateway.buffer.base import Batch, BufferLimits, Gap, InflightTracker, check_sequence
from gateway.errors import StorageError
from gateway.model import Quality, Reading, Value, from_epoch_ms, to_epoch_ms

log = logging.getLogger(__name__)


class BufferFormatError(StorageError):
    """The buffer file is of a newer format than this code reads (a rollback): refused whole,
    so that its readings stay for the version that wrote them."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq     INTEGER PRIMARY KEY,
    device  TEXT    NOT NULL,
    metric  TEXT    NOT NULL,
    vtype   TEXT    NOT NULL,
    value,
    unit    TEXT    NOT NULL,
    ts_ms   INTEGER NOT NULL,
    quality TEXT    NOT NULL,
    -- 1: timestamp trusted; 0: held until re-stamped (offset_ms = wall - monotonic at the poll);
    -- 2: released with an untrusted timestamp
    synced    INTEGER NOT NULL DEFAULT 1,
    offset_ms INTEGER
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0), ('dropped', 0), ('boot', 0);
-- Sequence-number reservation (see the module docstring): numbers up to 'reserved' may have
-- been handed out; every reading up to 'safe' was stored or delivered; 'clean' is 1 after a
-- clean stop and 0 while a gateway runs.
INSERT OR IGNORE INTO meta (key, value) VALUES ('reserved', 0), ('safe', 0), ('clean', 1);
CREATE TABLE IF NOT EXISTS gaps (
    from_seq INTEGER PRIMARY KEY,
    to_seq   INTEGER NOT NULL,
    reason   TEXT    NOT NULL,
    ts_ms    INTEGER NOT NULL
);
"""

Synchronous = Literal["FULL", "NORMAL"]

#: When over ``max_bytes``, drop down to this fraction of it, so that not every commit drops.
BYTES_LOW_WATER = 0.9
#: How far ahead of the stored sequence numbers the ``.seq`` high-water mark is raised at a time.
SEQ_BLOCK = 1_000_000
#: The file format this code writes (``PRAGMA user_version``; 0: written before the format had
#: a number, which this code upgrades in place). A file of a higher format was written by a
#: newer gateway: it is refused, never moved aside (`BufferFormatError`).
FORMAT = 1


class SqliteBuffer:
    """A `gateway.buffer.Buffer` stored in an SQLite database at ``path``."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous = "FULL",
        limits: BufferLimits | None = None,
        boot_id: int = 0,
        declared_at_ms: int | None = None,
    ) -> None:
        """``boot_id`` identifies this boot (see `current_boot_id`): readings held in an earlier
        boot cannot be re-stamped (the monotonic clock restarted) and are released at once.
        ``declared_at_ms`` stamps a gap declared at open (default: the wall clock now)."""
        self.path = path
        self._synchronous = synchronous
        self._limits = limits or BufferLimits()
        #: Where a damaged previous file was moved to, if one was found at start-up.
        self.recovered_from: Path | None = None
        #: The ``.seq`` high-water mark file (module docstring).
        self.mark_path = path.with_name(f"{path.name}.seq")
        path.parent.mkdir(parents=True, exist_ok=True)
        mark = self._read_mark()
        try:
            self._db, created = self._open(synchronous)
            floor = mark if created else None
            if floor:
                log.warning(
                    "buffer %s is new but sequence numbers up to %d may have been used; "
                    "continuing above them",
                    path,
                    floor,
                )
        except sqlite3.DatabaseError as exc:
            self.recovered_from = self._move_aside(exc)
            self._db, _ = self._open(synchronous)
            floor = self._seq_floor_after_recovery(self.recovered_from, mark)
        if floor:
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (floor,))
        self._track = InflightTracker()
        self._last_seq = self._meta("last_seq")
        self._mark = mark if mark is not None and mark >= self._last_seq else -1
        if self._mark < 0:
            self._write_mark(self._last_seq + SEQ_BLOCK)
        self._dropped = self._meta("dropped")
        self._count = int(self._db.execute("SELECT count(*) FROM readings").fetchone()[0])
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        if boot_id != self._meta("boot"):
            released = self._release()
            if released:
                log.warning("released %d readings held from an earlier boot unsynced", released)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'boot'", (boot_id,))
        held = self._db.execute("SELECT min(seq) FROM readings WHERE synced = 0").fetchone()[0]
        if held is not None:
            self._track.hold(int(held))
        self._reserved = max(self._meta("reserved"), self._last_seq)
        self._start_run(declared_at_ms, lost_upto=floor)

    def _start_run(self, declared_at_ms: int | None, *, lost_upto: int | None) -> None:
        """Mark the file running; after an unclean stop, declare the numbers that may be lost.

        ``lost_upto``: the file was damaged or lost, and with it the record of what was
        delivered: every number up to the floor may be lost (``buffer_lost``), which the status's
        ``recovered_from`` explains.
        """
        unclean = self._meta("clean") == 0
        # Readings are written in sequence order (a prefix of what is unacknowledged), so a
        # stored reading proves every number below it stored or delivered.
        safe = max(self._meta("safe"), self._last_seq)
        ts_ms = declared_at_ms if declared_at_ms is not None else time.time_ns() // 10**6
        with self._durable():
            if lost_upto:
                self._db.execute(
                    "INSERT OR REPLACE INTO gaps VALUES (1, ?, 'buffer_lost', ?)",
                    (lost_upto, ts_ms),
                )
            elif unclean and self._reserved > safe:
                self._db.execute(
                    "INSERT OR REPLACE INTO gaps VALUES (?, ?, 'unclean_stop', ?)",
                    (safe + 1, self._reserved, ts_ms),
                )
                log.warning(
                    "the last stop was not clean: readings %d..%d may be lost; declared as a gap",
                    safe + 1,
                    self._reserved,
                )
            self._db.execute("UPDATE meta SET value = 0 WHERE key = 'clean'")
            self._db.execute(
                "UPDATE meta SET value = ? WHERE key IN ('reserved', 'safe')", (self._reserved,)
            )

    @contextlib.contextmanager
    def _durable(self) -> Iterator[None]:
        """One transaction synced to the card even under ``synchronous=NORMAL``.

        In WAL mode a FULL commit syncs the log, which also makes every earlier commit durable.
        """
        db = self._db
        db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        finally:
            db.execute(f"PRAGMA synchronous={self._synchronous}")

    def held_from(self) -> int | None:
        return self._track.held_from

    def seq_floor(self) -> int:
        return max(self._reserved, self._last_seq)

    def reserve(self, upto: int, *, safe: int) -> None:
        if upto > self._mark:  # the disaster floor covers every number that may be handed out
            self._write_mark(upto + SEQ_BLOCK)
        with self._durable():
            self._db.execute(
                "UPDATE meta SET value = max(value, ?) WHERE key = 'reserved'", (upto,)
            )
            self._db.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'safe'", (safe,))
        self._reserved = max(self._reserved, upto)

    def finish(self, last: int) -> None:
        last = max(last, self._last_seq)
        with self._durable():
            self._db.execute(
                "UPDATE meta SET value = ? WHERE key IN ('reserved', 'safe', 'last_seq')", (last,)
            )
            self._db.execute("UPDATE meta SET value = 1 WHERE key = 'clean'")
        self._reserved = self._last_seq = last

    def declared_gaps(self) -> list[Gap]:
        rows = self._db.execute("SELECT * FROM gaps ORDER BY from_seq").fetchall()
        return [Gap(int(a), int(b), str(reason), int(ts)) for a, b, reason, ts in rows]

    def gap_published(self, gap: Gap) -> None:
        with self._db:
            self._db.execute("DELETE FROM gaps WHERE from_seq = ?", (gap.from_seq,))

    def _open(self, synchronous: Synchronous) -> tuple[sqlite3.Connection, bool]:
        """The open, checked connection, and whether the file was new (had no tables)."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            written = int(db.execute("PRAGMA user_version").fetchone()[0])
            if written > FORMAT:
                raise BufferFormatError(
                    f"buffer {self.path} was written by a newer Canary Gateway (file format "
                    f"{written}; this version reads up to {FORMAT}): install the newer version "
                    "again, or let it publish the buffer and move the file aside"
                )
            columns = {row[1] for row in db.execute("PRAGMA table_info(readings)")}
            if columns and "synced" not in columns:  # a buffer from before held readings
                db.execute("ALTER TABLE readings ADD COLUMN synced INTEGER NOT NULL DEFAULT 1")
                db.execute("ALTER TABLE readings ADD COLUMN offset_ms INTEGER")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {FORMAT}")
        except (sqlite3.DatabaseError, BufferFormatError):
            db.close()
            raise
        return db, not columns

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _move_aside(self, exc: sqlite3.DatabaseError) -> Path:
        target = self.path.with_name(f"{self.path.name}.corrupt-{time.time_ns()}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(Path(f"{target}{suffix}"))
        log.error(
            "buffer %s is damaged (%s); moved it to %s and started a new one",
            self.path,
            exc,
            target,
        )
        return target

    def _read_mark(self) -> int | None:
        """The ``.seq`` high-water mark, or None if there is none or it cannot be read."""
        try:
            return int(self.mark_path.read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cannot read the sequence mark %s (%s)", self.mark_path, exc)
            return None

    def _write_mark(self, mark: int) -> None:
        """Replace the ``.seq`` file by ``mark`` durably (fsync file and directory) or raise."""
        tmp = self.mark_path.with_name(f"{self.mark_path.name}.tmp")
        with tmp.open("w") as f:
            f.write(f"{mark}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.mark_path)
        directory = os.open(self.mark_path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._mark = mark

    @staticmethod
    def _seq_floor_after_recovery(damaged: Path, mark: int | None) -> int:
        """Above every sequence number the damaged buffer may have used (module docstring)."""
        known = [] if mark is None else [mark]
        for query in (
            "SELECT value FROM meta WHERE key = 'last_seq'",
            "SELECT max(seq) FROM readings",
        ):
            try:
                with contextlib.closing(
                    sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
                ) as old:
                    known.append(int(old.execute(query).fetchone()[0]))
            except (sqlite3.Error, TypeError):
                continue
        if known:
            return max(known)
        floor = time.time_ns() // 1_000_000
        log.warning(
            "no sequence mark survived; sequence numbers continue at the wall clock (%d)", floor
        )
        return floor

    def append(self, readings: Sequence[Reading]) -> None:
        self.commit(readings, ())

    def commit(
        self,
        readings: Sequence[Reading],
        accepted: Sequence[Batch],
        offsets: Mapping[int, int] | None = None,
        adopted: Sequence[Batch] = (),
    ) -> int:
        check_sequence(readings, self._last_seq)
        offsets = offsets or {}
        for batch in accepted:
            self._track.require(batch)
        if readings and readings[-1].seq > self._mark:
            self._write_mark(readings[-1].seq + SEQ_BLOCK)  # before any number passes it
        db = self._db
        count = self._count
        db.execute("BEGIN IMMEDIATE")
        try:
            if readings:
                db.executemany(
                    "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [_encode(r, offsets.get(r.seq)) for r in readings],
                )
                db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (readings[-1].seq,))
                count += len(readings)
            gone = [(r.seq,) for batch in accepted for r in batch.readings]
            if gone:
                count -= db.executemany("DELETE FROM readings WHERE seq = ?", gone).rowcount
            victims = self._victims(count, {r.seq for b in adopted for r in b.readings})
            if victims:
                db.executemany("DELETE FROM readings WHERE seq = ?", [(s,) for s in victims])
                db.execute(
                    "UPDATE meta SET value = value + ? WHERE key = 'dropped'", (len(victims),)
                )
                count -= len(victims)
            db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (disk full): don't mask the error with ours.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._count = count
        if readings:
            self._last_seq = readings[-1].seq
            held = [r.seq for r in readings if not r.time_synced and r.seq in offsets]
            if held:
                self._track.hold(held[0])
        for batch in adopted:
            self._track.adopt(batch)
        for batch in accepted:
            self._track.close(batch, accepted=True)
        if victims:
            self._dropped += len(victims)
            self._track.forget_returned(victims)
        return len(victims)

    def _victims(self, count: int, adopting: set[int]) -> list[int]:
        """Oldest sequence numbers (not in flight, nor ``adopting``) to drop so that the limits
        hold again."""
        limits, db, busy = self._limits, self._db, self._track.seqs | adopting
        victims: list[int] = []
        newest = db.execute("SELECT max(ts_ms) FROM readings WHERE synced = 1").fetchone()[0]
        if limits.max_age is not None and newest is not None:
            # Trusted timestamps only, on both sides (see `BufferLimits`).
            horizon = newest - int(limits.max_age.total_seconds() * 1000)
            rows = db.execute(
                "SELECT seq FROM readings WHERE synced = 1 AND ts_ms < ? ORDER BY seq", (horizon,)
            )
            victims = [seq for (seq,) in rows if seq not in busy]
        excess = 0
        if limits.max_readings is not None:
            excess = count - len(victims) - limits.max_readings
        if limits.max_bytes is not None and count:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            used = (pages - free) * self._page_size
            if used > limits.max_bytes:
                per_row = used / count
                target = limits.max_bytes * BYTES_LOW_WATER
                excess = max(excess, math.ceil((used - target) / per_row) - len(victims))
        if excess > 0:
            skip = set(victims) | busy
            rows = db.execute(
                "SELECT seq FROM readings ORDER BY seq LIMIT ?", (excess + len(skip),)
            )
            victims.extend([seq for (seq,) in rows if seq not in skip][:excess])
        return victims

    def begin(self, limit: int, *, live: bool | None = None) -> Batch | None:
        track = self._track
        taken = track.take_returned(limit, live)
        for lane in track.lanes(live):
            while len(taken) < limit:
                after, upto = track.window(lane)
                need = limit - len(taken)
                if upto is None:
                    rows = self._db.execute(
                        "SELECT * FROM readings WHERE seq > ? ORDER BY seq LIMIT ?", (after, need)
                    ).fetchall()
                else:
                    rows = self._db.execute(
                        "SELECT * FROM readings WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                        (after, upto, need),
                    ).fetchall()
                if not rows:
                    break
                track.examined(lane, rows[-1][0])
                taken.extend(_decode(row) for row in rows if row[0] not in track.seqs)
        return track.open(taken)

    def end(self, batch: Batch, *, accepted: bool) -> None:
        if accepted:
            self.commit((), (batch,))
        else:
            self._track.close(batch, accepted=False)

    def mark_live_boundary(self) -> None:
        self._track.move_boundary(self._last_seq)

    def restamp(self, offset_ms: int) -> int:
        with self._db:
            count = self._db.execute(
                "UPDATE readings SET ts_ms = ts_ms + (? - offset_ms), synced = 1, offset_ms = NULL"
                " WHERE synced = 0",
                (offset_ms,),
            ).rowcount
        self._track.held_from = None
        return int(count)

    def release_unsynced(self) -> int:
        with self._db:
            count = self._release()
        self._track.held_from = None
        return count

    def _release(self) -> int:
        return int(
            self._db.execute(
                "UPDATE readings SET synced = 2, offset_ms = NULL WHERE synced = 0"
            ).rowcount
        )

    def pending(self) -> int:
        return self._count

    def oldest(self) -> tuple[int, int] | None:
        row = self._db.execute("SELECT seq, ts_ms FROM readings ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def last_seq(self) -> int:
        return self._last_seq

    def dropped(self) -> int:
        return self._dropped

    def close(self) -> None:
        self._db.close()


_VTYPES: dict[type, str] = {bool: "b", int: "i", float: "f", str: "s", type(None): "n"}


def current_boot_id() -> int:
    """This boot's id (from the kernel), as an integer for the ``meta`` table; 0 if unknown."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
        return int(text[:15], 16)
    except (OSError, ValueError):
        return 0


def _encode(r: Reading, offset_ms: int | None) -> tuple[object, ...]:
    synced = 1 if r.time_synced else (0 if offset_ms is not None else 2)
    return (
        r.seq,
        r.device,
        r.metric,
        _VTYPES[type(r.value)],
        r.value,
        r.unit,
        to_epoch_ms(r.ts),
        r.quality.value,
        synced,
        offset_ms if synced == 0 else None,
    )


def _decode(row: tuple[Any, ...]) -> Reading:
    seq, device, metric, vtype, value, unit, ts_ms, quality, synced, _offset = row
    decoded: Value = bool(value) if vtype == "b" else float(value) if vtype == "f" else value
    return Reading(
        seq=seq,
        device=device,
        metric=metric,
        value=decoded,
        unit=unit,
        ts=from_epoch_ms(ts_ms),
        quality=Quality(quality),
        time_synced=synced == 1,
    )
