"""Modbus RTU framing and line timing, as pure functions (no I/O).

An RTU frame is ``unit | function | data | CRC-16/Modbus (low byte first)``. Frames carry no length
field and no transaction id: the receiver knows a frame ended from its expected length (for the
read functions the master uses) or from 3.5 character times of silence, and it matches an answer
to its request only by unit id, function code and size. `parse_read_answer` therefore takes what
the master expects (unit, function, register count) and what else may legitimately be on the
line (`Expected`: late answers to failed requests, copies of last answers, and when a real answer
can arrive at the earliest) and finds the valid answer to *our* request anywhere in the bytes
received, for `drivers.modbus.line`. Everything else is named, never decoded into values:

- complete CRC-valid frames that ``expected`` explains are *stale* (late answers, duplicates);
- other complete frames before our answer are *strays*; bytes in no frame are *noise*;
- without our answer, the first of: a frame with our header and a wrong CRC (``crc``); a byte
  count that is impossible, disagrees with the frame's length or fits no request of ours
  (``byte_count``); our unit answering another function (``wrong_function``); another unit
  answering with no reason to (``wrong_unit``); else "pending", with the bytes an incomplete
  frame of ours still lacks: the caller decides "truncated", "garbage" or "timeout" in time.

A frame found is skipped as a whole (its data is never searched for frames); any other byte is
passed over one at a time, so our answer is found behind noise of any length.

Timing (Modbus over serial line, V1.02, 2.5.1.1): a character is 11 bits (start, 8 data, parity or
a second stop bit, stop); frames are separated by at least t3.5 = 3.5 character times, fixed at
1.75 ms above 19200 baud.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

#: Bits on the wire per RTU character: start + 8 data + parity (or 2nd stop) + stop.
BITS_PER_CHAR = 11
#: Above this baud rate the inter-frame gap is fixed (Modbus over serial line, 2.5.1.1).
FIXED_GAP_ABOVE_BAUD = 19_200
FIXED_T35 = 0.00175
#: Request for FC 3/4: unit, function, address (2), count (2), CRC (2).
READ_REQUEST_BYTES = 8
#: Function codes the master uses for register reads.
READ_HOLDING = 0x03
READ_INPUT = 0x04


def char_time(baudrate: int) -> float:
    """Seconds one 11-bit character takes on the wire at ``baudrate``."""
    if baudrate <= 0:
        raise ValueError(f"baudrate must be positive, got {baudrate}")
    return BITS_PER_CHAR / baudrate


def t35(baudrate: int) -> float:
    """The inter-frame gap: 3.5 character times, or 1.75 ms above 19200 baud."""
    if baudrate > FIXED_GAP_ABOVE_BAUD:
        return FIXED_T35
    return 3.5 * char_time(baudrate)


def wire_time(n_bytes: int, baudrate: int) -> float:
    """Seconds ``n_bytes`` take on the wire."""
    return n_bytes * char_time(baudrate)


def read_response_bytes(count: int) -> int:
    """Length of a normal FC 3/4 answer carrying ``count`` registers: unit, fc, byte count, data, CRC."""
    return 5 + 2 * count


def transaction_limit(count: int, baudrate: int, turnaround: float) -> float:
    """The physical lower bound on one read of ``count`` registers, in seconds.

    T = (13 + 2N)·11/baud + 2·t3.5 + turnaround: request and answer bytes on the wire, the gap
    after each frame, and the device's own reaction time.
    """
    total = READ_REQUEST_BYTES + read_response_bytes(count)
    return wire_time(total, baudrate) + 2 * t35(baudrate) + turnaround


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _table()


def crc16(data: bytes) -> int:
    """CRC-16/Modbus (poly 0xA001 reflected, init 0xFFFF) as an integer.

    On the wire it is sent low byte first: ``crc16(b).to_bytes(2, "little")``.
    """
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    """``frame`` followed by its CRC, low byte first."""
    return frame + crc16(frame).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    """True if the last two bytes of ``frame`` are the CRC of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def read_request(unit_id: int, function: int, address: int, count: int) -> bytes:
    """The RTU frame reading ``count`` registers from ``address`` (FC 3 or 4)."""
    if function not in (READ_HOLDING, READ_INPUT):
        raise ValueError(f"not a register read function: {function}")
    if not 1 <= count <= 125:
        raise ValueError(f"count must be 1..125, got {count}")
    if not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError(f"address range {address}+{count} outside 0..65535")
    return with_crc(struct.pack(">BBHH", unit_id, function, address, count))


