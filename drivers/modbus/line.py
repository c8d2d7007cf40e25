"""One RS-485 line (or an RTU-over-TCP converter): the serial port, its lock and its timing.

Why an object per line: every device on an RS-485 line shares one serial port, and RTU answers
carry no transaction id, so only one transaction may be on the wire at a time and the line must be
quiet for the inter-frame gap between frames. The gateway builds one `ModbusLine` per configured
port (`gateway.registry.BusRegistry`, keyed on the port path) and hands it to the driver of every
device on that port; the scheduler runs one task per port, so devices are polled in turn. The
line's lock makes the one-transaction rule hold even if something else (``gateway read``) uses it.

**Where the timing lives**: `transact` waits until ``t3.5 + pause`` have passed since the last
byte of the previous transaction (request sent or answer received) before it sends, so the gap
the baud rate requires and the configured pause are enforced here, not by the scheduler. The
answer deadline starts when the request has left the wire (its bytes at the baud rate) and lasts
the device's ``response_timeout``.

**Faults** become exactly one `DeviceError` each:

- no byte of an answer before the deadline → `DeviceTimeout` ("timeout");
- a complete frame of the expected shape with a wrong CRC → `DecodeError` ("crc");
- our unit and function, then silence before the frame is complete → `DecodeError` ("truncated");
- bytes that are not a frame of ours, then silence → `DecodeError` ("garbage");
- our header with an impossible byte count → `DecodeError` ("malformed");
- an exception answer: 06 → `DeviceBusy`, any other code → `DeviceRejected` ("exception-0xNN").

After a decode fault the line **resynchronises**: it waits until the input has been silent for
``frame_silence`` and discards whatever arrived, so the rest of a garbled frame cannot spoil the
next device's answer. Before every request the input buffer is flushed too. A late answer that
arrives while another device's transaction is running is a complete, CRC-valid foreign frame and
is skipped (`stray_frames`). A late answer from the *same* unit to an identical request could not
be told from the real one (RTU has no transaction id), so after a timeout the line sends nothing
more to that unit until one more ``response_timeout`` has passed (its late-answer window); other
units use the line meanwhile. The scheduler retries a failed device only after its interval, so
in practice the window has passed already. An answer later than twice the timeout is lost.

Silence, not t3.5, ends a broken frame: USB-RS485 adapters deliver bytes in chunks up to 16 ms
apart (FTDI latency timer), so ``frame_silence`` defaults to ``max(t3.5, 20 ms)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import serial

from drivers.modbus.planner import ReadRequest
from drivers.modbus.profiles import RegisterKind
from drivers.modbus.rtu import (
    READ_HOLDING,
    READ_INPUT,
    Verdict,
    parse_read_answer,
    read_request,
    read_response_bytes,
    t35,
    wire_time,
)
from gateway.errors import DecodeError, DeviceBusy, DeviceRejected, DeviceTimeout

_log = logging.getLogger(__name__)

#: Modbus exception code "server device busy".
EXCEPTION_BUSY = 0x06
#: Lower bound on the silence that ends a broken frame (see the module docstring).
MIN_FRAME_SILENCE = 0.020


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialSettings:
    """Where and how to open the line.

    ``port`` is a device path (``/dev/ttyUSB0``, a PTY) or a pyserial URL; RTU over TCP uses
    ``socket://HOST:PORT``. ``baudrate`` sets the timing; for RTU over TCP the converter's serial
    side does the timing and ``baudrate`` is ``None`` (no gap is enforced, only ``pause``).
    """

    port: str
    baudrate: int | None = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8


class ModbusLine:
    """The shared serial line; see the module docstring for the timing and fault contract.

    `open`/`close` are reference-counted: each device's driver opens the line once, the port is
    opened on the first `open` and closed with the last `close`. ``pause`` is the extra quiet time
    between transactions some devices need after answering.
    """

    def __init__(
        self,
        *,
        settings: SerialSettings,
        pause: float = 0.0,
        frame_silence: float | None = None,
    ) -> None:
        if pause < 0:
            raise ValueError(f"pause must be >= 0, got {pause}")
        self.settings = settings
        self.pause = pause
        self.gap = t35(settings.baudrate) if settings.baudrate else 0.0
        self.frame_silence = (
            frame_silence if frame_silence is not None else max(self.gap, MIN_FRAME_SILENCE)
        )
        self._lock = asyncio.Lock()
        self._serial: Any = None
        self._users = 0
        self._rx = bytearray()
        self._rx_event = asyncio.Event()
        self._last_rx = 0.0
        self._last_activity = 0.0
        self._lost: BaseException | None = None
        #: Completed request/answer exchanges, failed or not.
        self.transactions = 0
        #: Complete foreign frames skipped while waiting for an answer (late answers).
        self.stray_frames = 0
        #: Bytes thrown away while resynchronising or flushing before a request.
        self.discarded_bytes = 0
        self._faults: dict[int, Counter[str]] = {}
        #: unit id -> loop time until which a late answer from it may still arrive.
        self._late_window: dict[int, float] = {}

    def __repr__(self) -> str:
        return f"ModbusLine({self.settings.port} @ {self.settings.baudrate or 'tcp'})"

    def faults(self, unit_id: int) -> Counter[str]:
        """Faults seen for ``unit_id`` by detailed class (timeout, crc, truncated, garbage,
        malformed, exception-0xNN); a copy."""
        return Counter(self._faults.get(unit_id, Counter()))

    async def open(self) -> None:
        """Take a reference; opens the port on the first one. Raises `DeviceTimeout` if the
        port cannot be opened (absent adapter, wrong path, refused TCP)."""
        if self._serial is None:
            self._serial = await self._open_port()
            self._lost = None
            self._rx.clear()
            loop = asyncio.get_running_loop()
            loop.add_reader(self._serial.fileno(), self._readable)
        self._users += 1

    async def close(self) -> None:
        """Drop a reference; closes the port with the last one. Never raises."""
        self._users = max(0, self._users - 1)
        if self._users == 0:
            self._close_port()

    async def _open_port(self) -> Any:
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
        try:
            # Opening a tty is quick, but connecting a socket:// URL blocks: keep it off the loop.
            return await asyncio.to_thread(serial.serial_for_url, s.port, **options)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceTimeout(f"{self!r}: cannot open the port: {exc}") from exc

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
            self._rx += data
            self._last_rx = asyncio.get_running_loop().time()
            self._rx_event.set()

    async def read_registers(
        self, *, unit_id: int, function: int, address: int, count: int, response_timeout: float
    ) -> tuple[int, ...]:
        """One read transaction (FC 3 or 4) with ``unit_id``; raises a `DeviceError` subclass
        as listed in the module docstring. The line must be open."""
        request = read_request(unit_id, function, address, count)
        what = f"{self!r} unit {unit_id}: FC{function} {address}+{count}"
        loop = asyncio.get_running_loop()
        window = self._late_window.pop(unit_id, 0.0) - loop.time()
        if window > 0:  # outside the lock: the other units keep the line
            await asyncio.sleep(window)
        async with self._lock:
            if self._serial is None:
                raise DeviceTimeout(f"{what}: line is not open")
            await self._quiet(loop)
            self._flush_input()
            if self._serial is None:  # the flush found the port gone (adapter unplugged)
                self._count(unit_id, "timeout")
                raise DeviceTimeout(f"{what}: line lost: {self._lost}")
            self._write(request)
            sent = loop.time()
            on_wire = wire_time(len(request), self.settings.baudrate or 1) if self.gap else 0.0
            try:
                return await self._receive(
                    loop,
                    unit_id=unit_id,
                    function=function,
                    count=count,
                    deadline=sent + on_wire + response_timeout,
                    what=what,
                )
            except DeviceTimeout:
                self._late_window[unit_id] = loop.time() + response_timeout
                raise
            finally:
                self.transactions += 1
                self._last_activity = loop.time()

    async def _quiet(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait out the inter-frame gap plus the pause since the last transaction."""
        ready_at = self._last_activity + self.gap + self.pause
        delay = ready_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def _flush_input(self) -> None:
        self._readable_now()
        if self._rx:
            self.discarded_bytes += len(self._rx)
            self._rx.clear()
        self._rx_event.clear()

    def _readable_now(self) -> None:
        """Collect bytes the kernel holds but the loop has not delivered yet."""
        if self._serial is not None:
            self._readable()

    def _write(self, frame: bytes) -> None:
        try:
            written = self._serial.write(frame)
        except (serial.SerialException, OSError) as exc:
            self._lost = exc
            raise DeviceTimeout(f"{self!r}: write failed: {exc}") from exc
        if written != len(frame):
            # A serial driver's transmit buffer holds kilobytes; 8 bytes not fitting means a
            # wedged adapter. Treat it as no answer; the scheduler reopens the port.
            raise DeviceTimeout(f"{self!r}: could write only {written} of {len(frame)} bytes")

    async def _receive(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        unit_id: int,
        function: int,
        count: int,
        deadline: float,
        what: str,
    ) -> tuple[int, ...]:
        looked = False
        while True:
            parsed = parse_read_answer(
                bytes(self._rx), unit_id=unit_id, function=function, count=count
            )
            verdict = parsed.verdict
            if verdict is Verdict.OK:
                self._done(parsed.strays, parsed.used)
                return parsed.registers
            if verdict is Verdict.EXCEPTION:
                self._done(parsed.strays, parsed.used)
                kind = f"exception-{parsed.code:#04x}"
                self._count(unit_id, kind)
                message = f"{what}: Modbus exception {parsed.code:#04x}"
                if parsed.code == EXCEPTION_BUSY:
                    raise DeviceBusy(message)
                raise DeviceRejected(message)
            if verdict in (Verdict.CRC, Verdict.MALFORMED):
                self.stray_frames += parsed.strays
                kind = "crc" if verdict is Verdict.CRC else "malformed"
                await self._decode_fault(loop, unit_id, kind, what)
            if self._lost is not None:
                self._count(unit_id, "timeout")
                raise DeviceTimeout(f"{what}: line lost: {self._lost}")
            pending = len(self._rx) - parsed.used
            now = loop.time()
            silent = pending > 0 and now - self._last_rx >= self.frame_silence
            if now >= deadline or silent:
                # One last look at what the kernel holds before judging: under load the loop
                # may see the deadline before it delivered bytes that are already there.
                if not looked:
                    looked = True
                    before = len(self._rx)
                    self._readable_now()
                    if len(self._rx) != before:
                        continue
                self.stray_frames += parsed.strays
                if not pending:
                    self._count(unit_id, "timeout")
                    raise DeviceTimeout(f"{what}: no answer in time")
                kind = "truncated" if verdict is Verdict.INCOMPLETE_OURS else "garbage"
                await self._decode_fault(loop, unit_id, kind, what)
            looked = False
            wake = deadline if not pending else min(deadline, self._last_rx + self.frame_silence)
            self._rx_event.clear()
            try:
                async with asyncio.timeout_at(wake):
                    await self._rx_event.wait()
            except TimeoutError:
                pass

    def _done(self, strays: int, used: int) -> None:
        self.stray_frames += strays
        del self._rx[:used]

    def _count(self, unit_id: int, kind: str) -> None:
        self._faults.setdefault(unit_id, Counter())[kind] += 1

    async def _decode_fault(
        self, loop: asyncio.AbstractEventLoop, unit_id: int, kind: str, what: str
    ) -> None:
        """Count, resynchronise (silence, then discard), raise `DecodeError`."""
        self._count(unit_id, kind)
        await self._resync(loop)
        raise DecodeError(f"{what}: {kind} answer")

    async def _resync(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the line has been silent for ``frame_silence`` (at most 10 of them), then
        drop the input, so the tail of a broken frame cannot prefix the next answer."""
        give_up = loop.time() + 10 * self.frame_silence
        while self._serial is not None:
            self._readable_now()
            now = loop.time()
            quiet_at = max(self._last_rx, now - self.frame_silence) + self.frame_silence
            if quiet_at <= now or now >= give_up:
                break
            await asyncio.sleep(min(quiet_at, give_up) - now)
        self.discarded_bytes += len(self._rx)
        self._rx.clear()


class LineUnit:
    """One unit id on a `ModbusLine`: the `drivers.modbus.engine.RegisterReader` for RTU.

    Many `LineUnit`s share one line; each `open` takes a reference on it, so a failing device
    that the scheduler closes and reopens never closes the port under its neighbours.
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

    ``response_timeout`` is how long a unit may take to *start* answering. The time the whole
    answer takes on the wire at the line's baud rate is added per request, so that a short probe
    timeout (which keeps a scan over absent units fast) never cuts off a long answer from a unit
    that is there: the simulator, like a converter that buffers, delivers an answer only once its
    last byte would have arrived.
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
        baudrate = self.line.settings.baudrate
        answer = wire_time(read_response_bytes(count), baudrate) if baudrate else 0.0
        registers = await self.line.read_registers(
            unit_id=unit_id,
            function=read_function(kind),
            address=address,
            count=count,
            response_timeout=self.response_timeout + answer,
        )
        return list(registers)
