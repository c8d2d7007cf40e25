"""`drivers.modbus.mbap` against frames built by hand from the specifications.

The PDUs are the worked examples of the Modbus Application Protocol V1.1b3 (6.3 "Read Holding
Registers": registers 108-110 = 0x022B, 0x0000, 0x0064; 6.4 "Read Input Registers": register 9
= 0x000A; 7 "Exception responses"), wrapped in the MBAP header of the Modbus Messaging on TCP/IP
Implementation Guide V1.0b (3.1.3: transaction id, protocol id 0, length = unit id + PDU, unit
id). Nothing here is produced by the code under test.
"""

from __future__ import annotations

import pytest

from drivers.modbus.mbap import Parsed, Verdict, parse_answer, parse_unsolicited, read_request
from gateway.errors import FAULT_CLASSES

#: Application Protocol 6.3: request 03 006B 0003, answer 03 06 022B 0000 0064.
HOLDING_REQUEST = bytes.fromhex("1234 0000 0006 11 03 006B 0003")
HOLDING_ANSWER = bytes.fromhex("1234 0000 0009 11 03 06 022B 0000 0064")
#: Application Protocol 6.4: request 04 0008 0001, answer 04 02 000A.
INPUT_REQUEST = bytes.fromhex("0001 0000 0006 FF 04 0008 0001")
INPUT_ANSWER = bytes.fromhex("0001 0000 0005 FF 04 02 000A")


def holding(buf: bytes, *, finished: frozenset[int] = frozenset()) -> Parsed:
    """Judge ``buf`` as the answer to HOLDING_REQUEST (tid 0x1234, unit 0x11, 3 registers)."""
    return parse_answer(buf, tid=0x1234, unit_id=0x11, function=3, count=3, finished=finished)


