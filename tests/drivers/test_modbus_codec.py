"""Register decoding: hand vectors, sentinels, scaling, and agreement with pymodbus.

Acceptance 2 of issue 3: for every data type and word order, decoding agrees with pymodbus's own
``ModbusClientMixin.convert_from_registers`` (3.16: ``(registers, data_type: DATATYPE,
word_order="big"|"little", string_encoding="utf-8")``, no byte-order parameter) and with vectors
computed by hand from meter datasheets.
"""

from __future__ import annotations

import math
import struct
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from drivers.modbus.codec import (
    DEFAULT_SENTINELS,
    DataType,
    WordOrder,
    decode,
    decode_raw,
    encode_raw,
)

DATATYPE = ModbusClientMixin.DATATYPE
#: Every type with a fixed register count (all but string).
FIXED = [t for t in DataType if t is not DataType.STRING]
#: pymodbus has no bitfield type: a bitfield is the unsigned integer of its width.
PYMODBUS_TYPE = {t: DATATYPE[t.name] for t in FIXED if t.is_numeric} | {
    DataType.BITFIELD16: DATATYPE.UINT16,
    DataType.BITFIELD32: DATATYPE.UINT32,
}
#: pymodbus's word order for each of ours, and whether the bytes within each register must be
#: swapped first: convert_from_registers only knows big-endian registers, so BADC is "swap the
#: bytes of every register, then big" and DCBA "swap, then little".
PYMODBUS_ORDER: dict[WordOrder, tuple[Literal["big", "little"], bool]] = {
    WordOrder.ABCD: ("big", False),
    WordOrder.CDAB: ("little", False),
    WordOrder.BADC: ("big", True),
    WordOrder.DCBA: ("little", True),
}


