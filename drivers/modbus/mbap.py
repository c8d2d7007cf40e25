"""Modbus TCP framing (the MBAP header) as pure functions (no I/O), like `drivers.modbus.rtu`.

A Modbus TCP ADU is ``MBAP header | PDU`` (Modbus Messaging on TCP/IP Implementation Guide
V1.0b, 3.1.3): transaction id (2 bytes, chosen by the client, echoed by the server), protocol id
(2 bytes, 0 = Modbus), length (2 bytes: the bytes that follow, unit id included), unit id
(1 byte, echoed). All fields are big-endian. The PDU is at most 253 bytes (Modbus Application
Protocol V1.1b3, 4.1), so a length field is 2..254: the unit id and a function code at least,
and an ADU is at most 260 bytes. For the register reads the client uses (FC 03/04, 6.3/6.4) the
answer PDU is ``function | byte count (2 x N) | N registers`` and the exception PDU is
``function + 0x80 | exception code``.

`parse_answer` judges the bytes received so far against the request that is outstanding, one
frame at a time, in this order:

1. protocol id not 0 -> ``garbage``: the stream is desynchronised (noise, a foreign protocol,
   or bytes left over from a broken frame), and nothing after it can be trusted;
2. length field outside 2..254 -> ``length``: the frame boundary is unknown, same consequence;
3. (wait here until the whole frame, 6 + length bytes, has arrived: its boundary is known);
4. a transaction id we sent earlier and already finished with -> ``stale`` (a late answer or a
   duplicate): the caller discards that frame and keeps waiting for its own answer;
   a transaction id we never sent (0 included) -> ``wrong_tid``;
5. another unit id than asked -> ``wrong_unit``;
6. another function code than asked (or its exception form) -> ``wrong_function``;
7. for an exception answer a length other than 3 -> ``length``; for a read answer a length
   shorter than 3 (no byte count) -> ``length``; a byte count that disagrees with the length
   (``length - 3``) or with the quantity asked (``2 x N``) -> ``byte_count``.

The tid is judged before the length is compared with *our* request because a stale answer to an
earlier request of another size must be skipped, not taken for a broken frame. ``sync_lost``
tells the caller when the stream can no longer be trusted (the connection must be dropped): for
``garbage`` and ``length``, and for a ``byte_count`` that disagrees with the length (which of the
two fields is wrong, and so where the next frame starts, is unknown).
"""

from __future__ import annotations

import struct
from collections.abc import Container
from dataclasses import dataclass
from enum import Enum

#: MBAP header: transaction id, protocol id, length, unit id.
HEADER_BYTES = 7
#: The bytes before the length field's count starts (tid, protocol, length).
PREFIX_BYTES = 6
#: The protocol id of Modbus.
PROTOCOL_MODBUS = 0
#: Smallest and largest sane length field: unit id + function .. unit id + 253-byte PDU.
MIN_LENGTH = 2
MAX_LENGTH = 254
#: Function codes of the register reads.
READ_HOLDING = 0x03
READ_INPUT = 0x04
#: Most registers one FC 03/04 request may ask for (Application Protocol 6.3).
MAX_READ_COUNT = 125
#: Transaction ids the client uses: 1..65535 (0 is never sent, so a 0 is never ours).
MAX_TID = 0xFFFF


def read_request(tid: int, unit_id: int, function: int, address: int, count: int) -> bytes:
    """The ADU reading ``count`` registers from ``address`` of ``unit_id`` (FC 03 or 04)."""
    if function not in (READ_HOLDING, READ_INPUT):
        raise ValueError(f"not a register read function: {function}")
    if not 1 <= tid <= MAX_TID:
        raise ValueError(f"transaction id must be 1..65535, got {tid}")
    if not 0 <= unit_id <= 255:
        raise ValueError(f"unit id must be 0..255, got {unit_id}")
    if not 1 <= count <= MAX_READ_COUNT:
        raise ValueError(f"count must be 1..125, got {count}")
    if not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError(f"address range {address}+{count} outside 0..65535")
    # Length: unit id (1) + function (1) + address (2) + count (2).
    return struct.pack(">HHHBBHH", tid, PROTOCOL_MODBUS, 6, unit_id, function, address, count)


class Verdict(Enum):
    """What the first frame in the bytes received so far amounts to (see `parse_answer`)."""

    OK = "ok"
    EXCEPTION = "exception"
    INCOMPLETE = "incomplete"
    STALE = "stale"
    FAULT = "fault"


@dataclass(frozen=True, slots=True)
class Parsed:
    """Result of `parse_answer`.

    ``registers`` for OK, ``code`` for EXCEPTION, ``fault`` (a `gateway.errors.FAULT_CLASSES`
    name) for FAULT and STALE. ``used`` is how many bytes the verdict consumed (the frame; for a
    fault with ``sync_lost``, everything received, which the caller throws away with the
    connection). ``tid`` is the frame's transaction id when its header arrived (``None``
    before), so the caller can count a stale frame under the unit it was sent to.
    """

    verdict: Verdict
    registers: tuple[int, ...] = ()
    code: int = 0
    fault: str | None = None
    used: int = 0
    sync_lost: bool = False
    tid: int | None = None
    #: For a fault: what was wrong, for the error message.
    detail: str = ""