def test_requests_are_the_specification_examples() -> None:
    assert read_request(0x1234, 0x11, 3, 0x006B, 3) == HOLDING_REQUEST
    assert read_request(0x0001, 0xFF, 4, 0x0008, 1) == INPUT_REQUEST


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 1, 3, 0, 1), "transaction id"),  # 0 is never sent, so 0 is never ours
        ((0x10000, 1, 3, 0, 1), "transaction id"),
        ((1, 1, 6, 0, 1), "function"),
        ((1, 1, 3, 0, 0), "count"),
        ((1, 1, 3, 0, 126), "count"),  # Application Protocol 6.3: 1..125 (0x7D)
        ((1, 1, 3, 0xFFFF, 2), "address"),
        ((1, 256, 3, 0, 1), "unit id"),
    ],
)
def test_impossible_requests_are_refused(args: tuple[int, int, int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_request(*args)


def test_the_examples_answers_are_accepted() -> None:
    assert holding(HOLDING_ANSWER) == Parsed(
        Verdict.OK, registers=(555, 0, 100), used=len(HOLDING_ANSWER), tid=0x1234
    )
    parsed = parse_answer(INPUT_ANSWER, tid=1, unit_id=0xFF, function=4, count=1, finished=())
    assert (parsed.verdict, parsed.registers, parsed.used) == (Verdict.OK, (10,), 11)


def test_every_prefix_of_an_answer_is_incomplete_so_one_byte_segments_work() -> None:
    for size in range(len(HOLDING_ANSWER)):
        assert holding(HOLDING_ANSWER[:size]).verdict is Verdict.INCOMPLETE, size


def test_bytes_after_the_frame_are_left_for_the_next_judgement() -> None:
    parsed = holding(HOLDING_ANSWER + HOLDING_ANSWER[:5])
    assert parsed.verdict is Verdict.OK
    assert parsed.used == len(HOLDING_ANSWER)


@pytest.mark.parametrize("code", range(0x01, 0x0C))
def test_exception_answers_carry_their_code(code: int) -> None:
    frame = bytes.fromhex("1234 0000 0003 11 83") + bytes([code])
    assert holding(frame) == Parsed(Verdict.EXCEPTION, code=code, used=9, tid=0x1234)


def test_a_protocol_id_other_than_zero_is_garbage_as_soon_as_it_arrived() -> None:
    frame = bytes.fromhex("1234 0001 0009 11 03 06 022B 0000 0064")
    parsed = holding(frame[:4])
    assert (parsed.verdict, parsed.fault, parsed.sync_lost) == (Verdict.FAULT, "garbage", True)
    assert holding(frame).used == len(frame)  # everything: nothing after it can be trusted


def test_noise_before_an_answer_is_garbage() -> None:
    parsed = holding(bytes.fromhex("DEADBEEF00") + HOLDING_ANSWER)
    assert (parsed.fault, parsed.sync_lost) == ("garbage", True)


@pytest.mark.parametrize("length", [0, 1, 255, 300, 0xFFFF])
def test_an_impossible_length_field_is_judged_from_the_header_alone(length: int) -> None:
    header = bytes.fromhex("1234 0000") + length.to_bytes(2, "big")
    parsed = holding(header)  # no need to wait for 64 KiB that will never be a frame
    assert (parsed.verdict, parsed.fault, parsed.sync_lost) == (Verdict.FAULT, "length", True)


def test_the_largest_frame_is_awaited_not_rejected() -> None:
    header = bytes.fromhex("1234 0000 00FE 11 03 FB")  # 254 = unit + 253-byte PDU
    assert holding(header).verdict is Verdict.INCOMPLETE


def test_a_finished_tid_is_stale_and_skipped_even_with_another_shape() -> None:
    # The late answer to an earlier 1-register read: judged by its tid before its size.
    late = bytes.fromhex("1233 0000 0005 11 03 02 0007")
    parsed = holding(late + HOLDING_ANSWER, finished=frozenset({0x1233}))
    assert parsed == Parsed(Verdict.STALE, fault="stale", used=len(late), tid=0x1233)
    assert holding(HOLDING_ANSWER, finished=frozenset({0x1233})).registers == (555, 0, 100)


@pytest.mark.parametrize("tid", [0x0000, 0x1235, 0xFFFF])
def test_a_tid_never_sent_is_wrong_tid_and_keeps_the_stream(tid: int) -> None:
    frame = tid.to_bytes(2, "big") + HOLDING_ANSWER[2:]
    parsed = holding(frame + HOLDING_ANSWER, finished=frozenset({0x1233}))
    assert (parsed.verdict, parsed.fault, parsed.sync_lost) == (Verdict.FAULT, "wrong_tid", False)
    assert parsed.used == len(frame)
    assert "never sent" in parsed.detail


def test_an_answer_from_another_unit_is_wrong_unit() -> None:
    frame = bytes.fromhex("1234 0000 0009 12 03 06 022B 0000 0064")
    parsed = holding(frame)
    assert (parsed.fault, parsed.sync_lost, parsed.used) == ("wrong_unit", False, len(frame))


@pytest.mark.parametrize(
    "frame",
    [
        "1234 0000 0009 11 04 06 022B 0000 0064",  # an FC 04 answer to an FC 03 request
        "1234 0000 0003 11 84 02",  # the exception form of another function
        "1234 0000 0003 11 2B 0E",  # a function never asked
    ],
)
def test_an_answer_for_another_function_is_wrong_function(frame: str) -> None:
    parsed = holding(bytes.fromhex(frame))
    assert (parsed.fault, parsed.sync_lost) == ("wrong_function", False)


def test_a_consistent_answer_with_the_wrong_quantity_is_byte_count() -> None:
    frame = bytes.fromhex("1234 0000 0007 11 03 04 022B 0000")  # 2 registers, 3 asked
    parsed = holding(frame)
    assert (parsed.fault, parsed.sync_lost, parsed.used) == ("byte_count", False, len(frame))


@pytest.mark.parametrize(
    "frame",
    [
        "1234 0000 0009 11 03 08 022B 0000 0064",  # byte count 8 in a 6-byte payload
        "1234 0000 0009 11 03 04 022B 0000 0064",  # byte count 4 in a 6-byte payload
        "1234 0000 0005 11 03 06 022B",  # a short length field: the byte count says more
    ],
)
def test_a_byte_count_disagreeing_with_the_length_loses_the_frame_boundary(frame: str) -> None:
    parsed = holding(bytes.fromhex(frame))
    assert (parsed.fault, parsed.sync_lost) == ("byte_count", True)


@pytest.mark.parametrize(
    "frame",
    [
        "1234 0000 0004 11 83 02 00",  # an exception answer is unit + function + code
        "1234 0000 0002 11 03",  # a read answer without its byte count
    ],
)
def test_a_length_impossible_for_the_answer_is_length(frame: str) -> None:
    parsed = holding(bytes.fromhex(frame))
    assert (parsed.fault, parsed.sync_lost) == ("length", True)


def test_unsolicited_bytes_are_stale_foreign_or_garbage() -> None:
    finished = frozenset({0x1234})
    assert parse_unsolicited(HOLDING_ANSWER, finished=finished).verdict is Verdict.STALE
    foreign = parse_unsolicited(bytes.fromhex("0000") + HOLDING_ANSWER[2:], finished=finished)
    assert (foreign.fault, foreign.sync_lost) == ("wrong_tid", False)
    assert parse_unsolicited(HOLDING_ANSWER[:8], finished=finished).verdict is Verdict.INCOMPLETE
    assert parse_unsolicited(b"\xde\xad\xbe\xef", finished=finished).fault == "garbage"


def test_every_fault_is_a_documented_class() -> None:
    frames = [
        "1234 0001 0009",
        "1234 0000 0001",
        "0000 0000 0009 11 03 06 022B 0000 0064",
        "1234 0000 0009 12 03 06 022B 0000 0064",
        "1234 0000 0009 11 04 06 022B 0000 0064",
        "1234 0000 0009 11 03 08 022B 0000 0064",
    ]
    faults = {holding(bytes.fromhex(frame)).fault for frame in frames}
    assert faults == {
        "garbage",
        "length",
        "wrong_tid",
        "wrong_unit",
        "wrong_function",
        "byte_count",
    }
    assert faults <= set(FAULT_CLASSES)