def _swap_bytes(registers: list[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in registers]


def pymodbus_decode(
    registers: list[int], data_type: DATATYPE, order: WordOrder
) -> int | float | str:
    """pymodbus's reading of ``registers`` in our ``order``."""
    word_order, swap = PYMODBUS_ORDER[order]
    value = ModbusClientMixin.convert_from_registers(
        _swap_bytes(registers) if swap else registers, data_type, word_order=word_order
    )
    assert isinstance(value, int | float | str)
    return value


def pymodbus_encode(value: int | float | str, data_type: DATATYPE, order: WordOrder) -> list[int]:
    """The registers pymodbus writes for ``value`` in our ``order``."""
    word_order, swap = PYMODBUS_ORDER[order]
    registers = ModbusClientMixin.convert_to_registers(value, data_type, word_order=word_order)
    return _swap_bytes(registers) if swap else registers


def _values(data_type: DataType) -> st.SearchStrategy[int | float]:
    bits = 16 * data_type.words
    if data_type is DataType.FLOAT32:
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if data_type is DataType.FLOAT64:
        return st.floats(allow_nan=False, allow_infinity=False)
    if data_type.value.startswith(("u", "bitfield")):
        return st.integers(0, (1 << bits) - 1)
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[DataType, WordOrder, int | float]:
    data_type = draw(st.sampled_from(FIXED))
    order = draw(st.sampled_from(list(WordOrder)))
    return data_type, order, draw(_values(data_type))


@pytest.mark.parametrize(
    ("order", "registers"),
    [
        (WordOrder.ABCD, [0x436E, 0x0000]),
        (WordOrder.CDAB, [0x0000, 0x436E]),
        (WordOrder.BADC, [0x6E43, 0x0000]),
        (WordOrder.DCBA, [0x0000, 0x6E43]),
    ],
)
def test_float32_238_volts_in_every_word_order(order: WordOrder, registers: list[int]) -> None:
    assert decode(registers, DataType.FLOAT32, order) == 238.0
    assert encode_raw(238.0, DataType.FLOAT32, order) == registers


def test_wrong_word_order_gives_a_wrong_number_not_an_error() -> None:
    # The Telegraf #8855 failure mode: nothing fails, the value is just absurd.
    value = decode([0x0000, 0x436E], DataType.FLOAT32, WordOrder.ABCD)
    assert value is not None
    assert value != 238.0


def test_integer_vectors() -> None:
    assert decode([0x1234, 0x5678], DataType.UINT32, WordOrder.ABCD) == 0x12345678
    assert decode([0x5678, 0x1234], DataType.UINT32, WordOrder.CDAB) == 0x12345678
    assert decode([0x3412, 0x7856], DataType.UINT32, WordOrder.BADC) == 0x12345678
    assert decode([0x7856, 0x3412], DataType.UINT32, WordOrder.DCBA) == 0x12345678
    assert decode([0xFFFE], DataType.INT16) == -2
    assert decode([0x0001, 0x0002, 0x0003, 0x0004], DataType.UINT64) == 0x0001000200030004
    assert decode([0x0004, 0x0003, 0x0002, 0x0001], DataType.UINT64, WordOrder.CDAB) == (
        0x0001000200030004
    )


@pytest.mark.parametrize(
    ("registers", "data_type"),
    [
        ([0x8000], DataType.INT16),
        ([0xFFFF], DataType.UINT16),
        ([0x8000, 0x0000], DataType.INT32),
        ([0xFFFF, 0xFFFF], DataType.UINT32),
        ([0x8000, 0, 0, 0], DataType.INT64),
        ([0xFFFF] * 4, DataType.UINT64),
        ([0x7FC0, 0x0000], DataType.FLOAT32),  # NaN
        ([0x7F80, 0x0000], DataType.FLOAT32),  # +inf
        ([0xFF80, 0x0000], DataType.FLOAT32),  # -inf
        ([0x7FF8, 0, 0, 0], DataType.FLOAT64),  # NaN
        ([0xFFF0, 0, 0, 0], DataType.FLOAT64),  # -inf
    ],
)
def test_default_sentinels_decode_to_none(registers: list[int], data_type: DataType) -> None:
    assert decode(registers, data_type, scale=0.1, offset=5.0) is None


def test_explicit_sentinel_replaces_the_default() -> None:
    # Some vendors use INT32_MAX for "not available".
    assert decode([0x7FFF, 0xFFFF], DataType.INT32, sentinel=0x7FFFFFFF) is None
    assert decode([0x8000, 0x0000], DataType.INT32, sentinel=0x7FFFFFFF) == -0x80000000
    # A register pattern and its signed reading are the same sentinel.
    assert decode([0xFFFF], DataType.INT16, sentinel=0xFFFF) is None
    assert decode([0xFFFF], DataType.INT16, sentinel=-1) is None
    assert decode([0x0000, 0x0000], DataType.FLOAT32, sentinel=0.0) is None


def test_default_sentinel_can_be_disabled() -> None:
    assert decode([0xFFFF], DataType.UINT16, use_default_sentinel=False) == 0xFFFF
    # NaN is never a number, whatever the point says.
    assert decode([0x7FC0, 0], DataType.FLOAT32, use_default_sentinel=False) is None


def test_scale_and_offset() -> None:
    assert decode([2345], DataType.INT16, scale=0.1) == pytest.approx(234.5)
    assert decode([0xFF9C], DataType.INT16, scale=0.5, offset=40.0) == pytest.approx(-10.0)
    unscaled = decode([0x0001, 0x0000], DataType.UINT32)
    assert unscaled == 65536
    assert isinstance(unscaled, int)


def test_malformed_input_raises_value_error() -> None:
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode_raw([0x436E], DataType.FLOAT32, WordOrder.ABCD)
    with pytest.raises(ValueError, match="16-bit"):
        decode_raw([0x10000, 0], DataType.UINT32, WordOrder.ABCD)


def test_data_type_widths() -> None:
    with pytest.raises(ValueError, match="length"):
        _ = DataType.STRING.words
    assert {t: t.words for t in FIXED} == {
        DataType.INT16: 1,
        DataType.UINT16: 1,
        DataType.INT32: 2,
        DataType.UINT32: 2,
        DataType.INT64: 4,
        DataType.UINT64: 4,
        DataType.FLOAT32: 2,
        DataType.FLOAT64: 4,
        DataType.BITFIELD16: 1,
        DataType.BITFIELD32: 2,
    }


@given(typed_values())
def test_encode_decode_round_trip(case: tuple[DataType, WordOrder, int | float]) -> None:
    data_type, order, value = case
    registers = encode_raw(value, data_type, order)
    assert len(registers) == data_type.words
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode_raw(registers, data_type, order) == value
    decoded = decode(registers, data_type, order, use_default_sentinel=False)
    assert decoded == value


@pytest.mark.parametrize("order", list(WordOrder))
@pytest.mark.parametrize("data_type", FIXED)
@given(data=st.data())
def test_agrees_with_pymodbus(data_type: DataType, order: WordOrder, data: st.DataObject) -> None:
    # Any register contents (NaN and sentinel patterns included): the same raw number.
    registers = data.draw(
        st.lists(st.integers(0, 0xFFFF), min_size=data_type.words, max_size=data_type.words)
    )
    ours = decode_raw(registers, data_type, order)
    theirs = pymodbus_decode(registers, PYMODBUS_TYPE[data_type], order)
    if isinstance(ours, float) and math.isnan(ours):
        assert isinstance(theirs, float)
        assert math.isnan(theirs)
    else:
        assert ours == theirs
    # Any value pymodbus encodes (a device, in effect) decodes to that value.
    value = data.draw(_values(data_type))
    registers = pymodbus_encode(value, PYMODBUS_TYPE[data_type], order)
    assert decode(registers, data_type, order, use_default_sentinel=False) == value
    assert encode_raw(value, data_type, order) == registers


@given(st.sampled_from(FIXED), st.data())
def test_byte_swapped_orders_mirror_the_plain_ones(
    data_type: DataType, data: st.DataObject
) -> None:
    value = data.draw(_values(data_type))
    swap = [
        int.from_bytes(struct.pack("<H", w), "big")
        for w in encode_raw(value, data_type, WordOrder.ABCD)
    ]
    assert encode_raw(value, data_type, WordOrder.BADC) == swap
    assert encode_raw(value, data_type, WordOrder.DCBA) == list(reversed(swap))


def test_sentinel_table_covers_every_integer_type() -> None:
    assert set(DEFAULT_SENTINELS) == {t for t in FIXED if not t.is_float}


# --- strings ------------------------------------------------------------------------------------

#: Text a device may hold: printable, no NUL (a NUL ends the padding), no trailing space (padding
#: too, for us), at most 32 UTF-8 bytes so it fits 16 registers.
names = (
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=32)
    .map(str.rstrip)
    .filter(lambda text: len(text.encode()) <= 32)
)


