"""A hostile Modbus TCP server for the tests, written from the specifications, byte by byte.

Not the project's simulator and not pymodbus's server: frames are built here with `struct` from
the Modbus Messaging on TCP/IP Implementation Guide V1.0b (MBAP: transaction id, protocol id 0,
length = unit id + PDU, unit id) and the Modbus Application Protocol V1.1b3 (FC 03/04 answer:
function, byte count, registers; exception: function + 0x80, code). It serves an SDM630-like map
(float32, high word first, one value per register pair) to every unit id in ``units`` and
answers exception 0x0B (gateway target failed to respond) for the others, like a TCP-to-RS-485
gateway.

**Tracing.** Every request the server reads gets the next *serial* number, and every value of
the answer to it encodes that serial: the float32 at protocol address ``a`` of request ``s`` is
``s * 1000 + a // 2`` (exact in float32 below 2**24). Holding registers (FC 03, the SDM630's
setup table) hold the negated numbers. `served` records, per serial, which request it was and
whether the frame sent for it was *the valid answer, on time*; a test can thus trace every value
a driver returned back to the frame it came from (`trace`).

**Faults.** `script(unit_id, *faults)` queues one fault name per request of that unit (then
``ok`` again); see `FAULTS`. ``max_clients=1`` makes it a gateway that accepts a single
connection and closes any second one at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

#: Fault name -> what the server sends instead of the plain answer.
FAULTS = {
    "ok": "the valid answer",
    "wrong_function": "an FC 03 answer (the holding table) to an FC 04 request, well framed",
    "tid0_replay": "the previous answer to the same request again, with transaction id 0",
    "foreign_tid": "a valid-looking answer with a transaction id the client never sent",
    "late": "nothing now; the answer goes out just before the next answer on the connection",
    "duplicate": "the valid answer twice, in one segment",
    "byte_count_vs_length": "the right length field, a byte count two short of it",
    "short_answer": "a consistent answer carrying one register less than asked",
    "huge_length": "a length field of 65535",
    "short_length": "a length field of 1",
    "protocol": "protocol id 1",
    "rst": "half the answer, then a TCP reset",
    "fin_mid_frame": "half the answer, then the connection closed",
    "fin": "the connection closed at once, no answer",
    "silent": "no answer at all (the connection stays open)",
    "one_byte": "the valid answer one byte per segment",
    "noise_before": "five bytes of noise, then the valid answer, in one segment",
    "noise_after": "the valid answer, then five bytes of noise, in one segment",
    "wrong_unit": "the answer with another unit id",
    **{f"exception-{code:#04x}": f"exception {code:#04x}" for code in range(0x01, 0x0C)},
}
#: Faults after which the server closes the connection.
_CLOSING = {"rst", "fin_mid_frame", "fin"}
NOISE = bytes.fromhex("DEADBEEF00")
#: Registers whose encoded value is within float32's exact integer range.
SERIAL_BASE = 1000


@dataclass(frozen=True, slots=True)
class Served:
    """One request the server read and what it sent for it."""

    serial: int
    unit_id: int
    function: int
    address: int
    count: int
    fault: str
    #: True if the frame sent for this request was the valid answer, on time.
    valid: bool


def encode(serial: int, address: int, function: int) -> float:
    """The value served at ``address`` (an even protocol address) for request ``serial``."""
    value = float(serial * SERIAL_BASE + address // 2)
    return -value if function == 3 else value


def trace(value: float) -> tuple[int, int, bool]:
    """(serial, address, holding) that `encode` made ``value`` from; ``ValueError`` for a value
    no answer of this server ever carried."""
    if value != int(value):
        raise ValueError(f"{value} was never served")
    number = abs(int(value))
    return number // SERIAL_BASE, 2 * (number % SERIAL_BASE), value < 0


def _registers(serial: int, function: int, address: int, count: int) -> list[int]:
    words: list[int] = []
    for register in range(address - address % 2, address + count + 1, 2):
        raw = struct.pack(">f", encode(serial, register, function))
        words.extend(struct.unpack(">HH", raw))
    start = address % 2
    return words[start : start + count]


def _answer(tid: int, unit_id: int, function: int, registers: list[int]) -> bytes:
    data = struct.pack(f">{len(registers)}H", *registers)
    return struct.pack(">HHHBBB", tid, 0, 3 + len(data), unit_id, function, len(data)) + data


class HostileTcpServer:
    """See the module docstring. ``async with`` starts and stops it on an ephemeral port."""

    def __init__(
        self, *, units: Iterable[int], max_clients: int | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.units = frozenset(units)
        self.host = host
        self.port = 0
        self.max_clients = max_clients
        #: Serial (from 1) -> the request and what was sent for it.
        self.served: dict[int, Served] = {}
        #: Connections served, and connections closed at once because one was already open.
        self.accepted = 0
        self.turned_away = 0
        self._scripts: dict[int, deque[str]] = {u: deque() for u in self.units}
        #: (unit, function, address, count) -> the last valid answer to that request.
        self._last_answer: dict[tuple[int, int, int, int], bytes] = {}
        self._active = 0
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def next_serial(self) -> int:
        """The serial the next request will get."""
        return len(self.served) + 1

    def script(self, unit_id: int, *faults: str) -> None:
        """Queue ``faults`` for the next requests of ``unit_id``, one per request."""
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}")
        self._scripts[unit_id].extend(faults)

    def pending(self, unit_id: int) -> int:
        """Faults still queued for ``unit_id``."""
        return len(self._scripts[unit_id])

    def hang_up(self) -> None:
        """Close every open connection (FIN), as a device with an idle timeout does."""
        for writer in self._handlers.values():
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Close the connections rather than cancel their handlers: a cancelled handler task makes
        # asyncio's start_server callback log an error (Python 3.11).
        for writer in self._handlers.values():
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            if self.max_clients is not None and self._active >= self.max_clients:
                self.turned_away += 1
                return
            self._active += 1
            self.accepted += 1
            try:
                await self._serve(reader, writer)
            finally:
                self._active -= 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.pop(task, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held = b""  # a "late" answer, sent just before the next answer on this connection
        while True:
            tid, protocol, length, unit_id = struct.unpack(">HHHB", await reader.readexactly(7))
            function, address, count = struct.unpack(">BHH", await reader.readexactly(length - 1))
            assert protocol == 0 and length == 6, "the client sent a malformed request"
            serial = self.next_serial
            if unit_id not in self.units:
                fault = "exception-0x0b"
            else:
                script = self._scripts[unit_id]
                fault = script.popleft() if script else "ok"
            frame = _answer(tid, unit_id, function, _registers(serial, function, address, count))
            self.served[serial] = Served(
                serial, unit_id, function, address, count, fault, fault in _VALID
            )
            if held:
                writer.write(held)
                held = b""
            if fault == "late":
                held = frame
                continue
            if fault in ("ok", "duplicate", "one_byte", "noise_after"):
                self._last_answer[unit_id, function, address, count] = frame
            await self._send(writer, fault, frame, serial)
            if fault in _CLOSING:
                return

    async def _send(
        self, writer: asyncio.StreamWriter, fault: str, frame: bytes, serial: int
    ) -> None:
        if fault in ("rst", "fin_mid_frame"):
            writer.write(frame[: len(frame) // 2])
            await writer.drain()
            if fault == "rst":
                await _reset(writer)
            return
        if fault == "one_byte":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for index in range(len(frame)):
                writer.write(frame[index : index + 1])
                await writer.drain()
                await _loop_turns(3)  # let the client's reader take this byte on its own
            return
        if fault in ("silent", "fin"):
            return
        served = self.served[serial]
        last = self._last_answer.get(
            (served.unit_id, served.function, served.address, served.count)
        )
        wire = _CORRUPTIONS[fault](frame, served, last)
        writer.write(wire)
        await writer.drain()


def _exception(code: int) -> Corruption:
    def build(frame: bytes, served: Served, last: bytes | None) -> bytes:
        return frame[:4] + struct.pack(">HBBB", 3, frame[6], frame[7] | 0x80, code)

    return build


def _wrong_function(frame: bytes, served: Served, last: bytes | None) -> bytes:
    other = 3 if served.function == 4 else 4
    registers = _registers(served.serial, other, served.address, served.count)
    return _answer(int.from_bytes(frame[:2]), frame[6], other, registers)


def _tid0_replay(frame: bytes, served: Served, last: bytes | None) -> bytes:
    if last is None:
        raise AssertionError("tid0_replay needs an earlier answer to the same request")
    return b"\x00\x00" + last[2:]


def _short_answer(frame: bytes, served: Served, last: bytes | None) -> bytes:
    short = frame[9:-2]
    header = struct.pack(">HBBB", 3 + len(short), frame[6], frame[7], len(short))
    return frame[:4] + header + short


#: (valid frame, its request, the previous valid answer to the same request) -> what is sent.
Corruption = Callable[[bytes, Served, "bytes | None"], bytes]
_CORRUPTIONS: dict[str, Corruption] = {
    "ok": lambda frame, _s, _l: frame,
    "wrong_function": _wrong_function,
    "tid0_replay": _tid0_replay,
    "foreign_tid": lambda frame, _s, _l: (
        struct.pack(">H", int.from_bytes(frame[:2]) ^ 0x8000) + frame[2:]
    ),
    "duplicate": lambda frame, _s, _l: frame + frame,
    "byte_count_vs_length": lambda frame, _s, _l: frame[:8] + bytes([frame[8] - 2]) + frame[9:],
    "short_answer": _short_answer,
    "huge_length": lambda frame, _s, _l: frame[:4] + b"\xff\xff" + frame[6:],
    "short_length": lambda frame, _s, _l: frame[:4] + b"\x00\x01" + frame[6:],
    "protocol": lambda frame, _s, _l: frame[:2] + b"\x00\x01" + frame[4:],
    "noise_before": lambda frame, _s, _l: NOISE + frame,
    "noise_after": lambda frame, _s, _l: frame + NOISE,
    "wrong_unit": lambda frame, _s, _l: frame[:6] + bytes([(frame[6] + 1) % 256]) + frame[7:],
    **{f"exception-{code:#04x}": _exception(code) for code in range(0x01, 0x0C)},
}


#: Faults whose frame is the valid answer to its request, sent on time.
_VALID = {"ok", "duplicate", "one_byte", "noise_after"}


async def _loop_turns(turns: int) -> None:
    """Yield to the event loop ``turns`` times: the client runs in the same loop, so this lets
    it read what was just sent before the server sends more (counted turns, not a sleep)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), once the client took the bytes sent:
    Linux discards received-but-unread data when a reset arrives."""
    await _loop_turns(5)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
