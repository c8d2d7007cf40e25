"""Modbus RTU framing and line timing, as pure functions (no I/O).

An RTU frame is ``unit | function | data | CRC-16/Modbus (low byte first)``. Frames carry no length
field and no transaction id: the receiver knows a frame ended from its expected length (for the
read functions the master uses) or from 3.5 character times of silence, and it matches an answer
to its request only by unit id and function code. The parser here therefore takes what the
master expects (unit, function, register count) and tells apart, for `drivers.modbus.line`:

- a complete, valid answer (registers) or exception answer (code);
- a complete frame of the expected shape whose CRC is wrong;
- a complete, valid frame from *another* unit or for another request (a stray, e.g. a late answer
  after a timeout), which is skipped so it cannot spoil the current transaction;
- bytes that cannot (yet) be judged: the caller decides "truncated" or "garbage" once the line
  has been silent long enough.

Timing (Modbus over serial line, V1.02, 2.5.1.1): a character is 11 bits (start, 8 data, parity or
a second stop bit, stop); frames are separated by at least t3.5 = 3.5 character times, fixed at
1.75 ms above 19200 baud.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
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
    """What the bytes received so far amount to (see `parse_read_answer`)."""

    OK = "ok"
    EXCEPTION = "exception"
    CRC = "crc"
    INCOMPLETE_OURS = "incomplete_ours"
    INCOMPLETE_UNKNOWN = "incomplete_unknown"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Parsed:
    """Result of `parse_read_answer`.

    ``registers`` for OK, ``code`` for EXCEPTION; ``strays`` counts complete foreign frames that
    were skipped at the start of the buffer; ``used`` is how many bytes the verdict consumed.
    """

    verdict: Verdict
    registers: tuple[int, ...] = ()
    code: int = 0
    strays: int = 0
    used: int = 0


def _foreign_length(buf: bytes) -> int | None:
    """Length of a plausible read answer / exception frame at the start of ``buf``, if known."""
    if len(buf) < 2:
        return None
    function = buf[1]
    if function & 0x80:
        return 5
    if function in (READ_HOLDING, READ_INPUT):
        return 5 + buf[2] if len(buf) >= 3 else None
    return None


def parse_read_answer(buf: bytes, *, unit_id: int, function: int, count: int) -> Parsed:
    """Judge ``buf`` (everything received since the request) as the answer to a read.

    Complete valid frames of other units or shapes at the start are skipped (``strays``). The
    verdict is final for OK, EXCEPTION, CRC and MALFORMED (our header, impossible byte count);
    the INCOMPLETE verdicts mean "wait for more bytes or for silence".
    """
    strays = 0
    offset = 0
    while True:
        rest = buf[offset:]
        ours = _parse_ours(rest, unit_id=unit_id, function=function, count=count)
        if ours is not None and (ours.verdict is not Verdict.MALFORMED or not _stray_length(rest)):
            return Parsed(
                ours.verdict,
                registers=ours.registers,
                code=ours.code,
                strays=strays,
                used=offset + ours.used,
            )
        if skip := _stray_length(rest):
            offset += skip
            strays += 1
            continue
        ours_start = rest[:1] == bytes([unit_id]) and len(rest) < 2
        kind = Verdict.INCOMPLETE_OURS if ours_start else Verdict.INCOMPLETE_UNKNOWN
        return Parsed(kind, strays=strays, used=offset)


def _parse_ours(rest: bytes, *, unit_id: int, function: int, count: int) -> Parsed | None:
    """The verdict on ``rest`` if it starts with our unit and function (normal or exception),
    with ``used`` relative to ``rest``; None if it does not."""
    if len(rest) < 2 or rest[0] != unit_id or rest[1] not in (function, function | 0x80):
        return None
    if rest[1] & 0x80:
        return _parse_exception(rest)
    expected = read_response_bytes(count)
    if len(rest) >= 3 and rest[2] != 2 * count:
        return Parsed(Verdict.MALFORMED, used=len(rest))
    if len(rest) < expected:
        return Parsed(Verdict.INCOMPLETE_OURS)
    if not crc_ok(rest[:expected]):
        return Parsed(Verdict.CRC, used=expected)
    registers = struct.unpack(f">{count}H", rest[3 : expected - 2])
    return Parsed(Verdict.OK, registers=registers, used=expected)


def _parse_exception(rest: bytes) -> Parsed:
    """``unit | function+0x80 | code | CRC``: five bytes."""
    if len(rest) < 5:
        return Parsed(Verdict.INCOMPLETE_OURS)
    if not crc_ok(rest[:5]):
        return Parsed(Verdict.CRC, used=5)
    return Parsed(Verdict.EXCEPTION, code=rest[2], used=5)


def _stray_length(rest: bytes) -> int:
    """Length of the complete, CRC-valid frame of a known shape at the start of ``rest``, or 0."""
    length = _foreign_length(rest)
    if length is not None and len(rest) >= length and crc_ok(rest[:length]):
        return length
    return 0