@pytest.mark.parametrize("order", list(WordOrder))
@given(text=names, length=st.integers(16, 20))
def test_strings_agree_with_pymodbus(order: WordOrder, text: str, length: int) -> None:
    registers = encode_raw(text, DataType.STRING, order, length=length)
    assert len(registers) == length
    # pymodbus strips trailing NULs only; an empty or space-only name is "no value" for us.
    theirs = pymodbus_decode(registers, DATATYPE.STRING, order)
    assert isinstance(theirs, str)
    assert decode(registers, DataType.STRING, order) == (theirs.rstrip(" ") or None)
    assert decode(registers, DataType.STRING, order) == (text or None)


@given(registers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=20))
def test_any_string_registers_decode_without_error(registers: list[int]) -> None:
    # Invalid UTF-8 becomes U+FFFD: a garbled name is shown, never a failed poll.
    value = decode(registers, DataType.STRING, WordOrder.ABCD)
    assert value is None or isinstance(value, str)


def test_string_padding_and_not_implemented() -> None:
    assert decode([0x4142, 0x4300, 0x0000], DataType.STRING) == "ABC"
    assert decode([0x4142, 0x4320, 0x2020], DataType.STRING) == "ABC"  # space padding
    assert decode([0x0000] * 16, DataType.STRING) is None  # SunSpec "not implemented"
    assert decode([0x2020] * 4, DataType.STRING) is None
    with pytest.raises(ValueError, match="at least 1 register"):
        decode_raw([], DataType.STRING, WordOrder.ABCD)
    with pytest.raises(ValueError, match="more than 2 registers"):
        encode_raw("too long", DataType.STRING, WordOrder.ABCD, length=2)
    with pytest.raises(ValueError, match="length"):
        encode_raw("x", DataType.STRING, WordOrder.ABCD)


