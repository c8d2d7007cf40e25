"""The machine as the daemon will see it: its user and groups, its environment, its files.

Everything a check needs from the host goes through a `Host`, so that tests inject all of it: a
fake filesystem ``root`` under which the configuration's absolute paths are looked up, the
daemon's `Identity` (tests run as root, which may read anything, so a permission check must be
judged for someone else), the environment, the time and the free disk space.

Permissions are judged from the mode bits, owner and group of each file and of every directory
on the way to it, for the daemon's user and groups, the way the kernel does for a process without
capabilities (the unit has ``CapabilityBoundingSet=`` empty). A file with a POSIX ACL is taken as
accessible: the bits alone cannot tell, and a false alarm on a site that set an ACL on purpose
would train installers to ignore `gateway check`.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePath, PurePosixPath

from gateway.preflight import unit

#: Access bits, as in a mode's rwx triplets.
READ, WRITE, SEARCH = 4, 2, 1


@dataclass(frozen=True, kw_only=True)
class Identity:
    """Who the daemon runs as: a user name (for messages), its uid, and every gid it holds."""

    name: str
    uid: int
    gids: frozenset[int]


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def daemon_identity() -> Identity:
    """The unit's user with its groups (its own, /etc/group's and the unit's
    ``SupplementaryGroups=``) if that user exists; else the user running this process."""
    try:
        entry = pwd.getpwnam(unit.USER)
    except KeyError:
        return current_identity()
    gids = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    gids |= {g for g in map(_gid, unit.SUPPLEMENTARY_GROUPS) if g is not None}
    return Identity(name=entry.pw_name, uid=entry.pw_uid, gids=frozenset(gids))


def current_identity() -> Identity:
    """The user running this process, with its groups."""
    uid = os.geteuid()
    return Identity(name=_user_name(uid), uid=uid, gids=frozenset({os.getegid(), *os.getgroups()}))


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@dataclass(frozen=True, slots=True, kw_only=True)
class Disk:
    """A filesystem's space available to unprivileged users, and whether it is mounted read-only."""

    free: int
    read_only: bool


def statvfs_disk(path: Path) -> Disk:
    """`Disk` of the filesystem holding ``path`` (``f_bavail``: root's reserve is not the
    daemon's)."""
    info = os.statvfs(path)
    return Disk(free=info.f_bavail * info.f_frsize, read_only=bool(info.f_flag & os.ST_RDONLY))


def _has_acl(path: Path) -> bool:
    try:
        return "system.posix_acl_access" in os.listxattr(path)
    except OSError:
        return False


def allows(st: os.stat_result, who: Identity, want: int) -> bool:
    """Whether the mode bits of ``st`` give ``who`` every access in ``want`` (`READ` | ...).

    The owner's triplet applies to the owner only, the group's to members only, as in the
    kernel; uid 0 may do anything except search where no one may (irrelevant for directories).
    """
    if who.uid == 0:
        return True
    if st.st_uid == who.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in who.gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


