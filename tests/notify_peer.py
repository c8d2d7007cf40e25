"""A systemd stand-in for the notification protocol: a datagram socket that records what it gets.

Written from sd_notify(3), not from gateway/notify.py: one datagram per notification, newline
separated ``KEY=value`` fields, sent to the unix socket named by ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Notification:
    at: float  # time.monotonic() on arrival
    fields: dict[str, str]


@dataclass
class NotifyPeer:
    """Binds a socket in a short temporary directory (unix paths are limited to 108 bytes)."""

    messages: list[Notification] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="notify-")
        self.path = str(Path(self._dir.name) / "notify.sock")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.path)
        self._socket.settimeout(0.1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-peer", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            with self._lock:
                self.messages.append(Notification(time.monotonic(), fields))

    def snapshot(self) -> list[Notification]:
        with self._lock:
            return list(self.messages)

    def with_field(self, key: str, value: str | None = None) -> list[Notification]:
        return [
            m
            for m in self.snapshot()
            if key in m.fields and (value is None or m.fields[key] == value)
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()
        self._dir.cleanup()
