"""Child process of the harness self-tests: plain SQLite transactions, no gateway code.

``python -m tests.powercut.sqlite_writer DB JOURNAL_MODE SYNCHRONOUS COUNT`` commits ``COUNT``
transactions (``COUNT`` 0: until killed), one row each (``id``, 2 KiB of payload so that commits
span pages), printing ``<id>`` on stdout after each ``COMMIT`` returned, then ``idle`` and waits to
be killed. The parent cuts the power and checks that every printed id survived, or, for settings
that do not promise it, that some did not.
"""

from __future__ import annotations

import itertools
import signal
import sqlite3
import sys


def main() -> None:
    path, journal_mode, synchronous, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    db = sqlite3.connect(path, isolation_level=None)
    mode = db.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0]
    if mode.upper() != journal_mode.upper():
        raise SystemExit(f"journal_mode {journal_mode} refused: {mode}")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload BLOB)")
    start = db.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
    ids = itertools.count(start + 1) if count == 0 else range(start + 1, start + count + 1)
    for row in ids:
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?, randomblob(2048))", (row,))
        db.execute("COMMIT")
        print(row, flush=True)
    print("idle", flush=True)
    signal.pause()


if __name__ == "__main__":
    main()
