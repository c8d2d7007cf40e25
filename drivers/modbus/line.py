"""One RS-485 line (or an RTU-over-TCP converter): the serial port, its lock and its timing.

Why an object per line: every device on an RS-485 line shares one serial port, and RTU answers
carry no transaction id, so only one transaction may be on the wire at a time and the line must be
quiet for the inter-frame gap between frames. The gateway builds one `ModbusLine` per configured
port (`gateway.registry.BusRegistry`, keyed on the port path) and hands it to the driver of every
device on that port; the scheduler runs one task per port, so devices are polled in turn. The
line's lock makes the one-transaction rule hold even if something else (``gateway read``) uses it.

**Timing.** Before it sends a request, the line waits until the line has been silent for ``t3.5 +
pause``, counted from the end of the previous transaction *and* from the last byte received (a
duplicate or late answer still arriving is waited out, then judged and flushed). The answer
deadline is the request's and the answer's own time on the wire at the baud rate plus the
device's ``response_timeout``, so a long answer at 9600 baud is never cut off.

**Which answer is ours** (`drivers.modbus.rtu.parse_read_answer`): the frame with our unit, our
function (or its exception), byte count ``2N`` and a right CRC, found anywhere in what arrived,
and not complete before it physically could be (request and answer on the wire at the baud
rate). What precedes it is skipped and counted on the line: noise bytes, frames of other units,
late answers and duplicates. Without a valid answer, one `DeviceError` per transaction:

- nothing (or only late answers of others) before the deadline → `DeviceTimeout` ("timeout");
- a frame with our header and a wrong CRC → `DecodeError` ("crc");
- our header, then silence for the missing bytes' wire time plus ``frame_silence`` →
  ``truncated``; bytes that are no frame of ours by the deadline → ``garbage``;
- a valid frame of our unit for another function → ``wrong_function``; our header with an
  impossible byte count, one that disagrees with the frame's length, or a valid answer of
  another size that no earlier request explains → ``byte_count``; a valid answer from another
  unit that has no reason to speak → ``wrong_unit``;
- with ``echo``, anything but our own request read back first → ``echo``;
- an exception answer: 06 → `DeviceBusy`, any other code → `DeviceRejected` (``exception-0xNN``).

A fault is judged once the line has gone quiet (``frame_silence``), so a valid answer arriving
behind a broken frame still wins; then the line waits for silence again, and what arrives
meanwhile is judged and dropped before the next request.

**Stale answers** (RTU has no transaction id). After a timeout or a decode fault with unit U,
the line expects that request's answer may still come, for ``LATE_FACTOR * response_timeout``
(the field case: answers 1.5-2.2 s after the request with a 1 s timeout). While it is expected,
a frame of that shape from U is ``stale`` (counted for U, skipped; it never fails another unit's
transaction), and the line never sends U a request whose answer would look the same: it first
sends a **sync read** (same function and address, a register count no outstanding request has),
whose answer proves U has finished with the old request (units answer in order); then the real
request follows. A copy of a unit's last answer, byte for byte, is ``stale`` too (duplicates).
The residual limit: a copy of an answer from a unit that had no failure, arriving after the next
request of the same shape to the same unit and no sooner than that request's answer could, looks
exactly like the answer; RTU framing cannot tell them apart.

**RS-485 adapters.** ``echo``: the adapter hears its own transmission; the request is read back
byte for byte before the answer. ``rts``: ``"none"`` (the adapter switches direction itself),
``"kernel"`` (the serial driver drives RTS, Linux TIOCSRS485 via pyserial's ``rs485_mode``),
``"software"`` (RTS asserted before the write and released once the request's wire time has
passed and the driver's queue is empty; fine up to 19200 baud, where the unit's own t3.5 covers
the event loop's latency).

Silence, not t3.5, ends a broken frame: USB-RS485 adapters deliver bytes in chunks up to 16 ms
apart (FTDI latency timer), so ``frame_silence`` defaults to ``max(t3.5, 20 ms)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import serial
import serial.rs485

from drivers.modbus.planner import ReadRequest
from drivers.modbus.profiles import RegisterKind
from drivers.modbus.rtu import (
    FAULT_VERDICTS,
    READ_HOLDING,
    READ_INPUT,
    Expected,
    Parsed,
    Verdict,
    char_time,
    parse_read_answer,
    read_request,
    read_response_bytes,
    sort_leftovers,
    t35,
    wire_time,
)
from gateway.errors import (
    DecodeError,
    DeviceBusy,
    DeviceError,
    DeviceRejected,
    DeviceTimeout,
    exception_fault,
)

_log = logging.getLogger(__name__)

#: Modbus exception code "server device busy".
EXCEPTION_BUSY = 0x06
#: Lower bound on the silence that ends a broken frame (see the module docstring).
MIN_FRAME_SILENCE = 0.020
#: A failed request's answer is expected for this many response timeouts after the failure.
LATE_FACTOR = 2.0
#: The longest RTU frame (256 bytes), for bounds on waiting for silence.
MAX_FRAME_BYTES = 256

#: Who switches an RS-485 transceiver between sending and receiving (see the module docstring).
RtsControl = Literal["none", "kernel", "software"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialSettings:
    """Where and how to open the line.

    ``port`` is a device path (``/dev/ttyUSB0``, a PTY) or a pyserial URL; RTU over TCP uses
    ``socket://HOST:PORT``. ``baudrate`` sets the timing; for RTU over TCP the converter's serial
    side does the timing and ``baudrate`` is ``None`` (no gap is enforced, only ``pause``).
    ``echo``, ``rts`` and ``rts_invert`` describe the RS-485 adapter (module docstring);
    ``rts_invert`` releases RTS while sending instead of asserting it.
    """

    port: str
    baudrate: int | None = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    echo: bool = False
    rts: RtsControl = "none"
    rts_invert: bool = False


def _serial_for_url(url: str, **options: Any) -> Any:
    return serial.serial_for_url(url, do_not_open=True, **options)


class _Inbox:
    """Bytes received and not judged yet, with the loop time each chunk arrived."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._stamps: list[tuple[int, float]] = []  # (end index of a chunk, arrival time)

    def add(self, chunk: bytes, now: float) -> None:
        self.data += chunk
        self._stamps.append((len(self.data), now))

    def drop(self, n: int) -> None:
        """Forget the first ``n`` bytes."""
        del self.data[:n]
        self._stamps = [(end - n, t) for end, t in self._stamps if end - n > 0]

    def arrived(self, index: int) -> float:
        """When byte ``index`` arrived."""
        for end, t in self._stamps:
            if index < end:
                return t
        return self._stamps[-1][1] if self._stamps else 0.0


