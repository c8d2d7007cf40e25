"""Log lines for a terminal, and for journald when systemd runs the daemon.

Under systemd, stderr goes to the journal (``JOURNAL_STREAM`` names that stream as
``device:inode``). The journal stamps every line itself, so a timestamp of ours would be a
duplicate, and it reads a syslog priority from a ``<N>`` prefix (sd-daemon(3)): with it,
``journalctl -p warning -u gateway`` shows exactly the warnings and errors. Every line of a
multi-line record (a traceback) carries the prefix, because the journal takes each line as an
entry of its own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

#: Python level -> syslog priority (sd-daemon(3): <3> error, <4> warning, <6> info, <7> debug).
PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
TERMINAL_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
#: Libraries whose INFO lines are noise at the daemon's INFO level.
NOISY = ("pymodbus", "amqtt", "transitions", "urllib3")


class JournalFormatter(logging.Formatter):
    """Prefixes every line of a record with its syslog priority, ``<N>``."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def priority(level: int) -> int:
    """The syslog priority of a Python level (custom levels map to the next one below)."""
    for threshold in sorted(PRIORITIES, reverse=True):
        if level >= threshold:
            return PRIORITIES[threshold]
    return 7


def to_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal stream systemd gave this process."""
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not device or not inode:
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return f"{stat.st_dev}:{stat.st_ino}" == f"{device}:{inode}"


def configure(level: str, *, stream: TextIO = sys.stderr) -> None:
    """Logging for the ``gateway`` command: ``level`` is debug/info/warning/error."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JournalFormatter() if to_journal(stream) else logging.Formatter(TERMINAL_FORMAT)
    )
    # Like basicConfig: a process that set up logging already (a test runner) keeps its own.
    logging.basicConfig(handlers=[handler], level=getattr(logging, level.upper()))
    root = logging.getLogger()
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