def test_string_byte_swap_is_the_pro3em_symptom() -> None:
    # modbus2mqtt/modbus2mqtt#91: a Shelly Pro 3EM named "Pro3EM-1" showed up as "rP3oME1-"
    # when its text registers were read with the bytes of each register swapped.
    registers = encode_raw("Pro3EM-1", DataType.STRING, WordOrder.ABCD, length=4)
    assert registers == [0x5072, 0x6F33, 0x454D, 0x2D31]
    assert decode(registers, DataType.STRING, WordOrder.BADC) == "rP3oME1-"
    assert decode(_swap_bytes(registers), DataType.STRING, WordOrder.BADC) == "Pro3EM-1"
    assert decode(list(reversed(registers)), DataType.STRING, WordOrder.CDAB) == "Pro3EM-1"
    swapped_reversed = list(reversed(_swap_bytes(registers)))
    assert decode(swapped_reversed, DataType.STRING, WordOrder.DCBA) == "Pro3EM-1"


# --- bitfields ----------------------------------------------------------------------------------


def test_bitfields_are_unsigned_and_all_ones_is_not_implemented() -> None:
    # SunSpec model 103 Evt1 (bitfield32): bit 0 GROUND_FAULT, bit 3 OVER_TEMP (SunSpec
    # Information Model, model 103; pysunspec2 treats 0xFFFFFFFF as not implemented).
    assert decode([0x0000, 0x0009], DataType.BITFIELD32) == 0b1001
    assert decode([0x8000, 0x0000], DataType.BITFIELD32) == 0x8000_0000  # never negative
    assert decode([0x0009, 0x0000], DataType.BITFIELD32, WordOrder.CDAB) == 0b1001
    assert decode([0xFFFF, 0xFFFF], DataType.BITFIELD32) is None
    assert decode([0x8001], DataType.BITFIELD16) == 0x8001
    assert decode([0xFFFF], DataType.BITFIELD16) is None
    assert decode([0xFFFF], DataType.BITFIELD16, use_default_sentinel=False) == 0xFFFF
    # A bitfield is never scaled, even if a caller passes a scale.
    assert decode([0x0003], DataType.BITFIELD16, scale=0.1) == 3


# --- hand vectors from datasheets ---------------------------------------------------------------


def test_sdm630_phase_1_voltage_float32_abcd() -> None:
    # Eastron SDM630 Modbus protocol: "Phase 1 line to neutral volts", register 30001, i.e.
    # input register address 0x0000, 4-byte IEEE 754 float, high word first (ABCD); see e.g.
    # https://ob121.com/doku.php?id=de:hw:eastron_modbus. By hand: 0x4366 0x6666 is
    # sign 0, exponent 0x86 = 134 (2^7 = 128), mantissa 1 + 0x666666 / 2^23 = 1.8 (to float32
    # precision), so 128 * 1.8 = 230.4 V.
    registers = [0x4366, 0x6666]
    value = decode(registers, DataType.FLOAT32, WordOrder.ABCD)
    assert value == struct.unpack(">f", struct.pack(">f", 230.4))[0]
    assert value == pytest.approx(230.4, abs=1e-5)
    assert encode_raw(230.4, DataType.FLOAT32, WordOrder.ABCD) == registers


