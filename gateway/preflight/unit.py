"""What the systemd unit (``systemd/gateway.service``) gives the daemon, as `gateway check` needs it.

The checks judge a path by what the daemon will be able to do under its unit, not by what the
person running `gateway check` (usually root) can do. These constants mirror the unit file; a
test (tests/gateway/test_preflight_unit.py) fails when the unit changes and they do not.
"""

from __future__ import annotations

from pathlib import PurePosixPath

#: ``User=``: the daemon's user.
USER = "canary"
#: ``SupplementaryGroups=``: granted by systemd at start even when the user is not a member.
SUPPLEMENTARY_GROUPS: tuple[str, ...] = ("dialout", "i2c", "gpio", "spi")
#: ``StateDirectory=canary-gateway``: created and chowned to the user by systemd at each start;
#: the one durable writable directory under ``ProtectSystem=strict``.
STATE_DIRECTORY = PurePosixPath("/var/lib/canary-gateway")
#: ``RuntimeDirectory=canary-gateway``: the same, in memory (emptied at stop and at reboot).
RUNTIME_DIRECTORY = PurePosixPath("/run/canary-gateway")
#: ``WorkingDirectory=%S/canary-gateway``: where a relative path in the configuration points.
WORKING_DIRECTORY = STATE_DIRECTORY
#: ``EnvironmentFile=-/etc/canary-gateway/environment``: where ``{ env = ... }`` secrets live.
ENVIRONMENT_FILE = PurePosixPath("/etc/canary-gateway/environment")
#: ``ProtectHome=yes``: these are empty and inaccessible to the daemon.
HIDDEN = (PurePosixPath("/home"), PurePosixPath("/root"), PurePosixPath("/run/user"))
#: ``PrivateTmp=yes``: the daemon's own /tmp and /var/tmp, emptied at every start.
PRIVATE_TMP = (PurePosixPath("/tmp"), PurePosixPath("/var/tmp"))


def is_under(path: PurePosixPath, directory: PurePosixPath) -> bool:
    """True if ``path`` is ``directory`` or inside it (lexically: no symlinks are followed)."""
    return path == directory or directory in path.parents


def hidden(path: PurePosixPath) -> bool:
    """True if ``ProtectHome=yes`` hides ``path`` from the daemon."""
    return any(is_under(path, directory) for directory in HIDDEN)
