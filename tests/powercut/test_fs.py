"""Self-tests of the power-cut filesystem, judged against what POSIX and SQLite document rather
than against the filesystem's own code.

- Synced data survives, unsynced data is gone, names need a directory fsync (POSIX fsync(2)).
- A torn write keeps a page-aligned prefix of itself and touches nothing else.
- Shared writable mmap works (SQLite's WAL index needs it).
- A held fsync fails once the power is off, and makes nothing durable.
- SQLite's own promises hold on it, and its documented non-promises show: WAL with
  ``synchronous=FULL`` keeps every committed transaction through cuts inside commits, torn or not;
  ``synchronous=OFF`` loses committed transactions (a harness that never loses anything proves
  nothing); in rollback-journal mode FULL may lose the last commit and EXTRA never does, because
  only EXTRA fsyncs the directory after deleting the journal (https://sqlite.org/pragma.html
  #pragma_synchronous).
"""

from __future__ import annotations

import errno
import os
import random
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.powercut.fs import PAGE_SIZE, Op, PowerCutDisk
from tests.powercut.lines import LineReader
from tests.servers import RUNNING

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerCutDisk]:
    with PowerCutDisk(tmp_path / "disk") as mounted:
        yield mounted


def _write(path: Path, data: bytes, *, sync: bool, offset: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if offset is None:
            os.ftruncate(fd, 0)
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_synced_file_survives_a_cut(disk: PowerCutDisk) -> None:
    _write(disk.path / "a", b"durable", sync=True)
    _sync_dir(disk.path)
    disk.cut()
    assert (disk.path / "a").read_bytes() == b"durable"


def test_unsynced_data_and_names_are_gone_after_a_cut(disk: PowerCutDisk) -> None:
    _write(disk.path / "old", b"first version", sync=True)
    _sync_dir(disk.path)
    _write(disk.path / "old", b"FIRST", sync=False, offset=0)  # overwrite, not synced
    _write(disk.path / "old", b" and more", sync=False, offset=13)  # append, not synced
    _write(disk.path / "named", b"", sync=False)
    _sync_dir(disk.path)  # the name is durable, its data is not
    _write(disk.path / "named", b"data", sync=False, offset=0)
    _write(disk.path / "synced-but-unnamed", b"data", sync=True)  # its directory never synced
    assert (disk.path / "old").read_bytes() == b"FIRST version and more"
    report = disk.cut()
    assert (disk.path / "old").read_bytes() == b"first version"
    assert (disk.path / "named").read_bytes() == b""
    assert not (disk.path / "synced-but-unnamed").exists()
    assert report.vanished == ["/synced-but-unnamed"]


def test_rename_and_unlink_need_a_directory_fsync(disk: PowerCutDisk) -> None:
    _write(disk.path / "a", b"A", sync=True)
    _write(disk.path / "b", b"B", sync=True)
    _sync_dir(disk.path)
    os.rename(disk.path / "a", disk.path / "renamed")
    os.unlink(disk.path / "b")
    disk.cut()
    assert sorted(os.listdir(disk.path)) == ["a", "b"], "undone without a directory fsync"
    os.rename(disk.path / "a", disk.path / "renamed")
    os.unlink(disk.path / "b")
    _sync_dir(disk.path)
    disk.cut()
    assert sorted(os.listdir(disk.path)) == ["renamed"]
    assert (disk.path / "renamed").read_bytes() == b"A"


def test_a_torn_write_keeps_a_page_aligned_run_of_itself_and_nothing_else(
    disk: PowerCutDisk,
) -> None:
    # The kernel may hand one write(2) to the filesystem in page-aligned pieces; the model tears
    # the last piece. So, seen from the writer: what survives of an unsynced write is one
    # contiguous run inside it that starts at the write's start or on a page boundary and ends on
    # a page boundary or at the write's end; every other byte keeps its synced content.
    path = disk.path / "f"
    before = b"\xab" * (3 * PAGE_SIZE)
    offset, length = 100, 2 * PAGE_SIZE + 500  # starts mid-page, spans three pages
    edges = {offset, offset + length, PAGE_SIZE, 2 * PAGE_SIZE}
    kept_lengths: set[int] = set()
    for seed in range(24):
        _write(path, before, sync=True)
        _sync_dir(disk.path)
        _write(path, b"x" * length, sync=False, offset=offset)
        disk.cut(tear=True, rng=random.Random(seed))
        after = path.read_bytes()
        assert len(after) == len(before)
        survived = [i for i, byte in enumerate(after) if byte == ord("x")]
        if survived:
            start, end = survived[0], survived[-1] + 1
            assert survived == list(range(start, end)), f"seed {seed}: not one run"
            assert start in edges and end in edges, f"seed {seed}: run {start}..{end}"
        kept_lengths.add(len(survived))
        assert all(b == 0xAB for i, b in enumerate(after) if b != ord("x")), f"seed {seed}"
    assert 0 in kept_lengths and len(kept_lengths) >= 3, f"tears seen: {sorted(kept_lengths)}"
    _write(path, b"y" * length, sync=False, offset=offset)
    disk.cut()  # no tearing: the unsynced write is simply gone
    assert path.read_bytes() == after


_MMAP_WRITER = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 2 * mmap.PAGESIZE)
with mmap.mmap(fd, 2 * mmap.PAGESIZE) as shared:
    shared[mmap.PAGESIZE : mmap.PAGESIZE + 6] = b"mapped"
    shared.flush()
