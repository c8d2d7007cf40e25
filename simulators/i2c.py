"""An in-process I2C bus that the real Adafruit drivers can talk to.

`SimI2CBus` implements the subset of ``busio.I2C`` that ``adafruit_bus_device.I2CDevice`` and the
CircuitPython sensor drivers use (``try_lock``/``unlock``/``scan``/``writeto``/``readfrom_into``/
``writeto_then_readfrom``/``deinit``). Simulated chips attach at a 7-bit address and see raw bytes,
exactly what the sensor would see on the wire, so the drivers under test run unmodified.

A NACK is an ``OSError(errno.EREMOTEIO)`` (errno 121), which is what Linux i2c-dev reports when a
device does not acknowledge; chips raise it themselves (see `nack`) and the bus raises it for an
address with nothing attached.
"""

from __future__ import annotations

import errno
import threading
from typing import Protocol

#: Buffers a driver may hand to ``writeto`` (read-only is enough) and to ``readfrom_into``.
ReadableBuffer = bytes | bytearray | memoryview
WriteableBuffer = bytearray | memoryview


def nack(reason: str) -> OSError:
    """Return the error a Linux host sees when a device NACKs: ``OSError(EREMOTEIO)``."""
    return OSError(errno.EREMOTEIO, f"Remote I/O error (NACK): {reason}")


class I2CChip(Protocol):
    """A device on a simulated bus.

    ``write`` receives the bytes of one write transaction (an empty ``data`` is an address-only
    probe); ``read`` returns exactly ``n`` bytes for one read transaction. Either raises the
    `nack` error to refuse the transaction, as the real part would by not acknowledging.
    """

    def write(self, data: bytes) -> None: ...

    def read(self, n: int) -> bytes: ...


class SimI2CBus:
    """A busio-compatible I2C bus whose devices are in-process `I2CChip` objects.

    Thread-safe: every transaction holds one lock, because drivers run in worker threads and a
    test (or the TCP server) may touch the same bus at the same time. ``try_lock``/``unlock`` are
    the cooperative bus lock of CircuitPython (``I2CDevice`` spins on it); like on Linux it is
    advisory and transactions do not require it.
    """

    def __init__(self) -> None:
        self._chips: dict[int, I2CChip] = {}
        self._io = threading.Lock()
        self._guard = threading.Lock()
        self._locked = False

    def attach(self, address: int, chip: I2CChip) -> None:
        """Connect ``chip`` at the 7-bit ``address``; an address holds one chip."""
        if not 0 <= address <= 0x7F:
            raise ValueError(f"I2C address out of range: {address:#x}")
        with self._io:
            if address in self._chips:
                raise ValueError(f"I2C address {address:#04x} already in use")
            self._chips[address] = chip

    def detach(self, address: int) -> None:
        """Disconnect the chip at ``address`` (the next transaction to it is NACKed)."""
        with self._io:
            self._chips.pop(address, None)

    def try_lock(self) -> bool:
        """Take the cooperative bus lock; ``False`` if another user holds it."""
        with self._guard:
            if self._locked:
                return False
            self._locked = True
            return True

    def unlock(self) -> None:
        """Release the cooperative bus lock (a no-op when not held, as in Blinka)."""
        with self._guard:
            self._locked = False

    def scan(self) -> list[int]:
        """Addresses that acknowledge an address-only write, ascending (like ``i2cdetect``)."""
        found = []
        with self._io:
            for address, chip in sorted(self._chips.items()):
                try:
                    chip.write(b"")
                except OSError:
                    continue
                found.append(address)
        return found

    def writeto(
        self,
        address: int,
        buffer: ReadableBuffer,
        *,
        start: int = 0,
        end: int | None = None,
        stop: bool = True,
    ) -> None:
        """Write ``buffer[start:end]`` to the device at ``address`` in one transaction."""
        data = bytes(buffer[start:end])
        with self._io:
            self._chip(address).write(data)

    def readfrom_into(
        self,
        address: int,
        buffer: WriteableBuffer,
        *,
        start: int = 0,
        end: int | None = None,
        stop: bool = True,
    ) -> None:
        """Fill ``buffer[start:end]`` with bytes read from the device at ``address``."""
        stop_at = len(buffer) if end is None else end
        with self._io:
            buffer[start:stop_at] = self._read(address, stop_at - start)

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
        stop: bool = False,
    ) -> None:
        """Write then read (repeated start) as one transaction nobody can interleave with."""
        data = bytes(buffer_out[out_start:out_end])
        stop_at = len(buffer_in) if in_end is None else in_end
        with self._io:
            self._chip(address).write(data)
            buffer_in[in_start:stop_at] = self._read(address, stop_at - in_start)

    def deinit(self) -> None:
        """Release the bus lock; attached chips stay attached (the bus is a test fixture)."""
        self.unlock()

    def __enter__(self) -> SimI2CBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.deinit()

    def _chip(self, address: int) -> I2CChip:
        chip = self._chips.get(address)
        if chip is None:
            raise nack(f"no device at address {address:#04x}")
        return chip

    def _read(self, address: int, n: int) -> bytes:
        data = self._chip(address).read(n)
        if len(data) != n:
            raise RuntimeError(f"chip at {address:#04x} returned {len(data)} bytes, not {n}")
        return data
