"""The durable buffer: one SQLite file in WAL mode.

Why SQLite: atomic multi-row commits, crash safety proven by decades of use, and a file an installer
can inspect with the ``sqlite3`` shell. Each ``append`` is one transaction (the scheduler appends one
poll's readings at a time), never one per reading: an SD card pays >= 4 KiB per commit.

Durability: ``synchronous=FULL`` by default, so an acknowledged ``append`` survives a power cut, not
just a process crash. ``NORMAL`` (fsync at checkpoints only) may lose the last commits on power loss
but never corrupts the file; it is available for cards where write volume matters more.

The high-water sequence number lives in the ``meta`` table and is updated in the same transaction as
the rows, so sequence numbers never repeat, even after every row was delivered and deleted.

A file that SQLite cannot open or whose ``quick_check`` fails is renamed to ``<name>.corrupt-<ts>``
and a fresh buffer is started: a damaged card must not put the gateway into a crash loop. The move is
reported through ``recovered_from``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from gateway.buffer.base import Batch, InflightTracker
from gateway.model import Quality, Reading, Value, from_epoch_ms, to_epoch_ms

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq     INTEGER PRIMARY KEY,
    device  TEXT    NOT NULL,
    metric  TEXT    NOT NULL,
    vtype   TEXT    NOT NULL,
    value,
    unit    TEXT    NOT NULL,
    ts_ms   INTEGER NOT NULL,
    quality TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0);
"""

Synchronous = Literal["FULL", "NORMAL"]


class SqliteBuffer:
    """A `gateway.buffer.Buffer` stored in an SQLite database at ``path``."""

    def __init__(self, path: Path, *, synchronous: Synchronous = "FULL") -> None:
        self.path = path
        #: Where a damaged previous file was moved to, if one was found at start-up.
        self.recovered_from: Path | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open(synchronous)
        except sqlite3.DatabaseError as exc:
            self.recovered_from = self._move_aside(exc)
            self._db = self._open(synchronous)
        self._track = InflightTracker()
        self._last_seq = int(
            self._db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0]
        )

    def _open(self, synchronous: Synchronous) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _move_aside(self, exc: sqlite3.DatabaseError) -> Path:
        target = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
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

    def append(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        rows = [_encode(r) for r in readings]
        top = max(r.seq for r in readings)
        if min(r.seq for r in readings) <= self._last_seq:
            raise ValueError(f"sequence numbers must be above {self._last_seq}")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (top,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._last_seq = top

    def begin(self, limit: int) -> Batch | None:
        taken = self._track.take_returned(limit)
        if len(taken) < limit:
            cursor = self._db.execute(
                "SELECT * FROM readings WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._track.cursor, limit - len(taken)),
            )
            taken.extend(_decode(row) for row in cursor)
        return self._track.open(taken)

    def end(self, batch: Batch, *, accepted: bool) -> None:
        self._track.close(batch, accepted=accepted)
        if accepted:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "DELETE FROM readings WHERE seq = ?", [(r.seq,) for r in batch.readings]
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def pending(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM readings").fetchone()[0])

    def last_seq(self) -> int:
        return self._last_seq

    def close(self) -> None:
        self._db.close()


_VTYPES: dict[type, str] = {bool: "b", int: "i", float: "f", str: "s", type(None): "n"}


def _encode(r: Reading) -> tuple[object, ...]:
    return (
        r.seq,
        r.device,
        r.metric,
        _VTYPES[type(r.value)],
        r.value,
        r.unit,
        to_epoch_ms(r.ts),
        r.quality.value,
    )


def _decode(row: tuple[Any, ...]) -> Reading:
    seq, device, metric, vtype, value, unit, ts_ms, quality = row
    decoded: Value = bool(value) if vtype == "b" else float(value) if vtype == "f" else value
    return Reading(
        seq=seq,
        device=device,
        metric=metric,
        value=decoded,
        unit=unit,
        ts=from_epoch_ms(ts_ms),
        quality=Quality(quality),
    )
