"""Register reads over Modbus TCP with the project's own framing (`drivers.modbus.mbap`).

`ModbusTcpRegisters` is one TCP connection to one endpoint (a device, or a TCP-to-RS-485 gateway
with several units behind it): profile devices read through it (`drivers.modbus.driver.TcpUnit`),
SunSpec devices, discovery and the commissioning scan too. The gateway makes **one per endpoint**
(`gateway.registry.BusRegistry.modbus_tcp`) and every unit behind it shares it: many devices
accept a single client, and a TCP-to-RTU gateway is a serial line that cannot serve two
connections at once anyway.

Why not pymodbus's client (3.16): it skips its transaction-id check when an answer's tid is 0,
does not check the function code, caps its receive buffer (two answers in one segment are
dropped) and raises inside ``data_received`` (a traceback and packet dumps per bad frame).

**Transactions.** One request is outstanding at a time (a lock). Transaction ids count
1..65535 and skip 0, so a tid of 0 is never ours. The tids of the last `TID_MEMORY` requests
are remembered with their unit once finished (answered, failed or given up), so that a late
answer or a duplicate is recognised as ``stale``, discarded and counted, while the real answer
is still awaited; a tid that was never sent is ``wrong_tid``. Each answer is validated against
its request by `drivers.modbus.mbap.parse_answer` before anything is decoded.

**Errors** (each raised error is counted once per unit under its ``fault``, see `faults`):

- connection refused, unreachable, or not made within ``timeout`` -> `DeviceTimeout`
  ("timeout"); after a failed attempt the endpoint is not tried again for a hold-off that
  doubles per failure (`CONNECT_HOLD_OFF` .. `MAX_CONNECT_HOLD_OFF`): reads in that time fail at
  once, so the units behind a dead endpoint cannot make it reconnect in a tight loop;
- no byte of an answer by the deadline (``timeout`` after the request) -> `DeviceTimeout`; the
  connection is **kept**: a late answer will carry a finished tid and be discarded as stale;
- the connection closed or reset with no byte of the answer -> `DeviceTimeout` (a device that
  hung up while the connection was idle is reconnected silently first); in the middle of
  a frame -> `DecodeError` ("truncated"); a frame half-received at the deadline -> `DecodeError`
  ("truncated") too, and the connection is dropped (where that frame ends is unknown);
- a framing fault (``garbage``, ``length``, a byte count disagreeing with the length) ->
  `DecodeError`, and the connection is dropped: the stream has lost its frame boundaries;
- ``wrong_tid``, ``wrong_unit``, ``wrong_function``, ``byte_count`` (disagreeing with the
  quantity asked) -> `DecodeError`; the connection is kept, the frame's boundary being known;
- exception 06 -> `DeviceBusy`; any other code -> `ModbusExceptionAnswer` (a `DeviceRejected`
  with ``code``).

Bytes that follow an answer in the same segment are judged at once: complete stale frames are
discarded (and counted), unsolicited frames are discarded and counted as ``wrong_tid``, and
anything unparsable drops the connection (counted as ``garbage`` against the unit just served);
none of this fails the read that just succeeded. Logging is at DEBUG only: the scheduler logs
a device failure once per episode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from drivers.modbus.mbap import (
    MAX_TID,
    READ_HOLDING,
    READ_INPUT,
    Parsed,
    Verdict,
    parse_answer,
    parse_unsolicited,
    read_request,
)
from drivers.modbus.profiles import RegisterKind
from gateway.errors import DecodeError, DeviceBusy, DeviceError, DeviceRejected, DeviceTimeout

_log = logging.getLogger(__name__)

#: Modbus exception code "server device busy".
EXCEPTION_BUSY = 0x06
#: How many finished transaction ids are remembered to recognise stale answers.
TID_MEMORY = 256
#: First and longest hold-off after a failed connection attempt, in seconds.
CONNECT_HOLD_OFF = 0.5
MAX_CONNECT_HOLD_OFF = 15.0
#: Most bytes taken from the socket per read.
_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class _Request:
    """The outstanding request, as the answer is judged against it."""

    tid: int
    unit_id: int
    function: int
    count: int
    what: str


class ModbusExceptionAnswer(DeviceRejected):
    """The device answered with Modbus exception ``code`` (other than busy).

    Commissioning needs the code: 0x0A/0x0B come from a TCP-to-RS-485 gateway and mean "no
    such unit behind me", while 0x01/0x02 mean a device is there but lacks the function or
    register. The fault class is ``exception-0xNN``.
    """

    code: int

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message, code=code)


class ModbusTcpRegisters:
    """Reads registers of any unit behind ``host``:``port`` over one shared connection.

    ``timeout`` bounds the connection attempt and, unless a read passes its own, each request
    (from sending it to the last byte of its answer), in seconds. The connection is made on the
    first `open`/`connect`/`read` and remade after a failure.

    Sharing: every user that keeps the object (a unit's driver) calls `open` once and `close`
    once; the connection is closed with the last `close`, so one failing unit that the scheduler
    closes never drops its neighbours' connection. A one-off user (``async with``, a scan) never
    calls `open`: its `close` with no reference taken closes the connection. `close` never raises.
    """

    def __init__(self, *, host: str, port: int, timeout: float = 2.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.host = host
        self.port = port
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._users = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._closing: list[asyncio.StreamWriter] = []
        self._rx = bytearray()
        self._next_tid = 1
        #: Finished transaction id -> the unit it was sent to (oldest first).
        self._finished: OrderedDict[int, int] = OrderedDict()
        self._faults: dict[int, Counter[str]] = {}
        self._failed_connects = 0
        self._retry_at = 0.0
        self._last_connect_error = ""
        self._counters: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"ModbusTcpRegisters({self.host}:{self.port})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- observability -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The endpoint, as the status topic's ``lines`` names it."""
        return f"modbus-tcp://{self.host}:{self.port}"

    def faults(self, unit_id: int) -> Counter[str]:
        """Faults seen for ``unit_id`` by detailed class (`gateway.errors.FAULT_CLASSES` names
        and ``exception-0xNN``): every error a read of that unit raised, plus the faults that
        did not fail a read (stale answers, unsolicited frames, trailing garbage); a copy."""
        return Counter(self._faults.get(unit_id, Counter()))

    def counters(self) -> dict[str, int]:
        """The connection's own totals: ``transactions`` (requests sent), ``connects``
        (connections made), ``reconnects`` (connections made after the first),
        ``connect_failures``, ``dropped`` (connections dropped because the stream lost sync or
        broke), ``stale_frames``, ``unsolicited_frames`` and ``discarded_bytes``."""
        names = (
            "transactions",
            "connects",
            "reconnects",
            "connect_failures",
            "dropped",
            "stale_frames",
            "unsolicited_frames",
            "discarded_bytes",
        )
        return {name: self._counters[name] for name in names}

    @property
    def connected(self) -> bool:
        """True while a connection is up, as far as this side knows: made, not closed or reset,
        and the device has not hung up (end of stream seen)."""
        if self._writer is None or self._writer.is_closing():
            return False
        return self._reader is not None and not self._reader.at_eof()

    # --- connection ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Take a reference and connect now; raises `DeviceTimeout` (and takes no reference)
        when the endpoint does not accept."""
        async with self._lock:
            await self._ensure_connected()
        self._users += 1

    async def close(self) -> None:
        """Release a reference; the connection closes when none is left (at once if none was
        taken). Idempotent once the references are gone; never raises."""
        self._users = max(0, self._users - 1)
        if self._users == 0:
            self._drop(count=False)
            await self._wait_closed()

    async def connect(self) -> None:
        """Connect now (otherwise the first read does), without taking a reference; raises
        `DeviceTimeout` on failure."""
        async with self._lock:
            await self._ensure_connected()

    async def _ensure_connected(self) -> asyncio.StreamWriter:
        """The connection, made now if there is none or the device hung up while it was idle
        (devices close idle connections): such a reconnect is silent, it fails nothing."""
        if self.connected and self._writer is not None:
            return self._writer
        self._drop(count=False)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._retry_at:
            raise DeviceTimeout(
                f"{self!r}: {self._last_connect_error}; not retried for another "
                f"{self._retry_at - now:.1f} s"
            )
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except (TimeoutError, OSError) as exc:
            self._counters["connect_failures"] += 1
            self._failed_connects += 1
            hold_off = min(
                MAX_CONNECT_HOLD_OFF, CONNECT_HOLD_OFF * 2 ** (self._failed_connects - 1)
            )
            self._retry_at = loop.time() + hold_off
            self._last_connect_error = _connect_error(exc, self.timeout)
            _log.debug("%r: %s; hold-off %.1f s", self, self._last_connect_error, hold_off)
            raise DeviceTimeout(f"{self!r}: {self._last_connect_error}") from exc
        self._failed_connects = 0
        self._retry_at = 0.0
        if self._counters["connects"]:
            self._counters["reconnects"] += 1
        self._counters["connects"] += 1
        self._reader, self._writer = reader, writer
        self._rx.clear()
        _log.debug("%r: connected", self)
        return writer

    def _drop(self, *, count: bool = True) -> None:
        """Close the connection now (synchronously: also safe while being cancelled) and forget
        whatever was received; `_wait_closed` finishes the job."""
        writer, self._writer, self._reader = self._writer, None, None
        self._counters["discarded_bytes"] += len(self._rx)
        self._rx.clear()
        if writer is None:
            return
        if count:
            self._counters["dropped"] += 1
        _log.debug("%r: connection dropped", self)
        writer.close()
        self._closing.append(writer)

    async def _wait_closed(self) -> None:
        closing, self._closing = self._closing, []
        for writer in closing:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    # --- transactions -------------------------------------------------------------------------

    async def read(
        self,
        kind: RegisterKind,
        address: int,
        count: int,
        *,
        unit_id: int,
        response_timeout: float | None = None,
    ) -> list[int]:
        """``count`` registers of ``kind`` from ``address`` of unit ``unit_id``; raises the
        `DeviceError` subclasses listed in the module docstring. ``response_timeout`` (default:
        the object's ``timeout``) bounds this request from sending it to the end of its answer:
        units behind one gateway may each have their own."""
        function = READ_INPUT if kind is RegisterKind.INPUT else READ_HOLDING
        read_request(1, unit_id, function, address, count)  # ValueError for impossible reads
        limit = self.timeout if response_timeout is None else response_timeout
        if limit <= 0:
            raise ValueError(f"response_timeout must be positive, got {limit}")
        what = f"{self!r} unit {unit_id}: FC{function} {address}+{count}"
        try:
            async with self._lock:
                try:
                    writer = await self._ensure_connected()
                    return await self._transact(
                        writer, address, limit, self._new_request(unit_id, function, count, what)
                    )
                except DeviceError as exc:
                    self._count(unit_id, exc.fault)
                    _log.debug("%s: %s", what, exc)
                    raise
        finally:
            await self._wait_closed()

    def _new_request(self, unit_id: int, function: int, count: int, what: str) -> _Request:
        """A fresh transaction id (1..65535, never 0) for the next request; the deadline is set
        when it is sent."""
        tid = self._next_tid
        self._next_tid = tid % MAX_TID + 1
        self._finished.pop(tid, None)  # reused after a wrap: it is ours again
        return _Request(tid=tid, unit_id=unit_id, function=function, count=count, what=what)

    def _finish(self, request: _Request) -> None:
        self._finished[request.tid] = request.unit_id
        while len(self._finished) > TID_MEMORY:
            self._finished.popitem(last=False)

    async def _transact(
        self, writer: asyncio.StreamWriter, address: int, limit: float, request: _Request
    ) -> list[int]:
        frame = read_request(request.tid, request.unit_id, request.function, address, request.count)
        deadline = asyncio.get_running_loop().time() + limit
        self._counters["transactions"] += 1
        try:
            writer.write(frame)
            return await self._receive(request, deadline)
        except asyncio.CancelledError:
            # Cut off by the caller (the scheduler's guard): half a frame in the buffer would
            # desynchronise the stream, a clean one lets a late answer be recognised as stale.
            if self._rx:
                self._drop()
            raise
        finally:
            self._finish(request)
            self._sweep(request.unit_id)

    async def _receive(self, request: _Request, deadline: float) -> list[int]:
        while True:
            parsed = parse_answer(
                bytes(self._rx),
                tid=request.tid,
                unit_id=request.unit_id,
                function=request.function,
                count=request.count,
                finished=self._finished,
            )
            if parsed.verdict is Verdict.OK:
                del self._rx[: parsed.used]
                return list(parsed.registers)
            if parsed.verdict is Verdict.EXCEPTION:
                del self._rx[: parsed.used]
                message = f"{request.what}: Modbus exception {parsed.code:#04x}"
                if parsed.code == EXCEPTION_BUSY:
                    raise DeviceBusy(message)
                raise ModbusExceptionAnswer(message, code=parsed.code)
            if parsed.verdict is Verdict.STALE:
                self._discard_stale(parsed)
                continue
            if parsed.verdict is Verdict.FAULT:
                self._discard_fault(parsed)
                raise DecodeError(
                    f"{request.what}: {parsed.fault} answer ({parsed.detail})", fault=parsed.fault
                )
            await self._receive_more(parsed, request, deadline)

    async def _receive_more(self, parsed: Parsed, request: _Request, deadline: float) -> None:
        """Wait for more bytes of an incomplete frame (or the first byte of one); raise when
        the deadline passes or the connection ends first."""
        reader = self._reader
        if reader is None:  # only a final verdict drops the connection: cannot happen here
            raise DeviceTimeout(f"{request.what}: connection lost")
        lost = "connection closed by the device"
        try:
            async with asyncio.timeout_at(deadline):
                data = await reader.read(_CHUNK)
        except TimeoutError:
            if not self._rx:
                raise DeviceTimeout(f"{request.what}: no answer in time") from None
            lost, data = "incomplete at the deadline", b""
        except OSError as exc:  # reset by the peer
            lost, data = f"connection lost: {exc}", b""
        if data:
            self._rx += data
            return
        partial = bool(self._rx)
        ours = parsed.tid is None or parsed.tid == request.tid
        self._drop()
        if partial and ours:
            raise DecodeError(f"{request.what}: truncated answer ({lost})", fault="truncated")
        raise DeviceTimeout(f"{request.what}: no answer ({lost})")

    def _discard_stale(self, parsed: Parsed) -> None:
        del self._rx[: parsed.used]
        self._counters["stale_frames"] += 1
        self._counters["discarded_bytes"] += parsed.used
        if parsed.tid is not None and parsed.tid in self._finished:
            self._count(self._finished[parsed.tid], "stale")

    def _discard_fault(self, parsed: Parsed) -> None:
        if parsed.sync_lost:
            self._drop()
        else:
            del self._rx[: parsed.used]
            self._counters["discarded_bytes"] += parsed.used

    def _sweep(self, unit_id: int) -> None:
        """Judge what followed the finished transaction of ``unit_id`` in the buffer: nothing
        in it can answer a request not yet sent (see the module docstring)."""
        while self._rx and self._reader is not None:
            parsed = parse_unsolicited(bytes(self._rx), finished=self._finished)
            if parsed.verdict is Verdict.INCOMPLETE:
                return  # the rest of a frame still on its way: judged by the next request
            if parsed.verdict is Verdict.STALE:
                self._discard_stale(parsed)
                continue
            if parsed.sync_lost:
                self._count(unit_id, parsed.fault or "garbage")
                self._drop()
                return
            self._counters["unsolicited_frames"] += 1
            self._count(unit_id, "wrong_tid")
            self._discard_fault(parsed)

    def _count(self, unit_id: int, fault: str) -> None:
        self._faults.setdefault(unit_id, Counter())[fault] += 1


def _connect_error(exc: BaseException, timeout: float) -> str:
    """A short reason for a failed connection attempt, naming refusals as such."""
    if isinstance(exc, TimeoutError):
        return f"connection attempt timed out after {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
        return "connection refused"
    return f"cannot connect: {exc}"