def test_telegraf_8855_cdab_float() -> None:
    # influxdata/telegraf#8855: holding registers 2-3, "32 bit float, little endian byte swap"
    # (CDAB), expected 238.45-239.10 V, shown as 11313223.24. That number is the IEEE bit pattern
    # 0x436E9BD4 taken as an integer and scaled by 0.01 (Telegraf's old fixed-point FLOAT32,
    # the maintainers' answer was FLOAT32-IEEE): 0x436E9BD4 = 1131322324, * 0.01 = 11313223.24.
    # So the word order was right; the type was wrong. On the wire, CDAB: low word first.
    registers = [0x9BD4, 0x436E]
    right = decode(registers, DataType.FLOAT32, WordOrder.CDAB)
    assert right == pytest.approx(238.6087, abs=1e-4)
    assert 238.45 <= float(right or 0) <= 239.10
    # The reading reported in the issue.
    wrong_type = decode(registers, DataType.UINT32, WordOrder.CDAB, scale=0.01)
    assert wrong_type == pytest.approx(11_313_223.24)
    # A wrong word order instead gives a tiny negative number; both at once another absurdity.
    wrong_order = decode(registers, DataType.FLOAT32, WordOrder.ABCD)
    assert wrong_order == pytest.approx(-3.5116e-22, rel=1e-4)
    both_wrong = decode(registers, DataType.UINT32, WordOrder.ABCD, scale=0.01)
    assert both_wrong == pytest.approx(26_143_793.74)


def test_sunspec_int16_with_scale_factor() -> None:
    # SunSpec inverter model 103 (integer + scale factor), as in Fronius Datamanager "Modbus TCP &
    # RTU" (42,0410,2049): W (AC power, int16) followed by W_SF (sunssf, int16); the value is
    # W * 10^W_SF. Registers 0x11D7 = 4567 and 0xFFFF = -1 give 456.7 W; 0x8000 is "not
    # implemented" for both.
    w, w_sf = [0x11D7], [0xFFFF]
    sf = decode(w_sf, DataType.INT16)
    assert sf == -1
    assert decode(w, DataType.INT16, scale=10.0**sf) == pytest.approx(456.7)
    assert decode([0xFE0C], DataType.INT16, scale=10.0**sf) == pytest.approx(-50.0)  # -500
    assert decode([0x8000], DataType.INT16, scale=10.0**sf) is None


def test_int32_energy_counter_lsw_first() -> None:
    # Carlo Gavazzi EM24 "kWh (+) TOT" at offset 0x3E: INT32, least significant word first
    # (CDAB), weight kWh * 10 (EM24-DIN communication protocol; the LSW-first INT32 layout is
    # restated at https://taphome.com/en/compatibility/carlo-gavazzi-em24). 12345.6 kWh is
    # 123456 = 0x0001_E240: low word 0xE240, then high word 0x0001.
    registers = [0xE240, 0x0001]
    assert decode(registers, DataType.INT32, WordOrder.CDAB) == 123_456
    assert decode(registers, DataType.INT32, WordOrder.CDAB, scale=0.1) == pytest.approx(12345.6)
    # Read high word first by mistake: 0xE240_0001 - 2^32 = -499,122,175, a negative counter.
    assert decode(registers, DataType.INT32, WordOrder.ABCD) == -499_122_175


def test_sunspec_manufacturer_string() -> None:
    # SunSpec common model 1: Mn, string of 16 registers (32 bytes), NUL-padded; at 40005 in
    # the Fronius Datamanager map, holding "Fronius".
    registers = [0x4672, 0x6F6E, 0x6975, 0x7300] + [0x0000] * 12
    assert encode_raw("Fronius", DataType.STRING, WordOrder.ABCD, length=16) == registers
    assert decode(registers, DataType.STRING) == "Fronius"
    assert pymodbus_decode(registers, DATATYPE.STRING, WordOrder.ABCD) == "Fronius"
