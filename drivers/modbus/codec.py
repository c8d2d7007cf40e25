"""Register decoding as pure functions: 16-bit words in, typed values out.

Modbus defines only 16-bit registers; every wider type is a vendor convention, and vendors disagree
on the order of words and bytes, and a wrong order or type gives a wrong number rather than an
error (Telegraf #8855: a 238.6 V float read as a scaled integer became 11,313,223.24). The word
order is therefore part of every point's declaration, never a global setting. Names follow the usual letters for a 32-bit value whose big-endian bytes are A B C D:

- ``ABCD``: most significant word first, bytes big-endian within each word (the Modbus default);
- ``CDAB``: least significant word first (words reversed), bytes big-endian within each word;
- ``BADC``: most significant word first, bytes swapped within each word;
- ``DCBA``: fully little-endian (words reversed and bytes swapped).

For 64-bit types the same rules apply to four words (``CDAB`` reverses all four words), which is
what pymodbus calls ``word_order="little"``.

Two types are not numbers:

- ``string``: N registers (the point's ``length``), two bytes per register, the first byte in the
  high half (SunSpec, pymodbus ``DATATYPE.STRING``). The word order applies to the register order
  (``CDAB``/``DCBA`` reverse it) and ``BADC``/``DCBA`` swap the two bytes within each register.
  The bytes are UTF-8 (ASCII in practice); trailing NULs and spaces are padding. All-NUL (the
  SunSpec "not implemented" pattern) or nothing but padding decodes to ``None``. Invalid UTF-8
  becomes U+FFFD rather than an error, so one garbled name never costs a device's whole poll.
- ``bitfield16``/``bitfield32``: status and event flags, returned as the unsigned integer (bit 0
  is the least significant bit). All ones (0xFFFF, 0xFFFFFFFF) is "not implemented" in SunSpec
  and decodes to ``None`` by default. A bitfield is never scaled.

Nothing here performs I/O; the driver and the tests share these functions.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from enum import StrEnum

from gateway.model import Value


class DataType(StrEnum):
    """Wire types a register point may declare; the value is the name used in profiles."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"
    BITFIELD16 = "bitfield16"
    BITFIELD32 = "bitfield32"

    @property
    def words(self) -> int:
        """Number of 16-bit registers the type occupies.

        Raises `ValueError` for `STRING`, whose width is the point's ``length``.
        """
        if self is DataType.STRING:
            raise ValueError("string has no fixed width: its point's length gives it")
        return _LAYOUT[self][1]

    @property
    def is_numeric(self) -> bool:
        """True for quantities (integers and floats), which may be scaled; false for strings
        and bitfields."""
        return self not in (DataType.STRING, DataType.BITFIELD16, DataType.BITFIELD32)

    @property
    def is_float(self) -> bool:
        """True for IEEE 754 types, whose NaN and infinities decode to ``None``."""
        return self in (DataType.FLOAT32, DataType.FLOAT64)


