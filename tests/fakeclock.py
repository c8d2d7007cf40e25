"""A monotonic clock for tests that moves only when told to.

Thread-safe, because drivers run their blocking calls in worker threads. Tests pass an instance
wherever the code takes a ``clock``/``monotonic`` callable, and often patch a driver's
``time.sleep`` with `FakeClock.advance` so that simulated waits take no real time.
"""

from __future__ import annotations

import threading


class FakeClock:
    """Seconds on a fake monotonic clock, starting at ``start``."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds``; a negative step (a sleep of -x) moves nowhere."""
        with self._lock:
            self._now += max(0.0, seconds)
