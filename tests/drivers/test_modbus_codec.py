"""Register decoding: hand vectors, sentinels, scaling, and agreement with pymodbus."""

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

PYMODBUS_TYPE = {t: ModbusClientMixin.DATATYPE[t.name] for t in DataType}
#: pymodbus's convert_from_registers(word_order=...) covers the two orders that keep bytes
#: big-endian within a word (it has no byte_order parameter in 3.16).
PYMODBUS_ORDER: dict[WordOrder, Literal["big", "little"]] = {
    WordOrder.ABCD: "big",
    WordOrder.CDAB: "little",
}


def _values(data_type: DataType) -> st.SearchStrategy[int | float]:
    bits = 16 * data_type.words
    if data_type is DataType.FLOAT32:
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if data_type is DataType.FLOAT64:
        return st.floats(allow_nan=False, allow_infinity=False)
    if data_type.value.startswith("u"):
        return st.integers(0, (1 << bits) - 1)
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[DataType, WordOrder, int | float]:
    data_type = draw(st.sampled_from(list(DataType)))
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
    assert {t: t.words for t in DataType} == {
        DataType.INT16: 1,
        DataType.UINT16: 1,
        DataType.INT32: 2,
        DataType.UINT32: 2,
        DataType.INT64: 4,
        DataType.UINT64: 4,
        DataType.FLOAT32: 2,
        DataType.FLOAT64: 4,
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


@given(
    st.sampled_from(list(DataType)),
    st.sampled_from(list(PYMODBUS_ORDER)),
    st.data(),
)
def test_agrees_with_pymodbus(data_type: DataType, order: WordOrder, data: st.DataObject) -> None:
    registers = data.draw(
        st.lists(st.integers(0, 0xFFFF), min_size=data_type.words, max_size=data_type.words)
    )
    ours = decode_raw(registers, data_type, order)
    theirs = ModbusClientMixin.convert_from_registers(
        registers, PYMODBUS_TYPE[data_type], word_order=PYMODBUS_ORDER[order]
    )
    assert isinstance(theirs, int | float)
    if isinstance(ours, float) and math.isnan(ours):
        assert math.isnan(theirs)
    else:
        assert ours == theirs


@given(st.sampled_from(list(DataType)), st.data())
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
    assert set(DEFAULT_SENTINELS) == {t for t in DataType if not t.is_float}