class ModbusLine:
    """The shared serial line; see the module docstring for the timing and fault contract.

    `open`/`close` are reference-counted: each device's driver opens the line once, the port is
    opened on the first `open` and closed with the last `close`. ``pause`` is the extra quiet time
    between transactions some devices need after answering. ``opener(url, **options)`` returns an
    unopened pyserial-like port (default: ``serial.serial_for_url``); tests pass one that records
    what a PTY cannot do (the RTS line).
    """

    def __init__(
        self,
        *,
        settings: SerialSettings,
        pause: float = 0.0,
        frame_silence: float | None = None,
        opener: Callable[..., Any] | None = None,
    ) -> None:
        if pause < 0:
            raise ValueError(f"pause must be >= 0, got {pause}")
        self.settings = settings
        self.pause = pause
        self.gap = t35(settings.baudrate) if settings.baudrate else 0.0
        self.frame_silence = (
            frame_silence if frame_silence is not None else max(self.gap, MIN_FRAME_SILENCE)
        )
        self._opener = opener or _serial_for_url
        self._lock = asyncio.Lock()
        self._serial: Any = None
        self._users = 0
        self._rx = _Inbox()
        self._rx_event = asyncio.Event()
        self._last_rx = 0.0
        self._last_activity = 0.0
        self._lost: BaseException | None = None
        #: Requests sent, sync reads included, failed or not.
        self.transactions = 0
        #: Sync reads sent before a request whose answer a late one could be taken for.
        self.sync_reads = 0
        #: Late answers and duplicates recognised and skipped (also in `faults` of their unit).
        self.stale_frames = 0
        #: Other complete frames skipped: units speaking with no reason to, not blamed on anyone.
        self.stray_frames = 0
        #: Bytes of no frame skipped in front of a valid answer.
        self.noise_bytes = 0
        #: Bytes of no frame dropped before a request or with a faulty answer.
        self.discarded_bytes = 0
        self._faults: dict[int, Counter[str]] = {}
        #: unit -> (function, byte count) of a failed request -> until when its answer may come.
        self._late: dict[int, dict[tuple[int, int], float]] = {}
        #: unit -> its last answer (normal or exception), byte for byte.
        self._copies: dict[int, bytes] = {}

    def __repr__(self) -> str:
        return f"ModbusLine({self.settings.port} @ {self.settings.baudrate or 'tcp'})"

    @property
    def name(self) -> str:
        """The port (or ``socket://HOST:PORT``), as the status topic's ``lines`` names it."""
        return self.settings.port

    def faults(self, unit_id: int) -> Counter[str]:
        """Faults seen for ``unit_id`` by detailed class (`gateway.errors.FAULT_CLASSES` and
        ``exception-0xNN``), including the ones that did not fail a poll (``stale``); a copy."""
        return Counter(self._faults.get(unit_id, Counter()))

    def counters(self) -> dict[str, int]:
        """The line's own totals (see the attributes of the same names)."""
        return {
            "transactions": self.transactions,
            "sync_reads": self.sync_reads,
            "stale_frames": self.stale_frames,
            "stray_frames": self.stray_frames,
            "noise_bytes": self.noise_bytes,
            "discarded_bytes": self.discarded_bytes,
        }

    async def open(self) -> None:
        """Take a reference; opens the port on the first one. Raises `DeviceTimeout` if the
        port cannot be opened (absent adapter, wrong path, refused TCP, RTS control the port's
        driver does not support)."""
        if self._serial is None:
            self._serial = await self._open_port()
            self._lost = None
            self._rx = _Inbox()
            loop = asyncio.get_running_loop()
            loop.add_reader(self._serial.fileno(), self._readable)
        self._users += 1

    async def close(self) -> None:
        """Drop a reference; closes the port with the last one. Never raises."""
        self._users = max(0, self._users - 1)
        if self._users == 0:
            self._close_port()

    async def _open_port(self) -> Any:
        try:
            # Opening a tty is quick, but connecting a socket:// URL blocks: keep it off the loop.
            return await asyncio.to_thread(self._open_blocking)
        except _RtsUnsupported as exc:
            raise DeviceTimeout(
                f"{self!r}: rts = {self.settings.rts!r} is not supported by this port: "
                f"{exc.__cause__}"
            ) from exc
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceTimeout(f"{self!r}: cannot open the port: {exc}") from exc

    def _open_blocking(self) -> Any:
        s = self.settings
        options: dict[str, Any] = {
            "parity": s.parity,
            "stopbits": s.stopbits,
            "bytesize": s.bytesize,
            "timeout": 0,
            "write_timeout": 0,
        }
        if s.baudrate:
            options["baudrate"] = s.baudrate
        if "://" not in s.port:
            options["exclusive"] = True
        port = self._opener(s.port, **options)
        if s.rts == "software":
            port.rts = s.rts_invert  # receiving from the moment the port opens
        port.open()
        try:
            if s.rts == "kernel":
                port.rs485_mode = serial.rs485.RS485Settings(
                    rts_level_for_tx=not s.rts_invert,
                    rts_level_for_rx=s.rts_invert,
                    loopback=s.echo,
                )
            elif s.rts == "software":
                port.rts = s.rts_invert  # raises on a port without modem lines (a PTY)
        except (serial.SerialException, OSError, ValueError) as exc:
            port.close()
            raise _RtsUnsupported() from exc
        return port

    def _close_port(self) -> None:
        port, self._serial = self._serial, None
        if port is None:
            return
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            asyncio.get_running_loop().remove_reader(port.fileno())
        try:
            port.close()
        except (serial.SerialException, OSError):
            _log.debug("%r: error while closing", self, exc_info=True)

    def _readable(self) -> None:
        """Loop reader callback: append whatever arrived; a dead port ends the line."""
        try:
            data = self._serial.read(4096)
        except (serial.SerialException, OSError) as exc:
            self._lost = exc
            self._close_port()
            self._rx_event.set()
            return
        if data:
            now = asyncio.get_running_loop().time()
            self._rx.add(data, now)
            self._last_rx = now
            self._rx_event.set()

    def _read_now(self) -> bool:
        """Collect bytes the kernel holds but the loop has not delivered yet; True if any."""
        before = len(self._rx.data)
        if self._serial is not None:
            self._readable()
        return len(self._rx.data) != before

    def _wire(self, n_bytes: int) -> float:
        """Seconds ``n_bytes`` take on this line (0 without a baud rate)."""
        baudrate = self.settings.baudrate
        return wire_time(n_bytes, baudrate) if baudrate else 0.0

    async def read_registers(
        self, *, unit_id: int, function: int, address: int, count: int, response_timeout: float
    ) -> tuple[int, ...]:
        """One read transaction (FC 3 or 4) with ``unit_id``, preceded by a sync read if a late
        answer to an earlier request could be taken for its answer; raises a `DeviceError`
        subclass as listed in the module docstring. The line must be open.

        ``response_timeout`` is how long the unit may take to start answering; the request's and
        the answer's wire time at the baud rate come on top."""
        request = read_request(unit_id, function, address, count)
        what = f"{self!r} unit {unit_id}: FC{function} {address}+{count}"
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._serial is None:
                raise DeviceTimeout(f"{what}: line is not open")
            if (function, 2 * count) in self._expected_late(unit_id, loop.time()):
                await self._sync(unit_id, function, address, count, response_timeout)
            parsed = await self._transact(
                request,
                unit_id=unit_id,
                function=function,
                count=count,
                response_timeout=response_timeout,
                what=what,
            )
        return parsed.registers

    def _expected_late(self, unit_id: int, now: float) -> dict[tuple[int, int], float]:
        shapes = self._late.get(unit_id, {})
        for shape in [s for s, until in shapes.items() if until < now]:
            del shapes[shape]
        return shapes

    async def _sync(
        self, unit_id: int, function: int, address: int, count: int, response_timeout: float
    ) -> None:
        """One short read whose answer differs in size from every request of ``unit_id`` whose
        answer may still come; any answer to it means the unit has finished with them (units
        answer in order). It is a transaction like any: a fault or an exception answer is
        counted and raised (the poll fails; the next one needs no sync read, see
        `_transact`). It reads from the same address the smallest register count no expected
        answer has: one register after a failed longer read, so it stays within registers the
        unit serves; two (or more, after a failed sync read) after a failed one-register read."""
        taken = {size for f, size in self._late.get(unit_id, {}) if f == function}
        size = next(c for c in range(1, 126) if c != count and 2 * c not in taken)
        start = min(address, 0x10000 - size)
        what = f"{self!r} unit {unit_id}: sync read FC{function} {start}+{size}"
        _log.debug("%s: an answer to an earlier request may still come", what)
        self.sync_reads += 1
        request = read_request(unit_id, function, start, size)
        await self._transact(
            request,
            unit_id=unit_id,
            function=function,
            count=size,
            response_timeout=response_timeout,
            what=what,
        )

    async def _transact(
        self,
        request: bytes,
        *,
        unit_id: int,
        function: int,
        count: int,
        response_timeout: float,
        what: str,
    ) -> Parsed:
        """Quiet, flush, send, receive: an OK `Parsed`, or a counted `DeviceError` (exception
        answers included)."""
        loop = asyncio.get_running_loop()
        await self._quiet(loop)
        self._flush_input()
        if self._serial is None:  # the flush found the port gone (adapter unplugged)
            self._count(unit_id, "timeout")
            raise DeviceTimeout(f"{what}: line lost: {self._lost}")
        try:
            sent = await self._send(request, what)
        except DeviceTimeout:
            self._count(unit_id, "timeout")
            raise
        self.transactions += 1
        answer_bytes = read_response_bytes(count)
        deadline = sent + self._wire(len(request) + answer_bytes) + response_timeout
        try:
            parsed = await self._receive(
                loop,
                request=request,
                unit_id=unit_id,
                function=function,
                count=count,
                sent=sent,
                deadline=deadline,
                what=what,
            )
        except DeviceError:
            until = loop.time() + LATE_FACTOR * response_timeout
            self._late.setdefault(unit_id, {})[(function, 2 * count)] = until
            raise
        finally:
            self._last_activity = loop.time()
        self._copies[unit_id] = parsed.frame
        if parsed.verdict is Verdict.OK:
            self._late.pop(unit_id, None)  # it answered this request: the older ones are done
        else:
            if self._late.get(unit_id):
                # An exception answer carries no size: it may be the late answer to an older
                # request (which is then answered), so this request's own answer may still come.
                until = loop.time() + LATE_FACTOR * response_timeout
                self._late[unit_id] = {(function, 2 * count): until}
            self._count(unit_id, exception_fault(parsed.code))
            message = f"{what}: Modbus exception {parsed.code:#04x}"
            if parsed.code == EXCEPTION_BUSY:
                raise DeviceBusy(message)
            raise DeviceRejected(message, code=parsed.code)
        return parsed

    async def _quiet(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the line has been silent for t3.5 + pause, since the last transaction and
        since the last byte received (at most one longest frame and ten silences)."""
        give_up = loop.time() + self._wire(MAX_FRAME_BYTES) + 10 * self.frame_silence
        while True:
            self._read_now()
            ready_at = max(self._last_activity, self._last_rx) + self.gap + self.pause
            now = loop.time()
            if now >= ready_at or now >= give_up:
                return
            await asyncio.sleep(min(ready_at, give_up) - now)

    def _flush_input(self) -> None:
        """Judge and drop what arrived between transactions (late answers are counted)."""
        self._read_now()
        if self._rx.data:
            self._consume(sort_leftovers(bytes(self._rx.data), self._expected(None, 0)))
        self._rx_event.clear()

    def _expected(self, sent: float | None, request_bytes: int) -> Expected:
        late = {
            (unit, function, size): until
            for unit, shapes in self._late.items()
            for (function, size), until in shapes.items()
        }
        if sent is None or not self.gap:
            return Expected(late=late, copies=self._copies, arrived=self._rx.arrived)
        baudrate = self.settings.baudrate or 1
        # One character of margin: `sent` is taken just after the write call.
        first = sent + wire_time(request_bytes, baudrate) - char_time(baudrate)

        def earliest(length: int) -> float:
            return first + wire_time(length, baudrate)

        return Expected(late=late, copies=self._copies, arrived=self._rx.arrived, earliest=earliest)

    async def _send(self, frame: bytes, what: str) -> float:
        """Write ``frame`` (driving RTS around it if asked to); the loop time of the write."""
        port = self._serial
        try:
            if self.settings.rts == "software":
                # In a thread: the release must follow the last bit within the unit's t3.5 +
                # turnaround, which a thread's sleep keeps better than a busy event loop.
                written, sent = await asyncio.to_thread(self._write_driven, port, frame)
            else:
                written, sent = port.write(frame), asyncio.get_running_loop().time()
        except (serial.SerialException, OSError, ValueError) as exc:
            self._lost = exc
            raise DeviceTimeout(f"{what}: write failed: {exc}") from exc
        if written != len(frame):
            # A serial driver's transmit buffer holds kilobytes; 8 bytes not fitting means a
            # wedged adapter. Treat it as no answer; the scheduler reopens the port.
            raise DeviceTimeout(f"{what}: could write only {written} of {len(frame)} bytes")
        return float(sent)

    def _write_driven(self, port: Any, frame: bytes) -> tuple[int, float]:
        """Software direction control, blocking: RTS to the transmit level, write, wait the
        frame's wire time at the baud rate (counted from the write: some drivers' drain returns
        once the bytes left the host, not the wire) and the driver's drain, RTS back."""
        invert = self.settings.rts_invert
        port.rts = not invert
        try:
            written = port.write(frame)
            sent = time.monotonic()  # the event loop's clock
            time.sleep(max(0.0, sent + self._wire(len(frame)) - time.monotonic()))
            port.flush()
        finally:
            port.rts = invert
        return written, sent

    async def _wait_rx(self, until: float) -> None:
        self._rx_event.clear()
        try:
            async with asyncio.timeout_at(until):
                await self._rx_event.wait()
        except TimeoutError:
            pass

    async def _receive(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        request: bytes,
        unit_id: int,
        function: int,
        count: int,
        sent: float,
        deadline: float,
        what: str,
    ) -> Parsed:
        if self.settings.echo:
            await self._take_echo(loop, request, unit_id, deadline, what)
        # Bytes still flowing at the deadline are waited for, but not forever.
        hard_stop = deadline + self._wire(MAX_FRAME_BYTES) + self.frame_silence
        expected = self._expected(sent, len(request))
        looked = False
        while True:
            parsed = parse_read_answer(
                bytes(self._rx.data),
                unit_id=unit_id,
                function=function,
                count=count,
                expected=expected,
            )
            if parsed.verdict in (Verdict.OK, Verdict.EXCEPTION):
                self._consume(parsed, answered=True)
                return parsed
            if self._lost is not None:
                self._consume(parsed)
                self._count(unit_id, "timeout")
                raise DeviceTimeout(f"{what}: line lost: {self._lost}")
            if parsed.verdict in FAULT_VERDICTS:
                judge_at = self._last_rx + self.frame_silence
            elif parsed.missing:
                judge_at = self._last_rx + self._wire(parsed.missing) + self.frame_silence
            else:
                judge_at = deadline
            judge_at = min(judge_at, hard_stop)
            if loop.time() >= judge_at:
                # One last look at what the kernel holds before judging: under load the loop
                # may see the deadline before it delivered bytes that are already there.
                if not looked:
                    looked = True
                    if self._read_now():
                        continue
                await self._fail(loop, unit_id, parsed, what)
            looked = False
            await self._wait_rx(judge_at)

    async def _take_echo(
        self,
        loop: asyncio.AbstractEventLoop,
        request: bytes,
        unit_id: int,
        deadline: float,
        what: str,
    ) -> None:
        """Read back our own request from an echoing adapter and check it byte for byte."""
        while len(self._rx.data) < len(request) and self._lost is None:
            if loop.time() >= deadline and not self._read_now():
                break
            await self._wait_rx(deadline)
        if self._lost is not None:
            self._count(unit_id, "timeout")
            raise DeviceTimeout(f"{what}: line lost: {self._lost}")
        echo = bytes(self._rx.data[: len(request)])
        if echo == request:
            self._rx.drop(len(request))
            return
        self.discarded_bytes += len(self._rx.data)
        self._rx.drop(len(self._rx.data))
        self._count(unit_id, "echo")
        _log.debug("%s: echo %s, sent %s", what, echo.hex(" ") or "missing", request.hex(" "))
        await self._resync(loop)
        raise DecodeError(f"{what}: the adapter's echo is not our request", fault="echo")

    async def _fail(
        self, loop: asyncio.AbstractEventLoop, unit_id: int, parsed: Parsed, what: str
    ) -> None:
        """Count the fault ``parsed`` amounts to, resynchronise, raise its `DeviceError`."""
        if parsed.verdict in FAULT_VERDICTS:
            kind = parsed.verdict.value
        elif parsed.missing:
            kind = "truncated"
        elif parsed.noise:
            kind = "garbage"
        else:
            kind = "timeout"
        if kind != "timeout":
            _log.debug("%s: %s: %s", what, kind, bytes(self._rx.data).hex(" "))
        self._consume(parsed)
        self._count(unit_id, kind)
        if kind == "timeout":
            raise DeviceTimeout(f"{what}: no answer in time")
        await self._resync(loop)
        raise DecodeError(f"{what}: {kind} answer", fault=kind)

    def _consume(self, parsed: Parsed, *, answered: bool = False) -> None:
        """Count what the first ``parsed.used`` bytes held, then drop them."""
        for unit in parsed.stale:
            self._count(unit, "stale")
        self.stale_frames += len(parsed.stale)
        self.stray_frames += parsed.strays
        if answered:
            self.noise_bytes += parsed.noise
        else:
            self.discarded_bytes += parsed.noise
        self._rx.drop(parsed.used)

    def _count(self, unit_id: int, kind: str) -> None:
        self._faults.setdefault(unit_id, Counter())[kind] += 1

    async def _resync(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the line has been silent for ``frame_silence`` (bounded), so the rest of a
        broken frame arrives now; the next request's flush judges and drops it."""
        give_up = loop.time() + self._wire(MAX_FRAME_BYTES) + 10 * self.frame_silence
        while self._serial is not None:
            self._read_now()
            now = loop.time()
            quiet_at = self._last_rx + self.frame_silence
            if quiet_at <= now or now >= give_up:
                return
            await asyncio.sleep(min(quiet_at, give_up) - now)


class _RtsUnsupported(Exception):
    """The port's driver cannot do the RTS direction control asked for (raised from the cause)."""


class LineUnit:
    """One unit id on a `ModbusLine`: the `drivers.modbus.engine.RegisterReader` for RTU.

    Many `LineUnit`s share one line; each `open` takes a reference on it, so a failing device
    that the scheduler closes and reopens never closes the port under its neighbours.
    ``response_timeout`` is how long the unit may take to start answering; `ModbusLine` adds
    the answer's own wire time at the baud rate.
    """

    def __init__(self, *, line: ModbusLine, unit_id: int, response_timeout: float) -> None:
        if not 1 <= unit_id <= 247:
            raise ValueError(f"an RTU unit id must be 1..247, got {unit_id}")
        if response_timeout <= 0:
            raise ValueError(f"response_timeout must be positive, got {response_timeout}")
        self.line = line
        self.unit_id = unit_id
        self.response_timeout = response_timeout
        self._open = False

    def __repr__(self) -> str:
        return f"{self.line!r} unit {self.unit_id}"

    def faults(self) -> Counter[str]:
        """This unit's fault counters on the line (`drivers.base.ReportsFaults`)."""
        return self.line.faults(self.unit_id)

    async def open(self) -> None:
        """Take a reference on the line (opening the port if it is the first)."""
        if not self._open:
            await self.line.open()
            self._open = True

    async def close(self) -> None:
        """Release this unit's reference; never raises."""
        if self._open:
            self._open = False
            await self.line.close()

    async def read(self, request: ReadRequest) -> tuple[int, ...]:
        """One read transaction for ``request``."""
        return await self.line.read_registers(
            unit_id=self.unit_id,
            function=read_function(request.kind),
            address=request.address,
            count=request.count,
            response_timeout=self.response_timeout,
        )


def read_function(kind: RegisterKind) -> int:
    """The function code that reads registers of ``kind`` (4 input, 3 holding)."""
    return READ_INPUT if kind is RegisterKind.INPUT else READ_HOLDING


class LineRegisters:
    """Arbitrary register reads of any unit on an open `ModbusLine`, for SunSpec discovery and
    ``gateway scan --serial``: the RTU counterpart of `drivers.modbus.tcp_client.ModbusTcpRegisters`
    (the same ``read(kind, address, count, unit_id=...)`` shape and error mapping, except that
    exception answers are plain `DeviceRejected`/`DeviceBusy`).

    ``response_timeout`` is how long a unit may take to *start* answering; the line adds the
    answer's wire time, so a short probe timeout (which keeps a scan over absent units fast)
    never cuts off a long answer from a unit that is there.
    """

    def __init__(self, *, line: ModbusLine, response_timeout: float) -> None:
        if response_timeout <= 0:
            raise ValueError(f"response_timeout must be positive, got {response_timeout}")
        self.line = line
        self.response_timeout = response_timeout

    def __repr__(self) -> str:
        return f"LineRegisters({self.line!r})"

    async def read(
        self, kind: RegisterKind, address: int, count: int, *, unit_id: int
    ) -> list[int]:
        """One read transaction; raises the `DeviceError` subclasses `ModbusLine` documents."""
        registers = await self.line.read_registers(
            unit_id=unit_id,
            function=read_function(kind),
            address=address,
            count=count,
            response_timeout=self.response_timeout,
        )
        return list(registers)