#: What `stat.S_IFMT` says a path is, for messages.
_KINDS = {
    stat.S_IFREG: "a regular file",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def kind(st: os.stat_result) -> str:
    """``a regular file``, ``a directory``, ``a FIFO``, ..."""
    return _KINDS.get(stat.S_IFMT(st.st_mode), "a special file")


def parse_environment(text: str) -> dict[str, str]:
    """``KEY=value`` lines as systemd's ``EnvironmentFile=`` reads them, simplified: comments
    (``#``, ``;``) and blank lines skipped, one pair of matching quotes around a value removed.
    Line continuations and escapes are not supported (a secret does not need them)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values


@dataclass(frozen=True, kw_only=True)
class Host:
    """What the checks may know of the machine; see the module docstring.

    ``sandboxed``: the daemon will run under its unit (`gateway.preflight.unit`): its sandbox
    applies and relative paths start at its working directory ``cwd``. ``environ`` is the
    daemon's environment; ``environment_note`` says in a few words where it came from (for the
    message of a variable that is not set).
    """

    identity: Identity
    environ: Mapping[str, str]
    now: datetime
    sandboxed: bool
    cwd: PurePosixPath
    root: Path = Path("/")
    environment_note: str = ""
    user_name: Callable[[int], str] = field(default=_user_name)
    group_name: Callable[[int], str] = field(default=_group_name)
    disk: Callable[[Path], Disk] = field(default=statvfs_disk)

    def absolute(self, path: PurePath | str) -> PurePosixPath:
        """``path`` as the daemon resolves it: relative to ``cwd``; ``..`` folded lexically."""
        joined = self.cwd / PurePosixPath(path)
        return PurePosixPath(os.path.normpath(joined))

    def locate(self, path: PurePosixPath) -> Path:
        """Where the daemon's absolute ``path`` is on this host (under ``root``)."""
        return self.root / path.relative_to("/")

    def stat(self, path: PurePosixPath) -> os.stat_result:
        """``os.stat`` of the daemon's ``path`` (symlinks followed); raises ``OSError``."""
        return os.stat(self.locate(path))

    def exists(self, path: PurePosixPath) -> bool:
        """Whether the daemon's ``path`` exists (a dangling symlink does not)."""
        return self.locate(path).exists()

    def describe(self, st: os.stat_result) -> str:
        """``crw-rw---- root:dialout``: the mode and the owners, as ``ls -l`` shows them."""
        owners = f"{self.user_name(st.st_uid)}:{self.group_name(st.st_gid)}"
        return f"{stat.filemode(st.st_mode)} {owners}"

    def denied(self, path: PurePosixPath, want: int) -> str | None:
        """Why the daemon may not ``want`` (`READ` | `WRITE` | `SEARCH`) the existing ``path``,
        or None if it may: a directory on the way it cannot search, or the path's own bits."""
        who = self.identity
        try:
            for directory in reversed(path.parents[:-1]):  # from the top, "/" itself excluded
                st = self.stat(directory)
                if not allows(st, who, SEARCH) and not _has_acl(self.locate(directory)):
                    describe = self.describe(st)
                    return f"directory {directory} is not searchable by {who.name}: {describe}"
            st = self.stat(path)
        except OSError as exc:
            return f"cannot be inspected by this user ({exc.strerror}; run gateway check with sudo)"
        if allows(st, who, want) or _has_acl(self.locate(path)):
            return None
        return self.describe(st)


def daemon_host(*, sandboxed: bool, environ: Mapping[str, str] | None = None) -> Host:
    """This machine as the daemon will see it.

    ``sandboxed`` (``gateway check``): as `daemon_identity`, under its unit. If the unit's user
    exists the daemon is taken to run as a service, whose environment is the unit's
    ``EnvironmentFile=`` only (not the shell's); otherwise it is this environment with that file
    on top. Not ``sandboxed`` (``--simulate``): this user, this environment, this directory.
    """
    environ = dict(os.environ if environ is None else environ)
    now = datetime.now(UTC)
    if not sandboxed:
        return Host(
            identity=current_identity(),
            environ=environ,
            now=now,
            sandboxed=False,
            cwd=PurePosixPath(os.getcwd()),
            environment_note="this shell's environment",
        )
    identity = daemon_identity()
    service = identity.name == unit.USER
    path = Path(unit.ENVIRONMENT_FILE)
    try:
        from_file = parse_environment(path.read_text(encoding="utf-8"))
        note = f"{path}"
    except FileNotFoundError:
        from_file, note = {}, f"{path}, which does not exist"
    except OSError as exc:
        from_file, note = {}, f"{path}, which this user cannot read ({exc.strerror}; use sudo)"
    if not service:
        note = f"this shell's environment or {note}"
    return Host(
        identity=identity,
        environ=from_file if service else {**environ, **from_file},
        now=now,
        sandboxed=True,
        cwd=unit.WORKING_DIRECTORY,
        environment_note=note,
    )
