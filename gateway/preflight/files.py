"""The two file questions every check asks: can the daemon read this file, and can it create
files in this directory. Each answers with `Problem`s naming the key, never raises for the host's
state (a missing file, a permission this process lacks)."""

from __future__ import annotations

import stat
from pathlib import PurePosixPath

from gateway.preflight import unit
from gateway.preflight.host import READ, SEARCH, WRITE, Host, kind
from gateway.preflight.problem import Problem


def read_file(host: Host, key: str, path: PurePosixPath, what: str) -> tuple[list[Problem], bytes]:
    """Check that the daemon can read the regular file ``path`` (the value of ``key``, ``what``
    it should be, e.g. "a file holding the secret"); return the problems and its content (empty
    when there are problems)."""
    result = _read(host, key, path, what)
    return ([result], b"") if isinstance(result, Problem) else ([], result)


def _read(host: Host, key: str, path: PurePosixPath, what: str) -> Problem | bytes:
    who = host.identity.name
    if host.sandboxed and unit.hidden(path):
        hidden = ", ".join(str(d) for d in unit.HIDDEN)
        expected = f"expected {what} outside {hidden}, which the unit hides (ProtectHome=yes)"
        return Problem(key, expected, str(path))
    try:
        st = host.stat(path)
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror
        return Problem(key, f"expected {what}", f"{path}: {reason}")
    if not stat.S_ISREG(st.st_mode):
        return Problem(key, f"expected {what}", f"{path}: {kind(st)}")
    denied = host.denied(path, READ)
    if denied is not None:
        expected = f"expected {what} that {who} can read (e.g. owner root, group {who}, mode 0640)"
        return Problem(key, expected, f"{path}: {denied}")
    try:
        return host.locate(path).read_bytes()
    except OSError as exc:
        expected = f"expected {what} that gateway check can read to verify it (run it with sudo)"
        return Problem(key, expected, f"{path}: {exc.strerror}")


def writable_directory(host: Host, key: str, directory: PurePosixPath, what: str) -> list[Problem]:
    """Check that the daemon can create ``what`` in ``directory``: it exists and the daemon may
    write and search it, or it is missing and the daemon may create it (the nearest existing
    ancestor is writable). Under the unit, its ``StateDirectory=`` and ``RuntimeDirectory=``
    count as the daemon's own: systemd creates and chowns them at every start."""
    managed = (unit.STATE_DIRECTORY, unit.RUNTIME_DIRECTORY) if host.sandboxed else ()
    existing = directory
    while not host.exists(existing) and existing not in managed and existing != existing.parent:
        existing = existing.parent
    if existing in managed:
        return []
    st = host.stat(existing)
    if not stat.S_ISDIR(st.st_mode):
        return [Problem(key, f"expected a directory for {what}", f"{existing}: {kind(st)}")]
    denied = host.denied(existing, WRITE | SEARCH)
    if denied is None:
        return []
    who = host.identity.name
    verb = "write" if existing == directory else f"create {directory} in"
    return [Problem(key, f"expected a directory {who} can {verb}", f"{existing}: {denied}")]
