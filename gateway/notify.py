"""systemd's notification protocol (sd_notify(3)): READY, WATCHDOG and STATUS datagrams.

The protocol is one ``KEY=value`` line per field, sent as one datagram to the unix socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace). It is small enough to speak
directly, which keeps a C library (libsystemd via a binding) off the Pi. Without ``NOTIFY_SOCKET``
(a developer's shell, a unit of ``Type=exec``) every call does nothing, so the daemon runs the same
everywhere. ``WATCHDOG_USEC`` (set by systemd from ``WatchdogSec=``) says how often systemd wants a
ping; ``WATCHDOG_PID``, when set, names the process it is meant for (children must not ping).

A send never raises: a notification that cannot be delivered (systemd went away, a socket buffer
full) is logged once and dropped, because the watchdog's absence of pings is the signal, and the
data path must never fail for its bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to systemd, or nothing when the process was not started by it."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        """``address`` is ``NOTIFY_SOCKET``'s value (None: notifications off)."""
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_seconds = watchdog_usec / 1e6 if watchdog_usec else None
        self._socket: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd set up for this process (see the module docstring)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec = _positive_int(env.get("WATCHDOG_USEC"))
        pid = _positive_int(env.get("WATCHDOG_PID"))
        if pid is not None and pid != os.getpid():
            usec = None  # the watchdog is another process's
        return cls(address, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere."""
        return self._address is not None

    def ready(self, status: str) -> None:
        """The service finished starting (``Type=notify`` leaves "activating")."""
        self.send(READY="1", STATUS=status)

    def ping(self, status: str) -> None:
        """The service is healthy: reset the watchdog timer."""
        self.send(WATCHDOG="1", STATUS=status)

    def status(self, status: str) -> None:
        """Only update the one-line status (``systemctl status`` shows it)."""
        self.send(STATUS=status)

    def stopping(self) -> None:
        """The service began its clean stop."""
        self.send(STOPPING="1", STATUS="stopping")

    def reloading(self) -> None:
        """The service began reloading its configuration (``READY=1`` follows when done)."""
        # sd_notify(3): RELOADING=1 comes with the CLOCK_MONOTONIC time of the request.
        self.send(
            RELOADING="1",
            MONOTONIC_USEC=str(time.monotonic_ns() // 1000),
            STATUS="reloading the configuration",
        )

    def send(self, **fields: str) -> None:
        """One datagram with ``fields`` as ``KEY=value`` lines; see the module docstring."""
        if self._address is None:
            return
        message = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._failing:
                log.warning("cannot notify systemd at %s: %s", self._address.lstrip("\0"), exc)
            self._failing = True
            return
        if self._failing:
            log.info("notifying systemd again")
        self._failing = False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(value: str) -> str:
    """A field value may not contain a newline (it would start another field)."""
    return " ".join(value.split())


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text) if text else 0
    except ValueError:
        return None
    return value if value > 0 else None


#: Seconds between pings when systemd set no watchdog (only the STATUS= line is refreshed then).
IDLE_INTERVAL = 30.0


async def keep_alive(notifier: Notifier, task: asyncio.Task[None], status: str) -> None:
    """Ping while ``task`` runs (the bridge: its loop alive is its health); stop when it ends."""
    interval = notifier.watchdog_seconds / 2 if notifier.watchdog_seconds else IDLE_INTERVAL
    while not task.done():
        notifier.ping(status)
        await asyncio.sleep(interval)
    notifier.status("stopped")
