"""Reading a child's stdout line by line with a deadline (``select`` on the raw pipe: a buffered
``readline`` would block, and ``select`` cannot see what a text wrapper has already buffered)."""

from __future__ import annotations

import os
import select
import time
from typing import IO


class LineReader:
    """Lines of ``stream`` (a pipe), each returned once, in order."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        self._pending = b""
        self._lines: list[str] = []
        self.closed = False

    def expect(self, prefix: str, *, timeout: float) -> str | None:
        """The first queued or arriving line that starts with ``prefix`` (lines before it stay
        queued), or None after ``timeout`` seconds or at the end of the stream."""
        deadline = time.monotonic() + timeout
        while True:
            for index, line in enumerate(self._lines):
                if line.startswith(prefix):
                    del self._lines[index]
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return None
            readable, _, _ = select.select([self._fd], [], [], remaining)
            if readable:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    self.closed = True
                self._pending += chunk
                *complete, self._pending = self._pending.split(b"\n")
                self._lines.extend(part.decode() for part in complete)

    def drain(self, *, timeout: float = 10.0) -> list[str]:
        """Every queued line and the rest of the stream up to its end (call once the writer is
        dead, so that the end comes), at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.expect("\0", timeout=deadline - time.monotonic())
        lines, self._lines = self._lines, []
        return lines
