"""I2C buses for the sensor drivers: the busio-style `I2CBus` protocol and the ways to open one.

The Adafruit CircuitPython drivers take any object with busio.I2C's method set, so a driver here
gets its bus injected and never builds one from board pins (which fails on anything that is not
a recognised board). `open_i2c_bus` turns a config string into a bus:

* ``"/dev/i2c-N"``: the Linux i2c-dev bus N (a Raspberry Pi's header is ``/dev/i2c-1``);
* ``"tcp://HOST:PORT"``: a simulated bus served by ``simulators.i2c_server.I2CBusServer``.
"""

from __future__ import annotations

import errno
import importlib
import re
import socket
import threading
from typing import Any, Protocol
from urllib.parse import urlsplit

#: Buffers a driver may hand to ``writeto`` (read-only is enough) and to ``readfrom_into``.
ReadableBuffer = bytes | bytearray | memoryview
WriteableBuffer = bytearray | memoryview

# The wire protocol of simulators/i2c_server.py (documented there; kept in step by the tests).
_OP_WRITE, _OP_READ, _OP_TRANSFER, _OP_SCAN = b"W", b"R", b"T", b"S"
_STATUS_OK, _STATUS_NACK = 0, 1


class I2CBus(Protocol):
    """The part of ``busio.I2C`` that ``adafruit_bus_device`` and the sensor drivers use.

    A transaction a device does not acknowledge raises ``OSError`` (``EREMOTEIO`` on Linux).
    ``try_lock``/``unlock`` is CircuitPython's cooperative bus lock.
    """

    def try_lock(self) -> bool: ...

    def unlock(self) -> None: ...

    def scan(self) -> list[int]: ...

    def writeto(
        self, address: int, buffer: ReadableBuffer, *, start: int = 0, end: int | None = None
    ) -> None: ...

    def readfrom_into(
        self, address: int, buffer: WriteableBuffer, *, start: int = 0, end: int | None = None
    ) -> None: ...

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
    ) -> None: ...

    def deinit(self) -> None: ...


