"""An I2C bus that is opened on first use, and again after a failed open.

`drivers.sensors.i2c_bus.open_i2c_bus` opens ``/dev/i2c-N`` at once and raises (Blinka's
``RuntimeError: I2C Bus #1 not found``) when the bus does not exist: I2C not enabled in
``config.txt``, a missing overlay, or a HAT's second bus not there yet. Called while the daemon
assembles its bus tasks, that exception stopped the whole daemon with a traceback. Deferred, a
missing bus is a failure of the devices on it instead: the first transaction raises ``OSError``
(``ENODEV``, with the reason), which the drivers report as `gateway.errors.DeviceTimeout`, so the
scheduler logs the device as unavailable once and retries it with backoff, like a serial port
that is not plugged in, while every other bus keeps polling.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from drivers.sensors.i2c_bus import I2CBus, ReadableBuffer, WriteableBuffer, open_i2c_bus


class DeferredI2C:
    """An `I2CBus` for the bus ``spec``, opened by ``opener`` on the first call that needs it.

    Until an open succeeded, every transaction (and ``try_lock``, which every Adafruit
    transaction starts with) tries again and raises ``OSError(ENODEV)`` naming the bus and the
    reason. Once open, calls go straight to the bus. ``deinit`` closes it; the next use reopens.
    Not thread-safe by itself: like any shared bus it is used by one bus task, one call at a time.
    """

    def __init__(self, spec: str, *, opener: Callable[[str], I2CBus] = open_i2c_bus) -> None:
        self._spec = spec
        self._opener = opener
        self._bus: I2CBus | None = None

    def _opened(self) -> I2CBus:
        if self._bus is None:
            try:
                self._bus = self._opener(self._spec)
            except (RuntimeError, OSError) as exc:
                raise OSError(errno.ENODEV, f"cannot open the I2C bus {self._spec}: {exc}") from exc
        return self._bus

    def try_lock(self) -> bool:
        """Lock the bus, opening it first; raises ``OSError`` if it cannot be opened."""
        return self._opened().try_lock()

    def unlock(self) -> None:
        """Release the lock (nothing to release if the bus never opened)."""
        if self._bus is not None:
            self._bus.unlock()

    def scan(self) -> list[int]:
        """The addresses that answer."""
        return self._opened().scan()

    def writeto(
        self, address: int, buffer: ReadableBuffer, *, start: int = 0, end: int | None = None
    ) -> None:
        """Write ``buffer[start:end]`` to ``address``."""
        self._opened().writeto(address, buffer, start=start, end=end)

    def readfrom_into(
        self, address: int, buffer: WriteableBuffer, *, start: int = 0, end: int | None = None
    ) -> None:
        """Fill ``buffer[start:end]`` from ``address``."""
        self._opened().readfrom_into(address, buffer, start=start, end=end)

    def writeto_then_readfrom(
        self,
        address: int,
        buffer_out: ReadableBuffer,
        buffer_in: WriteableBuffer,
        *,
        out_start: int = 0,
        out_end: int | None = None,
        in_start: int = 0,
        in_end: int | None = None,
    ) -> None:
        """Write then read with a repeated start."""
        self._opened().writeto_then_readfrom(
            address,
            buffer_out,
            buffer_in,
            out_start=out_start,
            out_end=out_end,
            in_start=in_start,
            in_end=in_end,
        )

    def deinit(self) -> None:
        """Close the bus if it is open; never raises for a bus that never opened."""
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.deinit()
