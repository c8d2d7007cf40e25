"""One thing that would fail when the daemon starts, as one line naming the key to fix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """``key``: the TOML key path; ``expected``: what would work (``expected ...``, with the
    fix when there is one); ``got``: what is there instead, if there is something to show."""

    key: str
    expected: str
    got: str | None = None

    def line(self, source: str) -> str:
        """``FILE: key.path: expectation (got value)``, as `gateway.config` reports errors."""
        tail = f" (got {self.got})" if self.got is not None else ""
        return f"{source}: {self.key}: {self.expected}{tail}"


def size(n: int) -> str:
    """Bytes in binary units, three significant digits: ``1.5 GiB``, ``512 MiB``, ``800 B``."""
    value, unit = float(n), "TiB"
    for candidate in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            unit = candidate
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.3g} {unit}"
