"""A simulated RS-485 line: several Modbus RTU units on one PTY pair, with baud-rate timing.

Why not pymodbus's server: its RTU server answers as soon as the request is decoded, and its
only hook on the bytes (``trace_packet``) cannot delay, drop or split a frame in time. The
timing is the point of this simulator, so framing is done here, by hand, with its own
CRC-16/Modbus: an independent second implementation that catches a driver bug instead of
mirroring it (the tests also check it against pymodbus's client and CRC).

The line: `start` creates a PTY pair with `os.openpty`; the gateway opens the slave path
(`path`) with pyserial as it would open ``/dev/ttyUSB0``; the simulator reads and writes the
master side. PTYs ignore the baud rate, so the timing is simulated:

- a request is complete on the wire ``len * 11 / baud`` after its first byte arrived, and a unit
  sees its end t3.5 later;
- the unit then takes ``turnaround`` (plus an injected ``delay``) to react;
- its answer takes ``len * 11 / baud`` on the wire, and is written to the PTY in one piece at the
  moment its last byte would have arrived. The gateway therefore never gets an answer earlier than
  a real line could deliver it.

With ``baudrate=None`` the wire time and t3.5 are zero (only ``turnaround`` and faults remain),
for fault tests that need many transactions quickly.

**A master at the wrong baud rate gets no answer.** On a real line, a unit receiving a frame sent
at another baud rate sees framing errors and noise, never a valid frame, and stays silent. A PTY
passes the bytes whatever the speed, but it keeps the speed the gateway configured: pyserial
sets the termios speed on the slave side even on a PTY, and the PTY master reports it. So, for a
timed line, a request that arrives while the gateway's side is set to another baud rate is
treated as noise: counted in `wrong_speed_requests`, not answered. (Parity cannot be modelled the
same way: Linux PTYs force 8 data bits without parity, whatever the client asks.)

Units answer one request at a time, in arrival order, as one slow device on a real line holds
everyone up. Requests with a bad CRC are ignored (as real devices do); requests for absent units
get no answer.

**Fault injection** (per unit, settable while running, every injected fault counted in
`injected`): ``drop`` (no answer), ``delay`` (answer ``delay`` s late), ``crc`` (CRC bytes
corrupted), ``truncate`` (the answer cut before its CRC), ``garbage`` (noise of the answer's length
that does not start with the unit's address), ``exception`` (exception ``code`` 0x01-0x0B). A fault
set with `set_fault` applies to every request; `schedule` queues one-shot faults that are used
first, one per request (a None entry in the schedule is one normal answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import struct
import termios
import tty
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

from simulators.meters import ModbusDeviceModel, RegisterTable

_log = logging.getLogger(__name__)

FaultKind = Literal["drop", "delay", "crc", "truncate", "garbage", "exception"]
BITS_PER_CHAR = 11
_READ_HOLDING, _READ_INPUT = 0x03, 0x04
_ILLEGAL_FUNCTION, _ILLEGAL_ADDRESS, _ILLEGAL_VALUE = 0x01, 0x02, 0x03


def crc16_modbus(data: bytes) -> int:
    """CRC-16/Modbus, bit by bit (reflected poly 0xA001, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame(body: bytes) -> bytes:
    """``body`` plus its CRC, low byte first."""
    return body + crc16_modbus(body).to_bytes(2, "little")


def t35_seconds(baudrate: int | None) -> float:
    """The inter-frame gap at ``baudrate`` (3.5 characters; 1.75 ms above 19200 baud)."""
    if baudrate is None:
        return 0.0
    return 0.00175 if baudrate > 19_200 else 3.5 * BITS_PER_CHAR / baudrate


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault to inject; ``delay`` is for ``delay`` faults, ``code`` for ``exception``."""

    kind: FaultKind
    delay: float = 0.0
    code: int = 0

    def __post_init__(self) -> None:
        if self.kind == "exception" and not 0x01 <= self.code <= 0x0B:
            raise ValueError(f"exception code must be 0x01..0x0B, got {self.code:#x}")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")

    @property
    def label(self) -> str:
        """The counter key: the kind, or ``exception-0xNN``."""
        return f"exception-{self.code:#04x}" if self.kind == "exception" else self.kind


@dataclass(slots=True)
class _Unit:
    model: ModbusDeviceModel
    fault: Fault | None = None
    queue: deque[Fault | None] = field(default_factory=deque)
    injected: Counter[str] = field(default_factory=Counter)
    requests: int = 0


class ModbusRtuSimulator:
    """Serve ``devices`` (unit id → model) as one RS-485 line on a PTY; see the module docstring.

    Usable as ``async with``. ``baudrate`` (or None for untimed), ``turnaround`` in seconds.
    """

    def __init__(
        self,
        *,
        devices: Mapping[int, ModbusDeviceModel],
        baudrate: int | None = 9600,
        turnaround: float = 0.010,
        seed: int = 0,
    ) -> None:
        for unit_id in devices:
            if not 1 <= unit_id <= 247:
                raise ValueError(f"unit id must be 1..247, got {unit_id}")
        if baudrate is not None and baudrate <= 0:
            raise ValueError(f"baudrate must be positive, got {baudrate}")
        if turnaround < 0:
            raise ValueError("turnaround must be >= 0")
        self.baudrate = baudrate
        self.turnaround = turnaround
        self._units = {unit_id: _Unit(model=model) for unit_id, model in devices.items()}
        self._rng = random.Random(seed)
        self._master: int | None = None
        self._slave: int | None = None
        self._path = ""
        self._rx = bytearray()
        self._first_byte_at = 0.0
        self._last_byte_at = 0.0
        self._rx_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Request frames ignored because of a bad CRC or an unknown shape.
        self.bad_requests = 0
        #: Answers written (including faulty ones), for benchmarks.
        self.answers = 0
        #: Requests ignored because the gateway's port was set to another baud rate.
        self.wrong_speed_requests = 0

    @property
    def path(self) -> str:
        """The serial device the gateway opens (the PTY slave), once started."""
        return self._path

    def wire_time(self, n_bytes: int) -> float:
        """Seconds ``n_bytes`` take on this line (0 when untimed)."""
        return 0.0 if self.baudrate is None else n_bytes * BITS_PER_CHAR / self.baudrate

    def request_count(self, unit_id: int) -> int:
        """Requests addressed to ``unit_id`` and understood, faulty answers included."""
        return self._units[unit_id].requests

    def injected(self, unit_id: int) -> Counter[str]:
        """Faults applied to ``unit_id`` so far, by `Fault.label` (a copy)."""
        return Counter(self._units[unit_id].injected)

    def set_fault(self, unit_id: int, fault: Fault | None) -> None:
        """Apply ``fault`` to every request to ``unit_id`` until set to None."""
        self._units[unit_id].fault = fault

    def schedule(self, unit_id: int, faults: Iterable[Fault | None]) -> None:
        """Queue one-shot faults for the next requests to ``unit_id`` (used before `set_fault`'s);
        a None entry is one normal answer."""
        self._units[unit_id].queue.extend(faults)

    def scheduled(self, unit_id: int) -> int:
        """One-shot faults not used yet."""
        return len(self._units[unit_id].queue)

    async def start(self) -> None:
        """Create the PTY pair and start answering."""
        if self._task is not None:
            raise RuntimeError("simulator already started")
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: bytes pass unchanged
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._path = os.ttyname(slave)
        asyncio.get_running_loop().add_reader(master, self._readable)
        self._task = asyncio.create_task(self._serve(), name=f"rtu-sim {self._path}")
        _log.info(
            "Modbus RTU simulator on %s (%s baud, units %s)",
            self._path,
            self.baudrate or "untimed",
            sorted(self._units),
        )

    async def stop(self) -> None:
        """Stop answering and close the PTY; idempotent, never raises."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._master is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
        if self._slave is not None:
            os.close(self._slave)
        self._master = self._slave = None

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

    def _readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO while no process has the slave open: nothing to read
            return
        now = asyncio.get_running_loop().time()
        if not self._rx:
            self._first_byte_at = now
        self._rx += data
        self._last_byte_at = now
        self._rx_event.set()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            request = self._take_request(loop)
            if request is None:
                self._rx_event.clear()
                silence = max(t35_seconds(self.baudrate), 0.005)
                wake = self._last_byte_at + silence if self._rx else None
                try:
                    async with asyncio.timeout_at(wake):
                        await self._rx_event.wait()
                except TimeoutError:
                    pass
                continue
            body, arrived = request
            await self._answer(loop, body, arrived)

    def _take_request(self, loop: asyncio.AbstractEventLoop) -> tuple[bytes, float] | None:
        """The next complete request (without CRC) and when its first byte arrived, or None."""
        buf = self._rx
        length = _request_length(bytes(buf))
        if length is None or len(buf) < length:
            # Unknown or incomplete: drop it once the line has been silent for t3.5 (or 5 ms),
            # as a real unit restarts its receiver after a broken frame.
            silence = max(t35_seconds(self.baudrate), 0.005)
            if buf and loop.time() - self._last_byte_at >= silence:
                self.bad_requests += 1
                buf.clear()
            return None
        raw = bytes(buf[:length])
        arrived = self._first_byte_at
        del buf[:length]
        if buf:
            self._first_byte_at = loop.time()
        if crc16_modbus(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
            self.bad_requests += 1
            buf.clear()
            return None
        if not self._client_speed_matches():
            self.wrong_speed_requests += 1
            buf.clear()
            return None
        return raw[:-2], arrived

    def _client_speed_matches(self) -> bool:
        """False if the gateway's side of the PTY is set to a baud rate other than the line's
        (see the module docstring); True for an untimed line or a speed termios cannot name."""
        expected = getattr(termios, f"B{self.baudrate}", None) if self.baudrate else None
        if expected is None or self._master is None:
            return True
        try:
            _iflag, _oflag, _cflag, _lflag, ispeed, ospeed, _cc = termios.tcgetattr(self._master)
        except termios.error:
            return True
        # ispeed 0 means "the output speed" (POSIX); the client sends and receives at it.
        return bool(ospeed == expected and ispeed in (0, expected))

    async def _answer(self, loop: asyncio.AbstractEventLoop, body: bytes, arrived: float) -> None:
        unit = self._units.get(body[0])
        if unit is None:
            return  # absent unit (or broadcast): the line stays silent
        unit.requests += 1
        fault = unit.queue.popleft() if unit.queue else unit.fault
        answer = frame(_respond(unit.model, body))
        delay = 0.0
        if fault is not None:
            unit.injected[fault.label] += 1
            if fault.kind == "drop":
                return
            answer, delay = self._apply(fault, answer)
        request_end = arrived + self.wire_time(len(body) + 2)
        ready = request_end + t35_seconds(self.baudrate) + self.turnaround + delay
        done = ready + self.wire_time(len(answer))
        pause = done - loop.time()
        if pause > 0:
            await asyncio.sleep(pause)
        self._write(answer)
        self.answers += 1

    def _apply(self, fault: Fault, answer: bytes) -> tuple[bytes, float]:
        if fault.kind == "delay":
            return answer, fault.delay
        if fault.kind == "crc":
            return answer[:-2] + bytes([answer[-2] ^ 0xFF, answer[-1] ^ 0x5A]), 0.0
        if fault.kind == "truncate":
            return answer[: max(2, len(answer) - 3)], 0.0
        if fault.kind == "garbage":
            noise = bytearray(self._rng.randbytes(len(answer)))
            if noise[0] == answer[0]:
                noise[0] ^= 0xFF
            return bytes(noise), 0.0
        # exception
        return frame(bytes([answer[0], answer[1] | 0x80, fault.code])), 0.0

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        try:
            os.write(self._master, data)
        except OSError:
            _log.debug("RTU simulator: write to %s failed", self._path, exc_info=True)


#: Stands for "cannot tell the length yet" in `_request_length`.
_UNKNOWN_YET = 1 << 16


def _request_length(buf: bytes) -> int | None:
    """Length of the request frame at the start of ``buf``: a number (possibly `_UNKNOWN_YET`,
    larger than any frame, while the bytes that tell are missing), or None for an unknown shape."""
    if len(buf) < 2:
        return _UNKNOWN_YET
    function = buf[1]
    if function in (1, 2, 3, 4, 5, 6):
        return 8
    if function in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else _UNKNOWN_YET
    return None


def _respond(model: ModbusDeviceModel, body: bytes) -> bytes:
    """The answer PDU (with unit id, without CRC) to the request ``body``."""
    unit_id, function = body[0], body[1]
    if function not in (_READ_HOLDING, _READ_INPUT):
        return bytes([unit_id, function | 0x80, _ILLEGAL_FUNCTION])
    address, count = struct.unpack(">HH", body[2:6])
    if not 1 <= count <= 125 or count > model.max_registers_per_read:
        return bytes([unit_id, function | 0x80, _ILLEGAL_VALUE])
    table: RegisterTable = "input" if function == _READ_INPUT else "holding"
    layout = model.layout()
    if table not in layout:
        return bytes([unit_id, function | 0x80, _ILLEGAL_ADDRESS])
    start, size = layout[table]
    if address < start or address + count > start + size:
        return bytes([unit_id, function | 0x80, _ILLEGAL_ADDRESS])
    model.refresh()
    image = model.registers(table)
    words = image[address - start : address - start + count]
    return bytes([unit_id, function, 2 * count]) + struct.pack(f">{count}H", *words)
