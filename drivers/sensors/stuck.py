"""Detecting a sensor that keeps answering with the same measurement.

A live I2C interface in front of a dead sensing element (a stalled PM fan, a hung SCD4x signal
path) keeps returning well-formed frames with valid CRCs and checksums. Real measurements carry
noise: the SCD4x's raw words and the PMSA003I's particle counts change from one measurement to the
next, so the very same raw measurement many times in a row means the sensor is stuck, and its
number must not be published as if it were fresh. The exception is a measurement that clean air
legitimately repeats: a PMSA003I in HEPA-filtered air reports 0 µg/m³ (and counts of 0 or a few
particles) for hours; its driver does not feed such frames to the detector (`reset` instead).
"""

from __future__ import annotations

from collections.abc import Hashable

from gateway.errors import DeviceStuck


class StuckDetector:
    """Counts consecutive identical measurements; `check` raises `DeviceStuck` at ``limit``.

    ``limit`` is the number of identical measurements in a row that is treated as stuck (so the
    first ``limit - 1`` repeats are still published); 0 disables the check. The detector keeps
    raising for every further repeat and is quiet again as soon as the measurement changes.
    """

    def __init__(self, *, limit: int, name: str) -> None:
        if limit < 0 or limit == 1:
            raise ValueError("limit must be 0 (off) or at least 2")
        self._limit = limit
        self._name = name
        self._last: Hashable | None = None
        self._repeats = 0

    def reset(self) -> None:
        """Forget the history (after a reopen: the sensor may have been power-cycled)."""
        self._last, self._repeats = None, 0

    def check(self, measurement: Hashable) -> None:
        """Record ``measurement``; raise `DeviceStuck` if it is the ``limit``-th identical one."""
        if measurement == self._last:
            self._repeats += 1
        else:
            self._last, self._repeats = measurement, 1
        if self._limit and self._repeats >= self._limit:
            raise DeviceStuck(
                f"{self._name}: the same measurement {self._repeats} times in a row; "
                "the sensor looks stuck, its value is withheld"
            )