class _BusLock:
    """CircuitPython's cooperative lock, safe across the worker threads drivers run in."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locked = False

    def try_lock(self) -> bool:
        """Take the bus lock; ``False`` if another user holds it."""
        with self._guard:
            if self._locked:
                return False
            self._locked = True
            return True

    def unlock(self) -> None:
        """Release the bus lock (a no-op when not held, as in Blinka)."""
        with self._guard:
            self._locked = False


class RemoteI2C(_BusLock):
    """An `I2CBus` whose devices live behind a ``simulators.i2c_server.I2CBusServer``.

    Blocking, for the worker threads the Adafruit drivers run in. The connection opens on first
    use and is dropped after any socket error, so the next transaction reconnects: a simulator
    restarted under a running gateway looks like a device that was briefly absent. A NACK from
    the remote bus raises ``OSError(EREMOTEIO)`` as i2c-dev would; socket failures raise their
    own ``OSError`` (``TimeoutError`` after ``timeout`` seconds).
    """

    def __init__(self, host: str, port: int, *, timeout: float = 2.0) -> None:
        super().__init__()
        self._address = (host, port)
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._io = threading.Lock()

    def scan(self) -> list[int]:
        """Addresses that acknowledge on the remote bus."""
        return list(self._call(_OP_SCAN, 0, b"", 0))

    def writeto(
        self,
        address: int,
        buffer: ReadableBuffer,
        *,
        start: int = 0,
        end: int | None = None,
        stop: bool = True,
    ) -> None:
        """Write ``buffer[start:end]`` to ``address``."""
        data = bytes(buffer[start:end])
        self._call(_OP_WRITE, address, data, len(data))

    def readfrom_into(
        self,
        address: int,
        buffer: WriteableBuffer,
        *,
        start: int = 0,
        end: int | None = None,
        stop: bool = True,
    ) -> None:
        """Fill ``buffer[start:end]`` from ``address``."""
        stop_at = len(buffer) if end is None else end
        buffer[start:stop_at] = self._call(_OP_READ, address, b"", stop_at - start)

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
        """Write then read as one transaction on the remote bus."""
        stop_at = len(buffer_in) if in_end is None else in_end
        payload = (stop_at - in_start).to_bytes(2, "big") + bytes(buffer_out[out_start:out_end])
        buffer_in[in_start:stop_at] = self._call(_OP_TRANSFER, address, payload, len(payload))

    def deinit(self) -> None:
        """Close the connection and release the lock; a later call reconnects."""
        with self._io:
            self._drop()
        self.unlock()

    def _call(self, op: bytes, address: int, payload: bytes, length: int) -> bytes:
        request = op + bytes([address & 0x7F]) + length.to_bytes(2, "big") + payload
        with self._io:
            try:
                sock = self._connect()
                sock.sendall(request)
                head = self._receive(sock, 3)
                body = self._receive(sock, int.from_bytes(head[1:], "big"))
            except OSError:
                self._drop()
                raise
        if head[0] == _STATUS_NACK:
            raise OSError(
                errno.EREMOTEIO, f"NACK from {address:#04x}: {body.decode(errors='replace')}"
            )
        if head[0] != _STATUS_OK:
            raise ValueError(f"I2C server rejected the request: {body.decode(errors='replace')}")
        return body

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=self._timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._sock

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _receive(sock: socket.socket, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionResetError("I2C server closed the connection")
            data += chunk
        return bytes(data)


class LinuxI2C(_BusLock):
    """An `I2CBus` on ``/dev/i2c-N``, through Blinka's generic Linux I2C (Adafruit_PureIO smbus).

    It is the backend ``busio.I2C`` itself uses on a Raspberry Pi, but opened by bus number:
    ``busio.I2C`` only accepts board pins, so it cannot reach a second bus (``/dev/i2c-3`` from a
    ``dtoverlay=i2c-gpio``). Not exercised by the test suite: CI has no i2c-dev.
    """

    def __init__(self, bus_number: int) -> None:
        super().__init__()
        # Imported here so that importing this module never touches Linux-only modules.
        backend = importlib.import_module("adafruit_blinka.microcontroller.generic_linux.i2c")
        self._i2c: Any = backend.I2C(bus_number)

    def scan(self) -> list[int]:
        """Addresses that acknowledge a quick write or a byte read (0x08..0x77)."""
        found: list[int] = self._i2c.scan()
        return found

    def writeto(
        self, address: int, buffer: ReadableBuffer, *, start: int = 0, end: int | None = None
    ) -> None:
        """Write ``buffer[start:end]`` to ``address``."""
        self._i2c.writeto(address, buffer, start=start, end=end)

    def readfrom_into(
        self, address: int, buffer: WriteableBuffer, *, start: int = 0, end: int | None = None
    ) -> None:
        """Fill ``buffer[start:end]`` from ``address``."""
        self._i2c.readfrom_into(address, buffer, start=start, end=end)

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
        """Write then read with a repeated start (one I2C_RDWR ioctl)."""
        self._i2c.writeto_then_readfrom(
            address,
            buffer_out,
            buffer_in,
            out_start=out_start,
            out_end=out_end,
            in_start=in_start,
            in_end=in_end,
        )

    def deinit(self) -> None:
        """Close the i2c-dev file handle."""
        smbus = getattr(self._i2c, "_i2c_bus", None)
        if smbus is not None:
            smbus.close()
        self.unlock()


_LINUX_BUS = re.compile(r"/dev/i2c-(\d+)")


def open_i2c_bus(spec: str) -> I2CBus:
    """Open the bus a config string names: ``"/dev/i2c-N"`` or ``"tcp://HOST:PORT"``.

    Raises ``ValueError`` for any other form. A TCP bus connects lazily, on the first
    transaction; a Linux bus opens its device file now (``RuntimeError`` if it does not exist).
    """
    if match := _LINUX_BUS.fullmatch(spec):
        return LinuxI2C(int(match.group(1)))
    if spec.startswith("tcp://"):
        url = urlsplit(spec)
        try:
            port = url.port
        except ValueError:
            port = None
        if url.hostname and port and url.path in ("", "/") and not url.query:
            return RemoteI2C(url.hostname, port)
    raise ValueError(
        f"unsupported I2C bus {spec!r}: expected '/dev/i2c-N' (Linux) or 'tcp://HOST:PORT'"
        " (a simulated bus served by simulators.i2c_server)"
    )
