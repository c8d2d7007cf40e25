"""A FUSE filesystem that keeps every write in memory and, at a simulated power cut, forgets what
was not synced.

Why: SIGKILL leaves the kernel's page cache intact, so a process killed mid-commit proves nothing
about an SD card losing power. Here every file has two images: the *volatile* one (every write, what
readers see) and the *durable* one (what the last ``fsync``/``fdatasync`` of that file made
permanent). A cut throws the volatile images away.

The durability model (pessimistic, and stated so that the tests can be judged against it):

- **File data and size** are volatile until an ``fsync`` or ``fdatasync`` of that file (through any
  descriptor). Both persist data and size; nothing else (times, modes) is modelled.
- **Names** (create, mkdir, rename, unlink, rmdir) are volatile until an ``fsync`` of the directory
  that holds them: each directory's durable entry list is a snapshot taken at its last fsync. So a
  file whose data was fsynced but whose directory never was does not exist after a cut, and a
  rename or unlink without a directory fsync is undone. That is POSIX; ext4 with its journal is
  kinder (a file fsync commits the journal, and earlier name changes with it). SQLite does not rely
  on the kinder behaviour: it fsyncs the directory after creating a rollback journal or a WAL file,
  and after deleting a rollback journal only with ``synchronous=EXTRA`` (its documentation says
  FULL may then lose the last commit on power loss; `tests/powercut/test_fs.py` shows exactly that).
- **No background writeback.** The kernel writes dirty pages back on its own after
  ``vm.dirty_expire_centisecs`` (30 s by default) and ext4 commits its journal every 5 s, but
  neither is a promise; the model is the worst case where nothing went out before the cut.
- **Tearing** (``cut(tear=True)``): for each file, the newest write since its last sync keeps a
  random prefix that ends on a page boundary (file offsets, ``page_size``), or all of it, or none;
  every other unsynced write is dropped. That is a card that lost power while programming that
  write: whole pages, in order, the rest not, and the bytes outside the write untouched (SQLite's
  "powersafe overwrite" assumption, which its unix VFS makes by default). The torn prefix lands
  without the earlier unsynced writes: between two syncs a device may write in any order.
- **mmap** works (the mount does not use ``direct_io``): SQLite maps its ``-shm`` WAL index, and
  the kernel writes dirty mapped pages back to this filesystem as ordinary writes. The ``-shm``
  file is modelled like any other; SQLite rebuilds the index from the WAL on the first open after
  a crash, so what it holds after a cut does not matter.
- **Locks**: POSIX advisory locks are left to the kernel (no ``lock`` operation), which is right
  for processes on one machine.

A power cut in a test, in this order: SIGKILL the processes that use the files; `power_off` (from
then on every operation fails with EIO and nothing more becomes durable, and a call held by a trap
is released to fail); wait until they are gone; `PowerCutDisk.cut` (unmount, drop the volatile
images, remount: the kernel's caches of the mount must go too).

Traps make "inside a commit" a precise moment: `PowerCutFS.trap` names a call (e.g. the third
``fsync`` of the ``-wal`` file) that is held, with `held` set, until `power_off` or `resume`.

The filesystem is single-threaded (libfuse ``-s``) and served by one named thread of the test
process; `PowerCutDisk` joins it on unmount, so a test leaves no thread behind.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import mfusepy  # type: ignore[import-untyped]

PAGE_SIZE = 4096
#: Longest a trap holds a call if the test never releases it (a test bug must not hang the run).
HOLD_LIMIT = 30.0
#: Deadline for a mount to come up or go away.
MOUNT_TIMEOUT = 10.0


class Op(NamedTuple):
    """A call that a trap may hold: ``kind`` is "write" or "fsync", ``nth`` counts from 1 per
    (kind, path) since the mount."""

    kind: str
    path: str
    nth: int


Trap = Callable[[Op], bool]


@dataclass(eq=False)
class _File:
    path: str
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    #: The newest write since the last sync, as (offset, bytes): the one a cut may tear.
    last_write: tuple[int, bytes] | None = None
    mtime_ns: int = field(default_factory=time.time_ns)


@dataclass(eq=False)
class _Dir:
    entries: dict[str, _File | _Dir] = field(default_factory=dict)
    durable: dict[str, _File | _Dir] = field(default_factory=dict)
    mtime_ns: int = field(default_factory=time.time_ns)


@dataclass
class CutReport:
    """What a cut did: per file path (after the cut), bytes of unsynced data dropped (counted in
    whole pages), the torn writes (path, offset, bytes kept, write length), and the paths that
    vanished with their unsynced names."""

    dropped: dict[str, int] = field(default_factory=dict)
    torn: list[tuple[str, int, int, int]] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)


def _eio() -> mfusepy.FuseOSError:
    return mfusepy.FuseOSError(errno.EIO)


class PowerCutFS(mfusepy.Operations):  # type: ignore[misc]
    """The in-memory filesystem (see the module docstring). Serve it with `PowerCutDisk`."""

    use_ns = True

    def __init__(self, *, page_size: int = PAGE_SIZE) -> None:
        self.page_size = page_size
        self.root = _Dir()
        self._lock = threading.Lock()
        self._handles: dict[int, _File | _Dir] = {}
        self._next_fh = 1
        self._powered = True
        self.counts: Counter[tuple[str, str]] = Counter()
        #: Decides which call to hold; cleared when it fired. Set it before the writer starts.
        self.trap: Trap | None = None
        #: Set while a call is held by the trap; `held_op` says which.
        self.held = threading.Event()
        self.held_op: Op | None = None
        self._release = threading.Event()
        self.initialised = threading.Event()

    # --- the test's side --------------------------------------------------------------------

    def power_off(self) -> None:
        """The power is gone: every later call fails with EIO, a held call is released to fail."""
        with self._lock:
            self._powered = False
        self._release.set()

    def resume(self) -> None:
        """Let a held call go on normally (the power stays on)."""
        self._release.set()

    @property
    def powered(self) -> bool:
        return self._powered

    def drop_volatile(self, *, tear: bool = False, rng: random.Random | None = None) -> CutReport:
        """Make the durable image the only one (call while unmounted); then power on again."""
        rng = rng or random.Random()
        report = CutReport()
        with self._lock:
            before = {path: node for path, node in _walk(self.root, volatile=True)}
            survivors = {id(node) for _path, node in _walk(self.root, volatile=False)}
            for path, node in before.items():
                if id(node) not in survivors:
                    report.vanished.append(path)
            self.root.entries = dict(self.root.durable)
            for path, node in _walk(self.root, volatile=False):
                if isinstance(node, _Dir):
                    node.entries = dict(node.durable)
                    continue
                image = bytearray(node.durable)
                if tear and node.last_write is not None:
                    offset, data = node.last_write
                    kept = self._torn_prefix(offset, len(data), rng)
                    if kept:
                        if len(image) < offset:
                            image.extend(bytes(offset - len(image)))
                        image[offset : offset + kept] = data[:kept]
                        node.durable = bytes(image)
                    report.torn.append((path, offset, kept, len(data)))
                lost = _difference(node.data, image)
                if lost:
                    report.dropped[path] = lost
                node.data = image
                node.path = path
                node.last_write = None
            self._handles.clear()
            self.counts.clear()
            self._powered = True
            self.trap = None
            self.held.clear()
            self.held_op = None
            self._release.clear()
        return report

    def _torn_prefix(self, offset: int, length: int, rng: random.Random) -> int:
        """Bytes of a write of ``length`` at ``offset`` that reached the card: 0, the whole write,
        or up to a page boundary inside it."""
        page: int = self.page_size
        first = (offset // page + 1) * page
        cuts: list[int] = [0, *range(first - offset, length, page), length]
        kept: int = rng.choice(cuts)
        return kept

    def durable_files(self) -> dict[str, bytes]:
        """Every file of the durable image, by path (what a cut would leave)."""
        with self._lock:
            return {
                path: node.durable
                for path, node in _walk(self.root, volatile=False)
                if isinstance(node, _File)
            }

    def export(self, dest: Path) -> None:
        """Write the durable image under ``dest`` (a normal directory), for checks that must not
        touch the image itself (opening an SQLite file recovers and rewrites it)."""
        for path, data in self.durable_files().items():
            target = dest / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    # --- helpers ------------------------------------------------------------------------------

    def _check_power(self) -> None:
        if not self._powered:
            raise _eio()

    def _resolve(self, path: str) -> _File | _Dir:
        node: _File | _Dir = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if not isinstance(node, _Dir) or part not in node.entries:
                raise mfusepy.FuseOSError(errno.ENOENT)
            node = node.entries[part]
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._resolve(head or "/")
        if not isinstance(parent, _Dir):
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> _File | _Dir:
        if fh is not None and fh in self._handles:
            return self._handles[fh]
        if path is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return self._resolve(path)

    def _file(self, fh: int) -> _File:
        node = self._handles.get(fh)
        if not isinstance(node, _File):
            raise mfusepy.FuseOSError(errno.EBADF)
        return node

    def _handle(self, node: _File | _Dir) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = node
        return fh

    def _maybe_hold(self, kind: str, node: _File) -> None:
        """Hold this call if the trap says so (outside the lock), then fail it if the power went."""
        with self._lock:
            self.counts[(kind, node.path)] += 1
            op = Op(kind, node.path, self.counts[(kind, node.path)])
            trap = self.trap
            if trap is None or not trap(op):
                return
            self.trap = None
            self.held_op = op
            self.held.set()
        self._release.wait(HOLD_LIMIT)
        self._release.clear()
        if not self._powered:
            raise _eio()

    # --- FUSE operations (called on the FUSE thread) ------------------------------------------

    def init(self, path: str) -> None:
        self.initialised.set()

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        with self._lock:
            if path != "/":
                self._check_power()
            node = self._node(path, fh)
            if isinstance(node, _Dir):
                mode, size, nlink = stat.S_IFDIR | 0o755, 4096, 2
            else:
                mode, size, nlink = stat.S_IFREG | 0o644, len(node.data), 1
            return {
                "st_mode": mode,
                "st_size": size,
                "st_nlink": nlink,
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_mtime": node.mtime_ns,
                "st_ctime": node.mtime_ns,
                "st_atime": node.mtime_ns,
                "st_blksize": self.page_size,
                "st_blocks": (size + 511) // 512,
            }

    def statfs(self, path: str) -> dict[str, int]:
        return {
            "f_bsize": self.page_size,
            "f_frsize": self.page_size,
            "f_blocks": 1 << 20,
            "f_bfree": 1 << 19,
            "f_bavail": 1 << 19,
            "f_files": 1 << 16,
            "f_ffree": 1 << 15,
            "f_namemax": 255,
        }

    def access(self, path: str, amode: int) -> int:
        with self._lock:
            self._check_power()
            self._resolve(path)
        return 0

    def opendir(self, path: str) -> int:
        with self._lock:
            self._check_power()
            node = self._resolve(path)
            if not isinstance(node, _Dir):
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            return self._handle(node)

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._lock:
            self._check_power()
            node = self._node(path, fh)
            if not isinstance(node, _Dir):
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            return [".", "..", *node.entries]

    def releasedir(self, path: str | None, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        with self._lock:
            self._check_power()
            node = self._node(path, fh)
            if not isinstance(node, _Dir):
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            node.durable = dict(node.entries)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self._lock:
            self._check_power()
            parent, name = self._parent(path)
            if name in parent.entries:
                raise mfusepy.FuseOSError(errno.EEXIST)
            parent.entries[name] = _Dir()
        return 0

    def rmdir(self, path: str) -> int:
        with self._lock:
            self._check_power()
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if not isinstance(node, _Dir):
                raise mfusepy.FuseOSError(errno.ENOTDIR if node else errno.ENOENT)
            if node.entries:
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
        return 0

    def create(self, path: str, mode: int, flags: int) -> int:
        with self._lock:
            self._check_power()
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                node = parent.entries[name] = _File(path)
            if not isinstance(node, _File):
                raise mfusepy.FuseOSError(errno.EISDIR)
            return self._handle(node)

    def open(self, path: str, flags: int) -> int:
        with self._lock:
            self._check_power()
            node = self._resolve(path)
            if isinstance(node, _Dir):
                raise mfusepy.FuseOSError(errno.EISDIR)
            return self._handle(node)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        with self._lock:
            self._check_power()
            return bytes(self._file(fh).data[offset : offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        with self._lock:
            self._check_power()
            node = self._file(fh)
        self._maybe_hold("write", node)
        with self._lock:
            self._check_power()
            if len(node.data) < offset:
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset : offset + len(data)] = data
            node.last_write = (offset, bytes(data))
            node.mtime_ns = time.time_ns()
        return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self._lock:
            self._check_power()
            node = self._node(path, fh)
            if not isinstance(node, _File):
                raise mfusepy.FuseOSError(errno.EISDIR)
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(bytes(length - len(node.data)))
            node.last_write = None  # a size change is not a write a card can tear
            node.mtime_ns = time.time_ns()
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with self._lock:
            self._check_power()
            node = self._file(fh)
        self._maybe_hold("fsync", node)
        with self._lock:
            self._check_power()
            node.durable = bytes(node.data)
            node.last_write = None
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0

    def release(self, path: str | None, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
        return 0

    def unlink(self, path: str) -> int:
        with self._lock:
            self._check_power()
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            if isinstance(node, _Dir):
                raise mfusepy.FuseOSError(errno.EISDIR)
            del parent.entries[name]
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._lock:
            self._check_power()
            old_parent, old_name = self._parent(old)
            new_parent, new_name = self._parent(new)
            node = old_parent.entries.get(old_name)
            if node is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            target = new_parent.entries.get(new_name)
            if isinstance(target, _Dir) and target.entries:
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            del old_parent.entries[old_name]
            new_parent.entries[new_name] = node
            if isinstance(node, _File):
                node.path = new
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        with self._lock:
            self._check_power()
            node = self._resolve(path) if path is not None else None
            if node is not None:
                node.mtime_ns = times[1] if times else time.time_ns()
        return 0


def _walk(root: _Dir, *, volatile: bool, prefix: str = "") -> Iterator[tuple[str, _File | _Dir]]:
    """(path, node) for everything reachable from ``root`` in the volatile or durable namespace."""
    entries = root.entries if volatile else root.durable
    for name, node in entries.items():
        path = f"{prefix}/{name}"
        yield path, node
        if isinstance(node, _Dir):
            yield from _walk(node, volatile=volatile, prefix=path)


def _difference(before: bytes | bytearray, after: bytes | bytearray, page: int = 4096) -> int:
    """Bytes in the pages that differ between two images, plus the difference in length (a cheap
    measure of what a cut dropped: whole pages, compared in C)."""
    if before == after:
        return 0
    common = min(len(before), len(after))
    view_a, view_b = memoryview(before), memoryview(after)
    differ = sum(
        min(page, common - start)
        for start in range(0, common, page)
        if view_a[start : start + page] != view_b[start : start + page]
    )
    return differ + abs(len(before) - len(after))


def _fusermount() -> str:
    for candidate in (shutil.which("fusermount3"), "/bin/fusermount3", "/usr/bin/fusermount3"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError("fusermount3 is not installed; run scripts/test, which installs fuse3")


class PowerCutDisk:
    """A `PowerCutFS` mounted at ``mountpoint`` while the context is entered.

    ``with PowerCutDisk(tmp_path / "disk") as disk:`` mounts it, served by one thread that the
    exit joins. `cut` simulates the power cut (see the module docstring for the order of steps).
    """

    def __init__(self, mountpoint: Path, *, page_size: int = PAGE_SIZE) -> None:
        self.path = mountpoint
        self.fs = PowerCutFS(page_size=page_size)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.cuts = 0

    def __enter__(self) -> PowerCutDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        self.mount()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unmount()

    def mount(self) -> None:
        """Serve the filesystem at `path`; returns once the kernel has initialised the mount."""
        if self._thread is not None:
            raise RuntimeError("already mounted")
        self.fs.initialised.clear()
        self._error = None
        self._thread = threading.Thread(target=self._serve, name="powercut-fuse", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not self.fs.initialised.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._thread.join(MOUNT_TIMEOUT)
                self._thread = None
                raise RuntimeError(f"could not mount the power-cut filesystem: {self._error!r}")

    def _serve(self) -> None:
        try:
            mfusepy.FUSE(
                self.fs, str(self.path), foreground=True, nothreads=True, fsname="powercut"
            )
        except BaseException as exc:  # reported by mount() or unmount()
            self._error = exc

    def unmount(self) -> None:
        """Unmount and join the serving thread (the caller's processes must have closed their
        files). Idempotent."""
        thread = self._thread
        if thread is None:
            return
        device = os.stat(self.path).st_dev
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while thread.is_alive():
            done = subprocess.run(
                [_fusermount(), "-u", str(self.path)], capture_output=True, check=False
            )
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                # Something still holds a file: detach, and end the connection so that the
                # thread can stop (fusectl, where it is mounted).
                subprocess.run([_fusermount(), "-u", "-z", str(self.path)], check=False)
                abort = Path(f"/sys/fs/fuse/connections/{os.minor(device)}/abort")
                if abort.exists():
                    abort.write_text("1")
                break
            time.sleep(0.02)
        thread.join(MOUNT_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"the FUSE thread did not stop after unmounting {self.path}")
        self._thread = None
        if self._error is not None:
            raise RuntimeError("the power-cut filesystem failed") from self._error

    def power_off(self) -> None:
        """See `PowerCutFS.power_off`: call it right after killing the processes, before waiting."""
        self.fs.power_off()

    def cut(self, *, tear: bool = False, rng: random.Random | None = None) -> CutReport:
        """The power cut proper: unmount, keep only the durable image (tearing if asked), remount.
        Every process that used the mount must be gone."""
        self.fs.power_off()
        self.unmount()
        report = self.fs.drop_volatile(tear=tear, rng=rng)
        self.cuts += 1
        self.mount()
        return report