class Verdict(Enum):
    """What the bytes received so far amount to (see `parse_read_answer`).

    The values of the fault verdicts are the fault class names of `gateway.errors.FAULT_CLASSES`.
    """

    OK = "ok"
    EXCEPTION = "exception"
    #: Nothing final yet: wait for more bytes, for silence or for the deadline.
    PENDING = "pending"
    CRC = "crc"
    BYTE_COUNT = "byte_count"
    WRONG_FUNCTION = "wrong_function"
    WRONG_UNIT = "wrong_unit"


#: The verdicts that fail the transaction once the line has gone quiet.
FAULT_VERDICTS = frozenset(
    {Verdict.CRC, Verdict.BYTE_COUNT, Verdict.WRONG_FUNCTION, Verdict.WRONG_UNIT}
)
#: Largest byte count of a register read answer (125 registers).
MAX_BYTE_COUNT = 250


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete, CRC-valid frame of a shape a master can recognise, at ``start:end`` of a
    receive buffer: a read answer (FC 1-4, length from its byte count), a write answer
    (FC 5, 6, 15, 16: eight bytes) or an exception answer (function | 0x80: five bytes)."""

    start: int
    raw: bytes

    @property
    def end(self) -> int:
        """Index just after the frame."""
        return self.start + len(self.raw)

    @property
    def unit(self) -> int:
        """The unit id it claims to come from."""
        return self.raw[0]

    @property
    def function(self) -> int:
        """The function code without the exception bit."""
        return self.raw[1] & 0x7F

    @property
    def is_exception(self) -> bool:
        """True for an exception answer (``function | 0x80``)."""
        return bool(self.raw[1] & 0x80)

    @property
    def byte_count(self) -> int | None:
        """The byte count of a read answer; None for other shapes."""
        if self.is_exception or self.function not in _READ_ANSWERS:
            return None
        return self.raw[2]


_READ_ANSWERS = frozenset({1, 2, READ_HOLDING, READ_INPUT})
_WRITE_ANSWERS = frozenset({5, 6, 15, 16})


def _never(_index: int) -> float:
    return math.inf


def _no_lower_bound(_length: int) -> float:
    return -math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class Expected:
    """What else may legitimately be on the line while the master waits (see `parse_read_answer`).

    ``late`` maps ``(unit, function, byte_count)`` of a request whose answer may still come (it
    failed: timeout or garbled answer) to the loop time until which it is expected; ``copies`` maps
    a unit to its last answer, byte for byte (a duplicate of it is not news). ``arrived(i)`` is
    when byte ``i`` of the buffer arrived; ``earliest(n)`` is the earliest moment the last byte of
    an ``n``-byte answer to the current request can physically arrive (request and answer on the
    wire at the baud rate); a frame complete before that is not an answer to this request.
    """

    late: Mapping[tuple[int, int, int], float] = field(default_factory=dict)
    copies: Mapping[int, bytes] = field(default_factory=dict)
    arrived: Callable[[int], float] = _never
    earliest: Callable[[int], float] = _no_lower_bound

    def explains(self, frame: Frame) -> bool:
        """True if ``frame`` is a late answer or a duplicate we have reason to expect."""
        if self.copies.get(frame.unit) == frame.raw:
            return True
        arrived = self.arrived(frame.end - 1)
        if frame.is_exception:
            return any(
                unit == frame.unit and function == frame.function and arrived <= until
                for (unit, function, _), until in self.late.items()
            )
        count = frame.byte_count
        if count is None:
            return False
        until = self.late.get((frame.unit, frame.function, count))
        return until is not None and arrived <= until

    def too_early(self, end: int, length: int) -> bool:
        """True if the ``length`` bytes ending before ``end`` were all there before an answer of
        that length to the current request could have been."""
        return self.arrived(end - 1) < self.earliest(length)


NOTHING_EXPECTED = Expected()


@dataclass(frozen=True, slots=True)
class Parsed:
    """Result of `parse_read_answer`.

    ``registers`` for OK, ``code`` for EXCEPTION. ``used`` is the number of bytes the verdict
    covers: up to the end of the answer for OK/EXCEPTION, the whole buffer otherwise. Within
    them, ``stale`` lists the unit of every frame recognised as a late answer or duplicate,
    ``strays`` counts other complete frames that were skipped (a unit speaking with no reason to,
    not blamed on the unit asked because a valid answer, or nothing final, came), and ``noise``
    counts bytes that belong to no frame. ``missing`` (PENDING only) is how many bytes a frame
    that starts like ours still lacks, 0 if none does; ``frame`` is the answer or the faulty
    frame.
    """

    verdict: Verdict
    registers: tuple[int, ...] = ()
    code: int = 0
    used: int = 0
    stale: tuple[int, ...] = ()
    strays: int = 0
    noise: int = 0
    missing: int = 0
    frame: bytes = b""


def frame_length(buf: bytes, start: int = 0) -> int | None:
    """Length of the frame of a recognisable shape starting at ``buf[start]``, if the bytes
    there tell (see `Frame`); None for an unknown function code or too few bytes."""
    if len(buf) - start < 2:
        return None
    function = buf[start + 1]
    if function & 0x80:
        return 5
    if function in _READ_ANSWERS:
        return 5 + buf[start + 2] if len(buf) - start >= 3 else None
    if function in _WRITE_ANSWERS:
        return 8
    return None


def find_frames(buf: bytes) -> list[Frame]:
    """Every complete CRC-valid frame in ``buf``, scanning from the start: a frame found is
    skipped as a whole (its data is never searched for frames), any other byte is passed over
    one at a time, so a frame is found after noise of any length."""
    frames = []
    i = 0
    while i < len(buf):
        length = frame_length(buf, i)
        if length is not None and i + length <= len(buf) and crc_ok(buf[i : i + length]):
            frames.append(Frame(i, bytes(buf[i : i + length])))
            i += length
        else:
            i += 1
    return frames


def parse_read_answer(
    buf: bytes,
    *,
    unit_id: int,
    function: int,
    count: int,
    expected: Expected = NOTHING_EXPECTED,
) -> Parsed:
    """Find, anywhere in ``buf`` (everything received since the request), the frame that is the
    valid answer to *our* read: our unit, our function (or its exception), byte count ``2 *
    count``, CRC right, not complete before it could have been. Bytes before it are skipped:
    noise, late answers and duplicates that ``expected`` explains (``stale``), other frames
    (``strays``).

    Without a valid answer, the first of these in the buffer is the verdict (final once the line
    has gone quiet: the caller waits a moment for a valid answer after it):

    - CRC: a frame starting with our unit and function whose CRC is wrong;
    - BYTE_COUNT: our unit and function with an impossible byte count (odd, above 250), a byte
      count that disagrees with the frame's length (the CRC is right at another length), or a
      complete valid answer of another byte count that ``expected`` does not explain;
    - WRONG_FUNCTION: a valid frame of our unit for another function;
    - WRONG_UNIT: a valid answer from another unit that ``expected`` does not explain.

    Otherwise PENDING, with ``missing`` bytes if a frame of ours is still incomplete (the caller
    judges it "truncated" once those bytes' wire time has passed in silence) and ``noise``
    (judged "garbage" at the deadline).
    """
    frames = find_frames(buf)
    stale: list[int] = []
    strays = 0
    faults: list[tuple[int, Verdict, bytes]] = []
    for frame in frames:
        early = expected.too_early(frame.end, len(frame.raw))
        ours = frame.unit == unit_id and frame.function == function and not early
        if ours and (frame.is_exception or frame.byte_count == 2 * count):
            exception = frame.is_exception
            return Parsed(
                Verdict.EXCEPTION if exception else Verdict.OK,
                registers=() if exception else struct.unpack(f">{count}H", frame.raw[3:-2]),
                code=frame.raw[2] if exception else 0,
                used=frame.end,
                stale=tuple(stale),
                strays=strays + len(faults),
                noise=_noise(frames, frame.start),
                frame=frame.raw,
            )
        if expected.explains(frame) or (early and frame.unit == unit_id):
            stale.append(frame.unit)  # a late answer or a copy, not news
        elif early:
            strays += 1  # complete before our request could be answered: not its answer
        elif frame.unit != unit_id:
            faults.append((frame.start, Verdict.WRONG_UNIT, frame.raw))
        elif frame.function != function:
            faults.append((frame.start, Verdict.WRONG_FUNCTION, frame.raw))
        else:
            faults.append((frame.start, Verdict.BYTE_COUNT, frame.raw))
    broken, missing = _broken_ours(
        buf, frames, unit_id=unit_id, function=function, count=count, expected=expected
    )
    if broken is not None:
        faults.append(broken)
    noise = _noise(frames, len(buf))
    if faults:
        faults.sort(key=lambda fault: fault[0])
        _, verdict, raw = faults[0]
        return Parsed(
            verdict,
            used=len(buf),
            stale=tuple(stale),
            strays=strays + sum(1 for f in faults[1:] if f is not broken),
            noise=noise,
            frame=raw,
        )
    return Parsed(
        Verdict.PENDING,
        used=len(buf),
        stale=tuple(stale),
        strays=strays,
        noise=noise,
        missing=missing,
    )


def sort_leftovers(buf: bytes, expected: Expected = NOTHING_EXPECTED) -> Parsed:
    """What bytes left on the line between transactions amount to: frames ``expected`` explains
    (``stale``), other frames (``strays``) and ``noise``; always PENDING."""
    frames = find_frames(buf)
    stale = tuple(f.unit for f in frames if expected.explains(f))
    return Parsed(
        Verdict.PENDING,
        used=len(buf),
        stale=stale,
        strays=len(frames) - len(stale),
        noise=_noise(frames, len(buf)),
    )


def _noise(frames: list[Frame], end: int) -> int:
    """Bytes before ``end`` that belong to none of ``frames``."""
    return end - sum(len(f.raw) for f in frames if f.end <= end)


def _framed(frames: list[Frame], index: int) -> bool:
    return any(f.start <= index < f.end for f in frames)


def _broken_ours(
    buf: bytes,
    frames: list[Frame],
    *,
    unit_id: int,
    function: int,
    count: int,
    expected: Expected,
) -> tuple[tuple[int, Verdict, bytes] | None, int]:
    """The first broken frame that starts like ours (outside the valid frames), as (start,
    verdict, bytes), and the bytes still missing for the longest incomplete one."""
    expected_length = read_response_bytes(count)
    missing = 0
    for i in range(len(buf) - 1):
        if buf[i] != unit_id or buf[i + 1] not in (function, function | 0x80) or _framed(frames, i):
            continue
        rest = bytes(buf[i:])
        if rest[1] & 0x80:
            length = 5
        elif len(rest) < 3:
            missing = max(missing, expected_length - len(rest))
            continue
        elif rest[2] % 2 or rest[2] > MAX_BYTE_COUNT:
            if not expected.too_early(len(buf), len(rest)):
                return (i, Verdict.BYTE_COUNT, rest), 0
            continue
        else:
            length = 5 + rest[2]
        if expected.too_early(min(len(buf), i + length), min(length, len(rest))):
            continue
        if len(rest) != length and not rest[1] & 0x80 and len(rest) >= 5 and crc_ok(rest):
            # The CRC is right at the end of the burst, not where the byte count says.
            return (i, Verdict.BYTE_COUNT, rest), 0
        if len(rest) >= length:
            return (i, Verdict.CRC, rest[:length]), 0
        missing = max(missing, length - len(rest))
    return None, missing