os.fsync(fd)
"""


def test_shared_writable_mmap_works(disk: PowerCutDisk) -> None:
    # In a child: this process serves the filesystem, and CPython holds the GIL during msync.
    path = disk.path / "shm"
    subprocess.run([sys.executable, "-c", _MMAP_WRITER, str(path)], check=True, timeout=30)
    _sync_dir(disk.path)
    disk.cut()
    assert path.read_bytes()[PAGE_SIZE : PAGE_SIZE + 6] == b"mapped"


def test_sqlite_wal_index_is_shared_between_processes(disk: PowerCutDisk) -> None:
    # The buffer keeps SQLite's default locking mode, so its WAL index lives in the mmapped -shm
    # file, as on a Pi's ext4. A second process sees the first one's commits (still only in the
    # WAL, its connection still open) only through that shared mapping.
    proc, reader = _start_sqlite(disk, "WAL", "FULL", 5)
    try:
        assert reader.expect("idle", timeout=30) is not None
        count = subprocess.run(
            [sys.executable, "-c", _COUNT_ROWS, str(disk.path / "t.db")],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        assert count.split() == ["5", "wal"]
        assert (disk.path / "t.db-shm").stat().st_size >= 32768
    finally:
        _cut(disk, proc, reader)


_COUNT_ROWS = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT count(*) FROM t").fetchone()[0], db.execute("PRAGMA journal_mode").fetchone()[0])
"""


def test_a_held_fsync_fails_when_the_power_goes_and_saves_nothing(disk: PowerCutDisk) -> None:
    path = disk.path / "f"
    _write(path, b"old", sync=True)
    _sync_dir(disk.path)
    disk.fs.trap = lambda op: op.kind == "fsync" and op.path == "/f"
    outcome: list[BaseException | None] = []

    def write_and_sync() -> None:
        try:
            _write(path, b"new", sync=True, offset=0)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write_and_sync, name="fsync-writer")
    writer.start()
    try:
        assert disk.fs.held.wait(10), "the fsync was not held"
        assert disk.fs.held_op == Op("fsync", "/f", 2)
        disk.power_off()
    finally:
        disk.fs.resume()
        writer.join(10)
    assert isinstance(outcome[0], OSError)
    assert outcome[0].errno == errno.EIO
    disk.cut()
    assert path.read_bytes() == b"old"
    # And a held fsync that is released with the power on completes normally.
    disk.fs.trap = lambda op: op.kind == "fsync"
    writer = threading.Thread(target=write_and_sync, name="fsync-writer")
    writer.start()
    try:
        assert disk.fs.held.wait(10)
        disk.fs.resume()
    finally:
        writer.join(10)
    assert outcome[1] is None
    disk.cut()
    assert path.read_bytes() == b"new"


