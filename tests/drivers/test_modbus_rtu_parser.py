"""`drivers.modbus.rtu.parse_read_answer`: which bytes are the valid answer to *our* request.

Pure function tests on hand-built frames (Modbus over serial line V1.02: unit, function, byte
count, data, CRC-16 low byte first). Issue 15: the answer is found anywhere in what arrived;
everything else is classified, never decoded into values.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.rtu import (
    Expected,
    Parsed,
    Verdict,
    find_frames,
    parse_read_answer,
    sort_leftovers,
    with_crc,
)

UNIT, FC, COUNT = 1, 4, 2


def answer(unit: int = UNIT, function: int = FC, words: tuple[int, ...] = (10, 20)) -> bytes:
    return with_crc(
        bytes([unit, function, 2 * len(words)]) + struct.pack(f">{len(words)}H", *words)
    )


def exception(unit: int = UNIT, function: int = FC, code: int = 2) -> bytes:
    return with_crc(bytes([unit, function | 0x80, code]))


def parse(buf: bytes, expected: Expected | None = None) -> Parsed:
    return parse_read_answer(
        buf, unit_id=UNIT, function=FC, count=COUNT, expected=expected or Expected()
    )


def verdict(buf: bytes, expected: Expected | None = None) -> Verdict:
    return parse_read_answer(
        buf, unit_id=UNIT, function=FC, count=COUNT, expected=expected or Expected()
    ).verdict


@given(st.binary(max_size=120), st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)))
def test_our_answer_is_found_behind_any_noise(noise: bytes, words: tuple[int, int]) -> None:
    buf = noise + answer(words=words)
    parsed = parse_read_answer(buf, unit_id=UNIT, function=FC, count=COUNT)
    assert parsed.verdict is Verdict.OK
    assert parsed.registers == words
    assert parsed.used == len(buf)
    assert parsed.noise <= len(noise)


@given(st.binary(max_size=200).map(lambda b: bytes(x for x in b if x != UNIT)))
def test_bytes_without_our_unit_never_give_values(buf: bytes) -> None:
    parsed = parse_read_answer(buf, unit_id=UNIT, function=FC, count=COUNT)
    assert parsed.verdict not in (Verdict.OK, Verdict.EXCEPTION)
    assert parsed.registers == ()


def test_frames_inside_a_valid_frame_are_not_searched() -> None:
    inner = answer(words=(7, 7))
    outer = with_crc(bytes([9, 4, 12]) + inner + b"\x00" * (12 - len(inner)))
    assert [f.raw for f in find_frames(outer)] == [outer]
    assert verdict(outer, Expected(late={(9, 4, 12): float("inf")})) is Verdict.PENDING


def test_an_answer_from_another_unit_fails_unless_it_is_expected() -> None:
    theirs = answer(unit=7)
    assert verdict(theirs) is Verdict.WRONG_UNIT
    waiting = Expected(late={(7, 4, 4): 10.0}, arrived=lambda i: 5.0)
    parsed = parse_read_answer(theirs, unit_id=UNIT, function=FC, count=COUNT, expected=waiting)
    assert (parsed.verdict, parsed.stale) == (Verdict.PENDING, (7,))
    # After its late-answer window, unit 7 has no reason to speak any more.
    too_late = Expected(late={(7, 4, 4): 10.0}, arrived=lambda i: 11.0)
    assert verdict(theirs, too_late) is Verdict.WRONG_UNIT
    # A late exception answer of that unit and function is expected too.
    assert verdict(exception(unit=7), waiting) is Verdict.PENDING


def test_a_copy_of_a_units_last_answer_is_stale() -> None:
    theirs = answer(unit=7, words=(1, 2))
    parsed = parse(theirs, Expected(copies={7: theirs}))
    assert (parsed.verdict, parsed.stale) == (Verdict.PENDING, (7,))
    assert verdict(answer(unit=7, words=(1, 3)), Expected(copies={7: theirs})) is (
        Verdict.WRONG_UNIT
    )


def test_our_answer_wins_over_any_frame_before_it() -> None:
    buf = answer(unit=7) + answer(function=3) + exception(unit=9) + answer(words=(5, 6))
    parsed = parse_read_answer(buf, unit_id=UNIT, function=FC, count=COUNT)
    assert (parsed.verdict, parsed.registers, parsed.strays) == (Verdict.OK, (5, 6), 3)


def test_a_frame_of_our_unit_for_another_function_is_wrong_function() -> None:
    # The case: an FC 03 answer of the same size for an FC 04 request.
    assert verdict(answer(function=3)) is Verdict.WRONG_FUNCTION
    assert verdict(exception(function=3)) is Verdict.WRONG_FUNCTION
    assert verdict(answer(function=3), Expected(late={(1, 3, 4): float("inf")})) is (
        Verdict.PENDING
    )


def test_byte_counts_that_do_not_fit_the_request() -> None:
    # A consistent answer of another size that no earlier request explains.
    assert verdict(answer(words=(1, 2, 3))) is Verdict.BYTE_COUNT
    # ... and one that an earlier request of ours explains: stale.
    late = Expected(late={(1, 4, 6): float("inf")})
    parsed = parse(answer(words=(1, 2, 3)), late)
    assert (parsed.verdict, parsed.stale) == (Verdict.PENDING, (1,))
    # An impossible byte count (odd, or above 250).
    assert verdict(with_crc(bytes([1, 4, 3, 0, 0, 0]))) is Verdict.BYTE_COUNT
    assert verdict(bytes([1, 4, 252]) + b"\x00" * 20) is Verdict.BYTE_COUNT
    # A byte count that disagrees with the length: the CRC is right where the frame ends.
    assert verdict(with_crc(bytes([1, 4, 4, 0, 9]))) is Verdict.BYTE_COUNT


def test_crc_exception_and_incomplete_frames() -> None:
    ours = answer()
    assert verdict(ours[:-1] + bytes([ours[-1] ^ 1])) is Verdict.CRC
    assert verdict(exception()[:-1] + b"\x00") is Verdict.CRC
    parsed = parse_read_answer(exception(code=0x0B), unit_id=UNIT, function=FC, count=COUNT)
    assert (parsed.verdict, parsed.code) == (Verdict.EXCEPTION, 0x0B)
    for cut in range(2, len(ours)):
        parsed = parse_read_answer(ours[:cut], unit_id=UNIT, function=FC, count=COUNT)
        assert (parsed.verdict, parsed.missing) == (Verdict.PENDING, len(ours) - cut)
    parsed = parse_read_answer(b"\x33\x44" + ours[:1], unit_id=UNIT, function=FC, count=COUNT)
    assert (parsed.verdict, parsed.missing, parsed.noise) == (Verdict.PENDING, 0, 3)


def test_a_frame_complete_before_the_wire_allows_is_not_the_answer() -> None:
    """Every byte arrived at t=1.0; an answer of n bytes cannot be complete before 2.0 + n."""

    def earliest(n: int) -> float:
        return 2.0 + n

    early = Expected(arrived=lambda i: 1.0, earliest=earliest)
    parsed = parse(answer(), early)
    # Ours, yet too early: a copy or a late answer of our unit, not news.
    assert (parsed.verdict, parsed.stale) == (Verdict.PENDING, (1,))
    # Another unit's frame that early is not an answer to our request at all: not its fault.
    parsed = parse(answer(unit=7), early)
    assert (parsed.verdict, parsed.strays) == (Verdict.PENDING, 1)
    # The same bytes arriving in time are the answer.
    in_time = Expected(arrived=lambda i: 100.0, earliest=earliest)
    assert verdict(answer(), in_time) is Verdict.OK
    # An incomplete frame that early is not ours either (nothing is "truncated").
    parsed = parse(answer()[:5], early)
    assert parsed.missing == 0


def test_leftovers_between_transactions() -> None:
    copy = answer(unit=2)
    parsed = sort_leftovers(b"\xaa\xbb" + copy + answer(unit=9), Expected(copies={2: copy}))
    assert (parsed.stale, parsed.strays, parsed.noise) == ((2,), 1, 2)
