"""Where the daemon writes: the buffer (`gateway.buffer.sqlite`) and the classroom panels.

Under the unit (``ProtectSystem=strict``) the whole file system is read-only to the daemon except
its ``StateDirectory=`` (``/var/lib/canary-gateway``, on the card: the one durable place) and its
``RuntimeDirectory=`` (``/run/canary-gateway``, in memory); ``/tmp`` is writable but private to
the unit and emptied at every start (``PrivateTmp=yes``). So the buffer belongs in the state
directory, and a panel image (read by a kiosk, a web page or a person) in one of the two.

Free space: the buffer grows until ``[buffer] max_bytes``, then drops its oldest undelivered
readings, counted and alarmed. If the file system fills first, SQLite fails instead (SQLITE_FULL):
readings stay in memory only and a power cut loses them, and the rest of the system (journald,
apt) fails with it. So the space the buffer may still take, ``max_bytes`` minus what its files
already hold, must be free, plus `RESERVE` for SQLite's write-ahead log and everything else
writing to that file system. The fix is named: free space, or lower ``max_bytes``.
"""

from __future__ import annotations

import stat
from pathlib import PurePosixPath

from gateway.config import BufferConfig, StatusConfig
from gateway.preflight import unit
from gateway.preflight.files import writable_directory
from gateway.preflight.host import WRITE, Host, kind
from gateway.preflight.problem import Problem, size

#: Free space kept beyond the buffer's cap: its write-ahead log between checkpoints (a few MiB)
#: and the other writers of a Pi's root file system (journald keeps up to 10% or 4 GiB by
#: default, but usually a few dozen MiB), with a margin; small next to any SD card.
RESERVE = 64 * 1024**2

#: SQLite's files next to ``[buffer] path`` (`gateway.buffer.sqlite`): the database, its
#: write-ahead log and shared memory, and the sequence high-water mark.
BUFFER_SUFFIXES = ("", "-wal", "-shm", ".seq")


def _outside_sandbox(path: PurePosixPath) -> str:
    """Why the daemon cannot use ``path`` under its unit (for a path outside its directories)."""
    if unit.hidden(path):
        return "hidden from the unit (ProtectHome=yes)"
    if any(unit.is_under(path, tmp) for tmp in unit.PRIVATE_TMP):
        return "private to the unit and emptied at every start (PrivateTmp=yes)"
    return "read-only to the unit (ProtectSystem=strict)"


def _uninspectable(key: str, path: PurePosixPath, exc: OSError) -> Problem:
    """This process could not look (a directory only root or the daemon may search)."""
    expected = "expected a place gateway check can inspect (run it with sudo)"
    return Problem(key, expected, f"{path}: {exc.strerror}")


def check_buffer(host: Host, buffer: BufferConfig) -> list[Problem]:
    """``[buffer] path`` can be created or written, and its file system has room to the cap."""
    path = host.absolute(buffer.path)
    try:
        return _buffer(host, buffer, path)
    except OSError as exc:
        return [_uninspectable("buffer.path", path, exc)]


def _buffer(host: Host, buffer: BufferConfig, path: PurePosixPath) -> list[Problem]:
    if host.sandboxed and not unit.is_under(path, unit.STATE_DIRECTORY):
        reason = _outside_sandbox(path)
        if unit.is_under(path, unit.RUNTIME_DIRECTORY):
            reason = "in memory: the buffer would be lost at every reboot"
        expected = (
            f"expected a path under {unit.STATE_DIRECTORY}, the unit's durable writable directory "
            "(StateDirectory=; a place elsewhere needs ReadWritePaths= in a drop-in)"
        )
        return [Problem("buffer.path", expected, f"{path}: {reason}")]
    problems = writable_directory(host, "buffer.path", path.parent, "the buffer")
    held = 0
    for suffix in BUFFER_SUFFIXES:
        existing = PurePosixPath(f"{path}{suffix}")
        if not host.exists(existing):
            continue
        st = host.stat(existing)
        held += st.st_size if suffix in ("", "-wal") else 0
        denied = host.denied(existing, WRITE) if stat.S_ISREG(st.st_mode) else kind(st)
        if denied is not None:
            who = host.identity.name
            expected = f"expected buffer files {who} can write (made by another user? chown {who}:)"
            problems.append(Problem("buffer.path", expected, f"{existing}: {denied}"))
    if problems:
        return problems
    return _space(host, buffer, path, held)


def _space(host: Host, buffer: BufferConfig, path: PurePosixPath, held: int) -> list[Problem]:
    where = path.parent
    while not host.exists(where) and where != where.parent:
        where = where.parent
    disk = host.disk(host.locate(where))
    if disk.read_only:
        return [
            Problem("buffer.path", "expected a writable file system", f"{where}: mounted read-only")
        ]
    room = disk.free + held - RESERVE
    if buffer.max_bytes <= room:
        return []
    expected = (
        f"expected at most the room on the buffer's file system ({size(disk.free)} free at "
        f"{where} + {size(held)} already buffered - {size(RESERVE)} reserve = {size(max(room, 0))}):"
        " free space or lower max_bytes"
    )
    return [Problem("buffer.max_bytes", expected, f"{buffer.max_bytes} = {size(buffer.max_bytes)}")]


def check_panels(host: Host, status: StatusConfig) -> list[Problem]:
    """Each ``png`` panel's ``path`` is writable by the daemon, under its unit's sandbox."""
    problems: list[Problem] = []
    for index, room in enumerate(status.rooms):
        if room.panel is None or room.panel.backend != "png" or room.panel.path is None:
            continue
        key = f"status.rooms[{index}].panel.path"
        path = host.absolute(room.panel.path)
        good = (unit.RUNTIME_DIRECTORY, unit.STATE_DIRECTORY)
        if host.sandboxed and not any(unit.is_under(path, d) for d in good):
            expected = (
                f"expected a path under {unit.RUNTIME_DIRECTORY} (RuntimeDirectory=, in memory) "
                f"or {unit.STATE_DIRECTORY} (StateDirectory=), the unit's writable places"
            )
            problems.append(Problem(key, expected, f"{path}: {_outside_sandbox(path)}"))
            continue
        try:
            problems += writable_directory(host, key, path.parent, "the panel image")
        except OSError as exc:
            problems.append(_uninspectable(key, path, exc))
    return problems
