"""Power cuts of the gateway's buffer, again and again, and what each one cost.

`run_power_cuts` starts `tests.powercut.gateway_writer` (the real poller, sequence counter, buffer
worker and SQLite buffer, plus a publisher-like drain) on a `PowerCutDisk`, cuts the power at a
seeded random moment, checks the durable image, and starts the next writer on what survived, as a
rebooted gateway would. The moments (`Plan`):

- ``time``: a random moment while polling and draining;
- ``startup``: a random moment from the spawn on, so also while the buffer opens and recovers;
- ``wal-write`` / ``wal-fsync``: inside a commit: the n-th write to, or fsync of, the ``-wal``
  file is held by the filesystem, and the power goes while it is held;
- ``checkpoint``: the first fsync of the main database file is held (SQLite fsyncs it when it
  copies the WAL back, the checkpoint), chosen when the WAL is near SQLite's automatic checkpoint;
  any plan may also hold it if a checkpoint comes first.

Half of the cuts tear the last unsynced write of each file (`PowerCutFS.drop_volatile`). The plans
are drawn from the seed alone (the same for every run of a seed); whether a held call comes
before a plan's fallback moment depends on timing. Writers are forked from a fork server that
imported the gateway once (``gateway_writer --zygote``), so a cut costs milliseconds, not an
interpreter start.

What is checked after each cut, on a copy of the durable image (opening the image itself would
recover and rewrite it before the next writer does):

- the file opens and ``PRAGMA integrity_check`` is ``ok``; the next writer's `SqliteBuffer` did not
  find it damaged (no ``recovered_from``);
- *committed loss*: readings that a commit reported stored (or that survived the previous cut) and
  that the broker had not acknowledged, missing now. A commit window promises none;
- *loss beyond the window*: lost, never committed readings that had been staged before the last
  commit that returned began (so the worker skipped them): older than the one window a cut may
  cost. The age of the oldest lost reading is measured too;
- *undeclared loss*: a lost reading (committed or not) outside every gap the buffer declares when
  it opens what survived (`gateway.buffer.Gap`): the proof of completeness could not explain it;
- across all cuts: a sequence number published twice with different content (the proof of
  completeness broken), and numbers handed out again after a cut.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.buffer.sqlite import SqliteBuffer, _decode
from tests.powercut.fs import Op, PowerCutDisk
from tests.powercut.gateway_writer import content, parse_ranges
from tests.powercut.lines import LineReader
from tests.servers import RUNNING

ROOT = Path(__file__).resolve().parents[2]
DB_NAME = "buffer.sqlite3"
#: Longest wait for a writer to report that its buffer is open.
READY_TIMEOUT = 20.0
#: WAL frames from which a checkpoint is near enough to wait for (SQLite checkpoints at 1000).
CHECKPOINT_NEAR = 800


@dataclass(frozen=True)
class Plan:
    """When one cut happens. ``delay`` is counted from "ready" (from the spawn for ``startup``);
    a trap that fires earlier wins."""

    kind: str
    delay: float
    tear: bool
    #: (op kind, file name, n): hold the n-th such call.
    trap: tuple[str, str, int] | None = None
    #: Also hold the first fsync of the main database file (a checkpoint).
    checkpoint: bool = False

    def predicate(self, op: Op) -> bool:
        name = op.path.rsplit("/", 1)[-1]
        if self.checkpoint and op.kind == "fsync" and name == DB_NAME:
            return True
        return self.trap is not None and (op.kind, name, op.nth) == self.trap


def choose_plan(
    rng: random.Random, *, run_seconds: float, commit_interval: float, wal_frames: int = 0
) -> Plan:
    """A seeded random moment; ``run_seconds`` scales how long a writer may run before the cut.

    A checkpoint comes when the WAL reaches 1000 frames (SQLite's default); when it is close
    (``wal_frames``), half the cuts wait for it.
    """
    # Always the same draws, so that a seed gives the same plans however the runs went.
    tear, checkpoint, near, roll = (rng.random() for _ in range(4))
    delay, fsyncs, writes = rng.random(), rng.random(), rng.random()
    plan = Plan("time", delay * run_seconds, tear < 0.5, checkpoint=checkpoint < 0.15)
    if wal_frames >= CHECKPOINT_NEAR and near < 0.5:
        plan = replace(plan, kind="checkpoint", delay=4 * run_seconds, checkpoint=True)
    elif 0.30 <= roll < 0.40:
        plan = replace(plan, kind="startup", delay=delay * 0.3)
    elif 0.40 <= roll < 0.65:
        nth = 1 + int(fsyncs * max(2, run_seconds / commit_interval))
        trap = ("fsync", f"{DB_NAME}-wal", nth)
        plan = replace(plan, kind="wal-fsync", delay=2 * run_seconds, trap=trap)
    elif roll >= 0.65:
        nth = 1 + int(writes * max(2, run_seconds * 700))
        trap = ("write", f"{DB_NAME}-wal", nth)
        plan = replace(plan, kind="wal-write", delay=2 * run_seconds, trap=trap)
    return plan


def wal_frames(image: bytes) -> int:
    """Frames of a WAL image that carry its header's salts: an estimate (checksums unchecked) of
    how far the WAL is from SQLite's automatic checkpoint at 1000 frames."""
    if len(image) < 32:
        return 0
    page_size = int.from_bytes(image[8:12], "big")
    page_size = 65536 if page_size == 1 else page_size
    salts, frames, offset = image[16:24], 0, 32
    while offset + 24 + page_size <= len(image) and image[offset + 8 : offset + 16] == salts:
        frames += 1
        offset += 24 + page_size
    return frames


@dataclass
class Findings:
    """Counts over all cuts of one run of `run_power_cuts` (see the module docstring)."""

    synchronous: str
    cuts: int = 0
    plans: Counter[str] = field(default_factory=Counter)
    #: Calls the filesystem held when the power went, as "fsync buffer.sqlite3-wal" etc.
    held: Counter[str] = field(default_factory=Counter)
    #: fsyncs of the main database file (SQLite's checkpoints, and its creation), held or not.
    db_fsyncs: int = 0
    #: Cuts that came while a commit had begun and not returned (held or not).
    inside_commit: int = 0
    torn: int = 0
    integrity_failures: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    #: Cuts after which the buffer file did not exist at all.
    absent: int = 0
    #: Cuts with committed, unacknowledged readings at stake, and those that lost some.
    cuts_at_stake: int = 0
    cuts_losing_committed: int = 0
    committed_lost: int = 0
    #: Per cut that lost committed readings: (cut, lost, committed-and-unacknowledged before it).
    committed_losses: list[tuple[int, int, int]] = field(default_factory=list)
    #: Cuts where every committed, unacknowledged reading was lost.
    cuts_losing_all: int = 0
    beyond_window: list[tuple[int, int]] = field(default_factory=list)
    #: Readings lost that no commit had stored yet (the window a cut may cost).
    uncommitted_lost: int = 0
    #: Longest time from the poll of a lost uncommitted reading to the cut, seconds, and that cut.
    max_loss_age: float = 0.0
    max_loss_cut: int = -1
    #: Longest commit (from its start to its return), seconds.
    max_commit_seconds: float = 0.0
    #: seq -> (first content, later different content)
    published_twice: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: Stored content that differs from what was already published under that seq.
    stored_differs: int = 0
    republished_same: int = 0
    #: Sequence numbers handed out (polled) again after a cut.
    reused_seqs: int = 0
    #: Readings a cut lost (committed or not) outside every gap the buffer declared after it.
    undeclared_lost: int = 0
    undeclared_cuts: list[tuple[int, int, list[int]]] = field(default_factory=list)
    #: Runs that started numbering below a seq already published.
    restarts_below_published: int = 0
    #: Seconds from spawn to "ready", and from "ready" to the cut, summed over the cuts.
    startup_seconds: float = 0.0
    running_seconds: float = 0.0
    polled: int = 0
    committed: int = 0
    acked: int = 0
    published: int = 0

    def ok(self) -> bool:
        return not (self.integrity_failures or self.recovered or self.committed_lost)

    def summary(self) -> str:
        return (
            f"synchronous={self.synchronous}: {self.cuts} cuts ({dict(self.plans)}; "
            f"held {dict(self.held)}; {self.inside_commit} inside a commit; {self.torn} torn; "
            f"{self.db_fsyncs} fsyncs of the main file: its creation, checkpoints); "
            f"polled {self.polled}, committed {self.committed}, published {self.published}, "
            f"acked {self.acked}; integrity failures {len(self.integrity_failures)}, "
            f"recovered {len(self.recovered)}, file absent after {self.absent}; "
            f"committed readings lost: {self.committed_lost} in {self.cuts_losing_committed} of "
            f"the {self.cuts_at_stake} cuts with some at stake ({self.cuts_losing_all} lost all); "
            f"loss beyond one window in {len(self.beyond_window)} cuts; "
            f"uncommitted readings lost (the window): {self.uncommitted_lost}, the oldest polled "
            f"{self.max_loss_age:.3f} s before the cut (cut {self.max_loss_cut}; longest commit "
            f"{self.max_commit_seconds:.3f} s); "
            f"lost outside a declared gap: {self.undeclared_lost} {self.undeclared_cuts[:3]}; "
            f"seqs published twice with different content: {len(self.published_twice)}; "
            f"stored content differing from published: {self.stored_differs}; "
            f"re-published unchanged: {self.republished_same}; seqs handed out again: "
            f"{self.reused_seqs}; restarts below a published seq: {self.restarts_below_published}; "
            f"{self.startup_seconds:.1f} s starting, {self.running_seconds:.1f} s running"
        )


@dataclass
class _RunLog:
    ready: tuple[int, int, str] | None = None
    polls: list[tuple[float, int, int]] = field(default_factory=list)
    #: (time, seqs stored) of every commit begun / returned.
    begun: list[tuple[float, list[int]]] = field(default_factory=list)
    done: list[tuple[float, list[int]]] = field(default_factory=list)
    published: list[tuple[int, str]] = field(default_factory=list)
    acked: set[int] = field(default_factory=set)

    @classmethod
    def parse(cls, text: str) -> _RunLog:
        run = cls()
        for line in text.splitlines():
            word, *rest = line.split(" ")
            if word == "ready":
                run.ready = (int(rest[0]), int(rest[1]), rest[2])  # rest[3]: gaps, read below
            elif word == "poll":
                run.polls.append((float(rest[0]), int(rest[1]), int(rest[2])))
            elif word == "commit-begin":
                run.begun.append((float(rest[0]), parse_ranges(rest[1])))
            elif word == "commit":
                run.done.append((float(rest[0]), parse_ranges(rest[1])))
            elif word == "publish":
                for item in rest:
                    seq, _, text_ = item.partition("=")
                    run.published.append((int(seq), text_))
            elif word == "ack":
                run.acked.update(parse_ranges(rest[0]))
        return run


@dataclass
class BufferImage:
    """What a copy of the durable image holds."""

    integrity: list[str]
    rows: dict[int, str]
    last_seq: int


def read_image(path: Path) -> BufferImage | None:
    """Open a copy of the buffer file with plain sqlite3; None when there is no file."""
    if not path.exists():
        return None
    with closing(sqlite3.connect(path)) as db:
        integrity = [row[0] for row in db.execute("PRAGMA integrity_check")]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        rows: dict[int, str] = {}
        last_seq = 0
        if "readings" in tables:
            for row in db.execute("SELECT * FROM readings"):
                rows[row[0]] = content(_decode(row))
        if "meta" in tables:
            found = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
            last_seq = int(found[0]) if found else 0
    return BufferImage(integrity, rows, last_seq)


def declared_gaps(path: Path) -> list[tuple[int, int]]:
    """The gaps the gateway's buffer declares when it opens the copy at ``path`` (read last: the
    open writes to the copy)."""
    if not path.exists():
        return []
    buffer = SqliteBuffer(path, declared_at_ms=0)
    try:
        return [(gap.from_seq, gap.to_seq) for gap in buffer.declared_gaps()]
    finally:
        buffer.close()


@dataclass
class _History:
    """What the checks carry from one cut to the next."""

    stored: dict[int, str] = field(default_factory=dict)
    published: dict[int, str] = field(default_factory=dict)
    polled: set[int] = field(default_factory=set)


def run_power_cuts(
    disk: PowerCutDisk,
    workdir: Path,
    *,
    synchronous: str,
    cuts: int,
    seed: int,
    run_seconds: float = 0.5,
    commit_interval: float = 0.05,
    writer_args: tuple[str, ...] = (),
    progress: bool = False,
) -> Findings:
    """``cuts`` power cuts of one buffer on ``disk`` (see the module docstring)."""
    rng = random.Random(seed)  # the plans and the writers' seeds
    tears = random.Random(seed + 1)  # drawn as many times as there are files written
    findings = Findings(synchronous=synchronous)
    history = _History()
    db_path = disk.path / DB_NAME
    zygote = WriterZygote()
    try:
        for cut in range(cuts):
            wal = disk.fs.durable_files().get(f"/{DB_NAME}-wal", b"")
            plan = choose_plan(
                rng,
                run_seconds=run_seconds,
                commit_interval=commit_interval,
                wal_frames=wal_frames(wal),
            )
            findings.plans[plan.kind] += 1
            log = workdir / f"cut-{cut}.log"
            args = [
                *("--db", str(db_path), "--log", str(log), "--synchronous", synchronous),
                *("--commit-interval", str(commit_interval), "--seed", str(rng.randrange(2**32))),
                *("--boot-id", str(rng.randrange(1, 2**60)), *writer_args),
            ]
            disk.fs.trap = plan.predicate
            errors = workdir / f"cut-{cut}.err"
            cut_at = _run_writer(zygote, disk, plan, args, errors=errors, findings=findings)
            report = disk.cut(tear=plan.tear, rng=tears)
            findings.torn += sum(1 for _path, _off, kept, _len in report.torn if kept)
            copy = workdir / "image"
            shutil.rmtree(copy, ignore_errors=True)
            disk.fs.export(copy)
            run = _RunLog.parse(log.read_text() if log.exists() else "")
            image = read_image(copy / DB_NAME)
            declared = declared_gaps(copy / DB_NAME)
            _check(
                cut=cut,
                run=run,
                image=image,
                declared=declared,
                cut_at=cut_at,
                history=history,
                findings=findings,
            )
            findings.cuts += 1
            if progress:
                print(f"cut {cut + 1}/{cuts} {plan.kind}: {findings.summary()}", file=sys.stderr)
    finally:
        zygote.close()
    return findings


class WriterZygote:
    """The parent's end of the writer's fork server (``gateway_writer --zygote``)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.powercut.gateway_writer", "--zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        RUNNING.add(self.proc)
        assert self.proc.stdout is not None
        self._lines = LineReader(self.proc.stdout)

    def spawn(self, args: list[str]) -> int:
        """Fork a writer with ``args``; returns its pid."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((shlex.join(args) + "\n").encode())
        self.proc.stdin.flush()
        line = self.expect("spawned ", timeout=READY_TIMEOUT)
        assert line is not None, "the writer fork server does not answer"
        return int(line.split()[1])

    def expect(self, prefix: str, *, timeout: float) -> str | None:
        """See `LineReader.expect`; fails if the fork server died."""
        line = self._lines.expect(prefix, timeout=timeout)
        if line is None and self._lines.closed:
            raise AssertionError("the writer fork server died")
        return line

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            RUNNING.discard(self.proc)


def _run_writer(
    zygote: WriterZygote,
    disk: PowerCutDisk,
    plan: Plan,
    args: list[str],
    *,
    errors: Path,
    findings: Findings,
) -> float:
    """Start a writer, cut at the plan's moment; returns the moment (monotonic)."""
    spawned = time.monotonic()
    pid = zygote.spawn([*args, "--stderr", str(errors)])
    dead = f"exited {pid} "
    try:
        cut_deadline = spawned + plan.delay if plan.kind == "startup" else None
        ready = False
        ready_at = spawned
        while not disk.fs.held.is_set():
            now = time.monotonic()
            if cut_deadline is not None and now >= cut_deadline:
                break
            if ready:
                disk.fs.held.wait(cut_deadline - now if cut_deadline is not None else None)
                continue
            if now > spawned + READY_TIMEOUT:
                raise AssertionError(f"the writer never got ready: {errors.read_text()[-2000:]}")
            if zygote.expect("ready", timeout=0.005) is not None:
                ready = True
                ready_at = time.monotonic()
                findings.startup_seconds += ready_at - spawned
                if cut_deadline is None:
                    cut_deadline = ready_at + plan.delay
        if zygote.expect(dead, timeout=0) is not None:
            pid = 0
            raise AssertionError(f"the writer died: {errors.read_text()[-2000:]}")
        cut_at = time.monotonic()
        findings.running_seconds += cut_at - ready_at if ready else 0.0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            disk.power_off()
            if zygote.expect(dead, timeout=READY_TIMEOUT) is None:
                raise AssertionError(f"writer {pid} did not die")
    zygote.expect("ready", timeout=0)  # a "ready" that came with the kill
    findings.db_fsyncs += disk.fs.counts[("fsync", f"/{DB_NAME}")]
    held = disk.fs.held_op
    if disk.fs.held.is_set() and held is not None:
        findings.held[f"{held.kind} {held.path.lstrip('/')}"] += 1
    return cut_at


def _check(
    *,
    cut: int,
    run: _RunLog,
    image: BufferImage | None,
    declared: list[tuple[int, int]],
    cut_at: float,
    history: _History,
    findings: Findings,
) -> None:
    """Judge one cut (see the module docstring) and carry what survived to the next.

    ``declared`` are the gaps the buffer declares when it opens what survived."""
    if run.ready is not None:
        start, _pending, recovered = run.ready
        if recovered != "-":
            findings.recovered.append(f"cut {cut}: the buffer was found damaged: {recovered}")
        if history.published and start < max(history.published):
            findings.restarts_below_published += 1
    if len(run.begun) > len(run.done):
        findings.inside_commit += 1
    durations = [done[0] - begun[0] for begun, done in zip(run.begun, run.done, strict=False)]
    findings.max_commit_seconds = max([findings.max_commit_seconds, *durations])
    _tally_publishing(run, history, findings)
    if image is None:
        findings.absent += 1
        image = BufferImage(["ok"], {}, 0)
    if image.integrity != ["ok"]:
        findings.integrity_failures.append(f"cut {cut}: {image.integrity[:5]}")
    lost = _check_losses(
        cut=cut, run=run, present=image.rows, cut_at=cut_at, history=history, findings=findings
    )
    undeclared = {s for s in lost if not any(a <= s <= b for a, b in declared)}
    findings.undeclared_lost += len(undeclared)
    if undeclared:
        findings.undeclared_cuts.append((cut, len(undeclared), sorted(undeclared)[:5]))
    for seq, text in image.rows.items():
        if history.published.get(seq, text) != text:
            findings.stored_differs += 1
    history.stored = dict(image.rows)


def _tally_publishing(run: _RunLog, history: _History, findings: Findings) -> None:
    findings.acked += len(run.acked)
    findings.published += len(run.published)
    for seq, text in run.published:
        first = history.published.setdefault(seq, text)
        if first != text:
            findings.published_twice.setdefault(seq, (first, text))
        elif seq in history.stored:
            findings.republished_same += 1


def _check_losses(
    *,
    cut: int,
    run: _RunLog,
    present: dict[int, str],
    cut_at: float,
    history: _History,
    findings: Findings,
) -> set[int]:
    """Count this cut's losses; returns every reading it lost (committed or not)."""
    committed = {s for _t, stored in run.done for s in stored}
    polled_at = {s: t for t, first, last in run.polls for s in range(first, last + 1)}
    findings.polled += len(polled_at)
    findings.committed += len(committed)
    findings.reused_seqs += len(history.polled & polled_at.keys())
    history.polled |= polled_at.keys()

    must = (history.stored.keys() | committed) - run.acked
    lost = must - present.keys()
    findings.cuts_at_stake += bool(must)
    if lost:
        findings.cuts_losing_committed += 1
        findings.committed_lost += len(lost)
        findings.committed_losses.append((cut, len(lost), len(must)))
        if lost == must:
            findings.cuts_losing_all += 1
    # Staged before the last commit that returned began, so in it or in an earlier one.
    last_done = max((max(stored) for _t, stored in run.done if stored), default=0)
    uncommitted = (polled_at.keys() - committed - run.acked) - present.keys()
    findings.uncommitted_lost += len(uncommitted)
    beyond = {s for s in uncommitted if s <= last_done}
    if beyond:
        findings.beyond_window.append((cut, len(beyond)))
    ages = [cut_at - polled_at[s] for s in uncommitted]
    if ages and max(ages) > findings.max_loss_age:
        findings.max_loss_age, findings.max_loss_cut = max(ages), cut
    return lost | uncommitted
