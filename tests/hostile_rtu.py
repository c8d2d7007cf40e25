"""A hostile Modbus RTU line for tests and benches: byte-level slaves on a PTY pair.

Written for the tests from the protocol documents (Modbus over serial line V1.02: framing, CRC,
t3.5; Modbus application protocol V1.1b3: FC 03/04 and exception answers), not from the
gateway's simulator or pymodbus, so a driver bug is not mirrored here.

The gateway opens the PTY slave (`HostileLine.path`) with pyserial; this side reads and writes
the master. Each unit answers its own requests in arrival order, in its own task (devices on an
RS-485 line are independent: a slow one does not stop its neighbours), with wire timing at the
baud rate: a request is on the wire ``8 * 11 / baud`` after its first byte arrived, the unit
reacts ``t3.5 + turnaround`` later, and its answer is written when its last byte would have
arrived (a PTY itself carries bytes instantly).

**Traceable values.** Every request understood gets the next serial number. Input register ``r``
of the answer to request ``s`` holds half of the float32 ``s * 1000 + r`` (high word at even
``r``, ABCD), so each float32 point decodes to ``serial * 1000 + address`` and a test can trace
every value back to the request it answered (`trace`). Holding registers (FC 03) hold ``s * 1000
+ r + 500``: an FC 03 answer taken for FC 04 shows.

**Actions** (one per request, from the unit's script; requests whose (address, count) is not in
the unit's ``plan`` are answered normally without consuming the script: those are the gateway's
sync reads). ``ok``; ``drop``; ``crc`` (CRC bytes flipped); ``truncate`` (cut before the CRC);
``garbage`` (random bytes of the answer's length, none equal to a unit id); ``noise`` (a normal
answer, then a burst of random bytes after a short gap); ``pause`` (the answer with a 100 ms
pause inside); ``other_unit`` (the answer with another unit id, ``arg``); ``wrong_function``
(an FC 03 answer of the same size); ``byte_count`` (a consistent answer one register short);
``byte_length`` (byte count for N registers, data for N - 1, CRC over what is sent);
``late`` (the answer ``arg`` s after the request, the unit busy meanwhile); ``duplicate`` (the
answer twice, t3.5 apart); ``exception`` (exception code ``arg``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import time
import tty
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import serial

BITS_PER_CHAR = 11
PAUSE_INSIDE_FRAME = 0.100
NOISE_GAP = 0.002


def crc16(data: bytes) -> int:
    """CRC-16/Modbus, bit by bit (V1.02 6.2.2: poly 0xA001 reflected, init 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def framed(body: bytes) -> bytes:
    """``body`` and its CRC, low byte first."""
    return body + crc16(body).to_bytes(2, "little")


def encoded(serial_no: int, address: int, *, holding: bool = False) -> float:
    """The float32 value a point at ``address`` carries in the answer to request ``serial_no``."""
    return float(serial_no * 1000 + address + (500 if holding else 0))


def trace(value: float) -> tuple[int, int]:
    """(request serial, register address) of a value served by `HostileLine`."""
    number = round(value)
    assert number == value, f"{value!r} is not a value this line served"
    return divmod(number, 1000)


def registers(serial_no: int, address: int, count: int, *, holding: bool = False) -> list[int]:
    """The registers ``address .. address + count - 1`` of the answer to ``serial_no``."""
    words = []
    for r in range(address, address + count):
        pair = r - r % 2
        hi, lo = struct.unpack(">HH", struct.pack(">f", encoded(serial_no, pair, holding=holding)))
        words.append(hi if r % 2 == 0 else lo)
    return words


@dataclass(frozen=True, slots=True)
class Action:
    """One scripted behaviour (see the module docstring); ``arg`` is the unit id, delay or code."""

    kind: str
    arg: float = 0

    @property
    def label(self) -> str:
        """The kind, or ``exception-0xNN``."""
        return f"exception-{int(self.arg):#04x}" if self.kind == "exception" else self.kind


@dataclass(frozen=True, slots=True)
class Served:
    """One request the line understood, and what was done with it."""

    serial: int
    unit: int
    function: int
    address: int
    count: int
    received: float
    action: str


@dataclass
class HostileUnit:
    """One unit: its script and which reads are its plan (others are answered normally)."""

    script: list[Action] = field(default_factory=list)
    plan: frozenset[tuple[int, int]] | None = None
    turnaround: float = 0.005
    queue: asyncio.Queue[tuple[bytes, float]] | None = None
    applied: Counter[str] = field(default_factory=Counter)


class Transceiver:
    """An RS-485 transceiver whose driver enable follows the master's RTS line (a MAX485 with
    DE and /RE tied to RTS): the master's bytes reach the bus only while RTS is at ``tx_level``
    for their whole wire time, and a unit's answer survives only if RTS was back at the other
    level when it started (else the two drivers collide). ``events`` is the record of the port
    (`RtsRecordingPort` appends to it: ``(time, "rts", level)`` and ``(time, "write", bytes)``).
    """

    def __init__(self, *, tx_level: bool = True) -> None:
        self.events: list[tuple[float, str, Any]] = []
        self.tx_level = tx_level
        self.lost_requests = 0
        self.collisions = 0

    def rts_at(self, t: float) -> bool:
        level = True  # pyserial asserts RTS when it opens a port
        for when, what, value in self.events:
            if what == "rts" and when <= t:
                level = bool(value)
        return level

    def sent_ok(self, write_time: float, wire: float) -> bool:
        """True if RTS was at the transmit level throughout ``[write_time, write_time + wire]``."""
        if self.rts_at(write_time) != self.tx_level:
            return False
        return all(
            bool(value) == self.tx_level
            for when, what, value in self.events
            if what == "rts" and write_time < when < write_time + wire
        )

    def last_write(self, before: float) -> float | None:
        times = [when for when, what, _ in self.events if what == "write" and when <= before]
        return times[-1] if times else None


class RtsRecordingPort(serial.Serial):
    """A real pyserial port (a PTY here) that records what a PTY cannot carry: the RTS line and
    the kernel RS-485 settings (``TIOCSRS485``). Everything else is pyserial's own code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[tuple[float, str, Any]] = []
        self.rs485_applied: list[Any] = []
        super().__init__(*args, **kwargs)

    def _update_rts_state(self) -> None:
        self.events.append((time.monotonic(), "rts", self._rts_state))

    def _set_rs485_mode(self, rs485_settings: Any) -> None:
        self.rs485_applied.append(rs485_settings)

    def write(self, data: bytes) -> int:
        self.events.append((time.monotonic(), "write", bytes(data)))
        written: int = super().write(data)
        return written


class HostileLine:
    """``units`` (unit id -> `HostileUnit`) on one PTY pair at ``baudrate``; ``echo`` writes back
    every byte the master sends (an adapter hearing itself); ``transceiver`` models direction
    control; ``late`` is the range of ``late`` delays and ``pause_inside`` the silence inside a
    ``pause`` answer, in seconds; ``seed`` makes delays, noise and garbage repeatable. Use as
    ``async with``."""

    def __init__(
        self,
        *,
        units: Mapping[int, HostileUnit],
        baudrate: int = 9600,
        seed: int = 0,
        echo: bool = False,
        late: tuple[float, float] = (1.5, 2.2),
        pause_inside: float = PAUSE_INSIDE_FRAME,
        transceiver: Transceiver | None = None,
    ) -> None:
        self.units = dict(units)
        self.baudrate = baudrate
        self.echo = echo
        self.late = late
        self.pause_inside = pause_inside
        self.transceiver = transceiver
        self._rng = random.Random(seed)
        self._master: int | None = None
        self._slave: int | None = None
        self.path = ""
        self._rx = bytearray()
        self._first_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._serial = 0
        self._corrupt_echo = 0
        #: Every request understood, in arrival order.
        self.log: list[Served] = []
        #: Noise bytes written on purpose (``noise`` actions).
        self.noise_bytes = 0

    def wire(self, n: int) -> float:
        return n * BITS_PER_CHAR / self.baudrate

    @property
    def t35(self) -> float:
        return 0.00175 if self.baudrate > 19200 else 3.5 * BITS_PER_CHAR / self.baudrate

    def corrupt_next_echo(self) -> None:
        """Flip a byte in the echo of the next request (a collision while sending)."""
        self._corrupt_echo += 1

    def served(self, serial_no: int) -> Served:
        """The request with serial ``serial_no``."""
        return self.log[serial_no - 1]

    async def start(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.path = os.ttyname(slave)
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._readable)
        for unit_id, unit in self.units.items():
            unit.queue = asyncio.Queue()
            self._tasks.append(asyncio.create_task(self._serve(unit_id, unit), name=f"u{unit_id}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
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

    # --- receiving requests ---------------------------------------------------------------------

    def _readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return
        now = time.monotonic()
        if self.echo:
            echo = bytearray(data)
            if self._corrupt_echo:
                self._corrupt_echo -= 1
                echo[len(echo) // 2] ^= 0x10
            self._write(bytes(echo))
        if not self._rx:
            self._first_at = now
        self._rx += data
        # Cut what arrived into 8-byte FC 03/04 requests (CRC checked) for the units.
        while len(self._rx) >= 8:
            frame = bytes(self._rx[:8])
            if crc16(frame[:6]) != int.from_bytes(frame[6:], "little"):
                del self._rx[:1]  # not a request boundary: look one byte further
                continue
            del self._rx[:8]
            unit = self.units.get(frame[0])
            if unit is not None and unit.queue is not None and frame[1] in (3, 4):
                unit.queue.put_nowait((frame, self._first_at))
            self._first_at = now

    # --- answering ------------------------------------------------------------------------------

    async def _serve(self, unit_id: int, unit: HostileUnit) -> None:
        assert unit.queue is not None
        while True:
            frame, first = await unit.queue.get()
            model = self.transceiver
            if model is not None:
                await self._at(first + self.wire(8))
                written = model.last_write(first)
                if written is None or not model.sent_ok(written, self.wire(8)):
                    model.lost_requests += 1
                    continue  # the master's driver was off: nothing reached the bus
            function = frame[1]
            address, count = struct.unpack(">HH", frame[2:6])
            self._serial += 1
            serial_no = self._serial
            planned = unit.plan is None or (address, count) in unit.plan
            action = unit.script.pop(0) if planned and unit.script else Action("ok")
            served = Served(serial_no, unit_id, function, address, count, first, action.label)
            self.log.append(served)
            unit.applied[action.label] += 1
            ready = first + self.wire(8) + self.t35 + unit.turnaround
            await self._act(served, action, ready)

    async def _act(self, request: Served, action: Action, ready: float) -> None:
        """Answer ``request`` as ``action`` says; the answer starts on the wire at ``ready``."""
        answer = self._answer(request)
        kind = action.kind
        if kind == "drop":
            return
        if kind == "late":
            delay = action.arg or self._rng.uniform(*self.late)
            await self._at(request.received + delay + self.wire(len(answer)))
            self._answer_at_wire_end(answer, ready)
            return
        if kind == "pause":
            cut = len(answer) // 2
            await self._at(ready + self.wire(cut))
            self._answer_at_wire_end(answer[:cut], ready)
            await asyncio.sleep(self.pause_inside + self.wire(len(answer) - cut))
            self._write(answer[cut:])
            return
        answer = self._spoiled(request, action, answer)
        await self._at(ready + self.wire(len(answer)))
        self._answer_at_wire_end(answer, ready)
        if kind == "duplicate":
            await self._at(time.monotonic() + self.t35 + self.wire(len(answer)))
            self._answer_at_wire_end(answer, time.monotonic() - self.wire(len(answer)))
        elif kind == "noise":
            burst = bytes(self._rng.randrange(256) for _ in range(self._rng.randint(6, 16)))
            await self._at(time.monotonic() + NOISE_GAP + self.wire(len(burst)))
            self.noise_bytes += len(burst)
            self._write(burst)

    def _answer(self, request: Served, *, function: int | None = None) -> bytes:
        """The valid answer to ``request`` (as another ``function`` reads it, if given)."""
        function = function or request.function
        count = request.count
        words = registers(request.serial, request.address, count, holding=function == 3)
        body = bytes([request.unit, function, 2 * count]) + struct.pack(f">{count}H", *words)
        return framed(body)

    def _spoiled(self, request: Served, action: Action, answer: bytes) -> bytes:
        """``answer`` as the actions that change its bytes (not its timing) make it."""
        unit, function, count = request.unit, request.function, request.count
        data = answer[3:-2]
        allowed = [b for b in range(256) if b not in self.units]
        spoilers: dict[str, Callable[[], bytes]] = {
            "crc": lambda: answer[:-2] + bytes([answer[-2] ^ 0xFF, answer[-1] ^ 0x5A]),
            "truncate": lambda: answer[:-3],
            "garbage": lambda: bytes(self._rng.choice(allowed) for _ in answer),
            "other_unit": lambda: framed(bytes([int(action.arg)]) + answer[1:-2]),
            "wrong_function": lambda: self._answer(request, function=3 if function == 4 else 4),
            "byte_count": lambda: framed(bytes([unit, function, 2 * count - 2]) + data[:-2]),
            "byte_length": lambda: framed(bytes([unit, function, 2 * count]) + data[:-2]),
            "exception": lambda: framed(bytes([unit, function | 0x80, int(action.arg)])),
        }
        spoil = spoilers.get(action.kind)
        return spoil() if spoil is not None else answer

    def _answer_at_wire_end(self, data: bytes, started: float) -> None:
        model = self.transceiver
        if model is not None and model.rts_at(started) == model.tx_level:
            model.collisions += 1
            return  # the master still drives the bus: the answer is destroyed
        self._write(data)

    async def _at(self, when: float) -> None:
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._master, data)


def recording_opener(
    model: Transceiver, ports: list[RtsRecordingPort] | None = None
) -> Callable[..., RtsRecordingPort]:
    """A `drivers.modbus.line.ModbusLine` ``opener`` whose ports record into ``model``."""

    def opener(url: str, **options: Any) -> RtsRecordingPort:
        port = RtsRecordingPort(**options)
        port.events = model.events
        port.port = url
        if ports is not None:
            ports.append(port)
        return port

    return opener


def script(actions: Iterable[Action | str]) -> list[Action]:
    """Actions from a mix of `Action` and kind names."""
    return [a if isinstance(a, Action) else Action(a) for a in actions]