def _frame(buf: bytes) -> Parsed | int:
    """The end of the complete, sanely framed frame at the start of ``buf``, or the verdict
    (INCOMPLETE, or a ``garbage``/``length`` fault) when there is none yet."""
    frame_tid: int | None = int.from_bytes(buf[:2]) if len(buf) >= 2 else None
    if len(buf) >= 4 and int.from_bytes(buf[2:4]) != PROTOCOL_MODBUS:
        return _lost("garbage", buf, frame_tid, f"protocol id {buf[2:4].hex()}, not 0000")
    if len(buf) < PREFIX_BYTES:
        return Parsed(Verdict.INCOMPLETE, tid=frame_tid)
    length = int.from_bytes(buf[4:6])
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        return _lost("length", buf, frame_tid, f"length field {length}, not 2..254")
    end = PREFIX_BYTES + length
    if len(buf) < end:
        return Parsed(Verdict.INCOMPLETE, tid=frame_tid)
    return end


def parse_answer(
    buf: bytes,
    *,
    tid: int,
    unit_id: int,
    function: int,
    count: int,
    finished: Container[int],
) -> Parsed:
    """Judge the first frame of ``buf`` as the answer to our read ``tid`` (see the module
    docstring for the order of the checks). ``finished`` holds the transaction ids we sent
    earlier and no longer wait for; it must not contain ``tid``.

    OK, EXCEPTION and FAULT are final for the request; STALE means "drop ``used`` bytes and
    parse again"; INCOMPLETE means "wait for more bytes".
    """
    end = _frame(buf)
    if isinstance(end, Parsed):
        return end
    frame_tid, length = int.from_bytes(buf[:2]), end - PREFIX_BYTES
    if frame_tid != tid:
        return _foreign(frame_tid, end, finished)
    if buf[6] != unit_id:
        return _fault("wrong_unit", end, tid, f"unit {buf[6]}, asked {unit_id}")
    return _judge_pdu(buf, end, length, tid=tid, function=function, count=count)


def _judge_pdu(buf: bytes, end: int, length: int, *, tid: int, function: int, count: int) -> Parsed:
    """Checks 6 and 7 on a complete frame with our tid and unit id."""
    answered = buf[7]
    if answered == function | 0x80:
        return _judge_exception(buf, end, length, tid=tid)
    if answered != function:
        return _fault(
            "wrong_function", end, tid, f"function {answered:#04x}, asked {function:#04x}"
        )
    if length < 3:
        return _lost("length", buf, tid, f"length field {length} in a read answer, not >= 3")
    byte_count = buf[8]
    if byte_count != length - 3:
        return _lost("byte_count", buf, tid, f"byte count {byte_count}, length field {length}")
    if byte_count != 2 * count:
        return _fault("byte_count", end, tid, f"byte count {byte_count}, {count} registers asked")
    registers = struct.unpack_from(f">{count}H", buf, 9)
    return Parsed(Verdict.OK, registers=registers, used=end, tid=tid)


def _judge_exception(buf: bytes, end: int, length: int, *, tid: int) -> Parsed:
    """``function + 0x80 | code``: the length field must be 3 (unit id, function, code)."""
    if length != 3:
        return _lost("length", buf, tid, f"length field {length} in an exception answer, not 3")
    return Parsed(Verdict.EXCEPTION, code=buf[8], used=end, tid=tid)


def parse_unsolicited(buf: bytes, *, finished: Container[int]) -> Parsed:
    """Judge the first frame of bytes that arrived while no request was outstanding (after an
    answer, in the same segment): STALE for a finished tid, a ``wrong_tid`` FAULT for any other
    complete frame (nothing answers a request not yet sent), INCOMPLETE, or a framing fault."""
    end = _frame(buf)
    if isinstance(end, Parsed):
        return end
    return _foreign(int.from_bytes(buf[:2]), end, finished)


def _foreign(frame_tid: int, end: int, finished: Container[int]) -> Parsed:
    """A complete frame with a transaction id other than the one awaited."""
    if frame_tid in finished:
        return Parsed(Verdict.STALE, fault="stale", used=end, tid=frame_tid)
    return _fault("wrong_tid", end, frame_tid, f"transaction id {frame_tid}, never sent")


def _fault(fault: str, used: int, tid: int | None, detail: str) -> Parsed:
    """A well-delimited frame that is not our answer: the stream stays in sync."""
    return Parsed(Verdict.FAULT, fault=fault, used=used, tid=tid, detail=detail)


def _lost(fault: str, buf: bytes, tid: int | None, detail: str) -> Parsed:
    """A fault after which the next frame's start is unknown: everything is consumed."""
    return Parsed(Verdict.FAULT, fault=fault, used=len(buf), sync_lost=True, tid=tid, detail=detail)