def _start_sqlite(
    disk: PowerCutDisk, journal: str, synchronous: str, count: int
) -> tuple[subprocess.Popen[bytes], LineReader]:
    args = [str(disk.path / "t.db"), journal, synchronous, str(count)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.powercut.sqlite_writer", *args],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    RUNNING.add(proc)
    assert proc.stdout is not None
    return proc, LineReader(proc.stdout)


def _cut(
    disk: PowerCutDisk,
    proc: subprocess.Popen[bytes],
    reader: LineReader,
    *,
    tear: bool = False,
    rng: random.Random | None = None,
) -> list[int]:
    """SIGKILL, power off, reap, cut; returns the ids the child reported committed."""
    proc.kill()
    disk.power_off()
    proc.wait()
    RUNNING.discard(proc)
    lines = reader.drain()
    assert proc.stdout is not None
    proc.stdout.close()
    disk.cut(tear=tear, rng=rng)
    return [int(line) for line in lines if line.isdigit()]


def _rows(disk: PowerCutDisk, tmp_path: Path) -> set[int]:
    """Rows of a copy of the durable image, after ``integrity_check`` (the copy recovers, not the
    image)."""
    copy = tmp_path / "copy"
    for leftover in copy.glob("*"):
        leftover.unlink()
    disk.fs.export(copy)
    if not (copy / "t.db").exists():
        return set()
    with closing(sqlite3.connect(copy / "t.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        return {i for (i,) in db.execute("SELECT id FROM t")} if "t" in tables else set()


def test_sqlite_wal_full_keeps_every_commit_through_cuts_inside_commits(
    disk: PowerCutDisk, tmp_path: Path
) -> None:
    rng = random.Random(16)
    committed: set[int] = set()
    holds = 0
    for cut in range(8):
        wanted = Op(rng.choice(["write", "fsync"]), "/t.db-wal", rng.randint(1, 40))
        disk.fs.trap = wanted.__eq__
        proc, reader = _start_sqlite(disk, "WAL", "FULL", 0)
        if disk.fs.held.wait(10):
            holds += 1
        committed |= set(_cut(disk, proc, reader, tear=cut % 2 == 0, rng=rng))
        rows = _rows(disk, tmp_path)
        assert committed <= rows, f"cut {cut}: lost {sorted(committed - rows)[:10]}"
    assert holds == 8, "every cut came inside a commit"
    assert len(committed) > 40


def test_sqlite_with_synchronous_off_loses_committed_transactions(
    disk: PowerCutDisk, tmp_path: Path
) -> None:
    proc, reader = _start_sqlite(disk, "WAL", "OFF", 200)
    assert reader.expect("idle", timeout=30) is not None
    assert len(_cut(disk, proc, reader)) == 200
    assert len(_rows(disk, tmp_path)) < 200, "OFF never fsyncs: the harness must show the loss"


@pytest.mark.parametrize(("synchronous", "kept"), [("FULL", 4), ("EXTRA", 5)])
def test_rollback_journal_full_may_lose_the_last_commit_extra_does_not(
    disk: PowerCutDisk, tmp_path: Path, synchronous: str, kept: int
) -> None:
    proc, reader = _start_sqlite(disk, "DELETE", synchronous, 5)
    assert reader.expect("idle", timeout=30) is not None  # all five COMMITs returned
    assert _cut(disk, proc, reader) == [1, 2, 3, 4, 5]
    # FULL: the deleted journal of commit 5 comes back (its unlink was never made durable), is
    # hot, and rolls commit 5 back. EXTRA fsyncs the directory after the unlink.
    assert _rows(disk, tmp_path) == set(range(1, kept + 1))