class WordOrder(StrEnum):
    """Order of words and of bytes within words; see the module docstring."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


#: struct format character and register count per type.
_LAYOUT: dict[DataType, tuple[str, int]] = {
    DataType.INT16: ("h", 1),
    DataType.UINT16: ("H", 1),
    DataType.INT32: ("i", 2),
    DataType.UINT32: ("I", 2),
    DataType.INT64: ("q", 4),
    DataType.UINT64: ("Q", 4),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
    DataType.BITFIELD16: ("H", 1),
    DataType.BITFIELD32: ("I", 2),
}

#: Raw register patterns that vendors commonly use for "not available", per integer type. A
#: point may declare its own sentinel instead; these apply only when it asks for the default.
DEFAULT_SENTINELS: dict[DataType, int] = {
    DataType.INT16: -0x8000,
    DataType.UINT16: 0xFFFF,
    DataType.INT32: -0x8000_0000,
    DataType.UINT32: 0xFFFF_FFFF,
    DataType.INT64: -0x8000_0000_0000_0000,
    DataType.UINT64: 0xFFFF_FFFF_FFFF_FFFF,
    DataType.BITFIELD16: 0xFFFF,
    DataType.BITFIELD32: 0xFFFF_FFFF,
}


def _reorder(words: Sequence[int], order: WordOrder) -> bytes:
    """Return the big-endian bytes of ``words`` laid out as the wire order ``order`` describes."""
    if order in (WordOrder.CDAB, WordOrder.DCBA):
        words = list(reversed(words))
    swap = order in (WordOrder.BADC, WordOrder.DCBA)
    out = bytearray()
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"register value {word!r} is not a 16-bit word")
        hi, lo = word >> 8, word & 0xFF
        out += bytes((lo, hi)) if swap else bytes((hi, lo))
    return bytes(out)


def decode_raw(words: Sequence[int], data_type: DataType, order: WordOrder) -> int | float | str:
    """Decode exactly ``data_type.words`` registers into the raw number, without scaling; a
    string takes any number of registers (at least one) and comes back with its padding.

    Raises `ValueError` if the register count is wrong or a register is not a 16-bit word: the
    caller (the driver) turns that into a `DecodeError` because it means a malformed answer.
    """
    if data_type is DataType.STRING:
        if not words:
            raise ValueError("string needs at least 1 register, got 0")
        return _reorder(words, order).decode("utf-8", "replace")
    fmt, count = _LAYOUT[data_type]
    if len(words) != count:
        raise ValueError(f"{data_type.value} needs {count} registers, got {len(words)}")
    value: int | float = struct.unpack(">" + fmt, _reorder(words, order))[0]
    return value


def encode_raw(
    value: int | float | str, data_type: DataType, order: WordOrder, *, length: int | None = None
) -> list[int]:
    """Inverse of `decode_raw`: the registers a device would send for ``value``.

    A string is UTF-8 encoded and NUL-padded to ``length`` registers (required for strings).
    Used by tests, simulators and tools that write registers; raises `struct.error` if a number
    does not fit the type and `ValueError` if a string does not fit ``length``.
    """
    if data_type is DataType.STRING:
        if not isinstance(value, str) or length is None or length < 1:
            raise ValueError("a string needs a str value and a length of at least 1 register")
        wire = value.encode("utf-8")
        if len(wire) > 2 * length:
            raise ValueError(f"{value!r} needs {len(wire)} bytes, more than {length} registers")
        wire = wire.ljust(2 * length, b"\0")
    else:
        fmt, _count = _LAYOUT[data_type]
        wire = struct.pack(">" + fmt, value)
    words = [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]
    # _reorder is an involution for every order, so applying it to the canonical words yields
    # the wire layout.
    reordered = _reorder(words, order)
    return [int.from_bytes(reordered[i : i + 2], "big") for i in range(0, len(reordered), 2)]


def decode(
    words: Sequence[int],
    data_type: DataType,
    order: WordOrder = WordOrder.ABCD,
    *,
    scale: float = 1.0,
    offset: float = 0.0,
    sentinel: int | float | None = None,
    use_default_sentinel: bool = True,
) -> Value:
    """Decode one point: raw number → ``raw * scale + offset``, or ``None`` if invalid.

    ``None`` is returned for NaN and ±infinity (floats), for the raw value equal to ``sentinel``
    (compared before scaling, as vendors document it), and, when ``use_default_sentinel`` is
    true and no explicit sentinel is given, for the integer type's `DEFAULT_SENTINELS` entry.
    An integer sentinel may be written signed (-32768) or as the register pattern (0x8000).

    Integers stay integers when ``scale`` is 1 and ``offset`` is 0 (counters must not lose
    precision through a float); anything scaled becomes a float. Strings and bitfields are not
    quantities: ``scale`` and ``offset`` do not apply to them (profiles reject both), and a
    string is returned without its padding, or ``None`` if nothing but padding is left.
    """
    raw = decode_raw(words, data_type, order)
    if isinstance(raw, str):
        return raw.rstrip("\0 ") or None
    if isinstance(raw, float):
        if math.isnan(raw) or math.isinf(raw) or (sentinel is not None and raw == sentinel):
            return None
    else:
        invalid = sentinel
        if invalid is None and use_default_sentinel:
            invalid = DEFAULT_SENTINELS.get(data_type)
        if isinstance(invalid, int) and raw in (invalid, _as_signed(invalid, data_type)):
            return None
        if (scale == 1 and offset == 0) or not data_type.is_numeric:
            return raw
    result = raw * scale + offset
    return None if math.isinf(result) or math.isnan(result) else result


def _as_signed(pattern: int, data_type: DataType) -> int:
    """Interpret a register bit pattern (such as 0x8000) as the signed value of ``data_type``."""
    bits = 16 * data_type.words
    if data_type.value.startswith("int") and pattern >= 1 << (bits - 1):
        return pattern - (1 << bits)
    return pattern
