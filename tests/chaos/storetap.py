"""A witness on the bridge -> store link: which readings the store acknowledged, and when.

Installed as the store proxy's `tap`, it follows each HTTP/1.1 connection (urllib3 sends one
request at a time per connection and waits for the answer), takes the sequence numbers out of
every InfluxDB line-protocol write (``seq=<n>i``), and records the store's answer to it with the
moment the answer passed the proxy. The checker uses it to tell a reading the store acknowledged
and then lost (a store crash after a 204) from one the store never got (lost before the bridge).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

_SEQ = re.compile(rb"\bseq=(\d+)i\b")
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    """The store's answer to one write: when it passed the proxy, its status, what it held."""

    t: float
    status: int
    seqs: tuple[int, ...]


@dataclass
class _Stream:
    buffer: bytearray = field(default_factory=bytearray)


@dataclass
class StoreTap:
    """Call it as a `FaultProxy.tap`; read `answers` (thread-safe) at the end."""

    answers: list[Answer] = field(default_factory=list)
    #: Connections whose bytes could not be followed (chunked bodies, ...): counted, not guessed.
    unparsed: int = 0
    _streams: dict[tuple[int, bool], _Stream] = field(default_factory=dict)
    _waiting: dict[int, deque[tuple[int, ...]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, link: int, up: bool, data: bytes) -> None:
        stream = self._streams.setdefault((link, up), _Stream())
        stream.buffer += data
        while (message := _take(stream.buffer)) is not None:
            head, body = message
            if up:
                seqs = tuple(int(s) for s in _SEQ.findall(body)) if head.startswith(b"POST") else ()
                self._waiting.setdefault(link, deque()).append(seqs)
                continue
            waiting = self._waiting.get(link)
            seqs = waiting.popleft() if waiting else ()
            try:
                status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.unparsed += 1
                status = 0
            with self._lock:
                self.answers.append(Answer(time.time(), status, seqs))

    def acknowledged(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if 200 <= a.status < 300]


def _take(buffer: bytearray) -> tuple[bytes, bytes] | None:
    """One complete HTTP message (head, body) from the front of ``buffer``, or None yet."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end])
    match = _LENGTH.search(head + b"\r\n")
    length = int(match.group(1)) if match else 0
    if len(buffer) < end + 4 + length:
        return None
    body = bytes(buffer[end + 4 : end + 4 + length])
    del buffer[: end + 4 + length]
    return head, body
