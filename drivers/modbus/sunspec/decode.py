"""SunSpec point and model decoding: registers in, scaled values out; pure functions.

SunSpec encodes "not implemented" in-band (SunSpec Information Model Specification, and
pysunspec2's ``mb.py``): int16 0x8000, uint16/enum16/bitfield16 0xFFFF, acc16/acc32/acc64 0,
int32 0x80000000, uint32/enum32/bitfield32 0xFFFFFFFF, int64 0x8000..., uint64 0xFFFF...,
float32/float64 NaN, a string whose first byte is NUL, and a scale factor of 0x8000. Every one of
these decodes to ``None`` here, and so does any value whose scale factor is not implemented:
the gateway reports "no value" rather than a number it cannot scale (pysunspec2 would return the
unscaled raw number in that case; that is the one documented difference).

Scaling follows pysunspec2's ``Point.cvalue`` exactly: ``round(raw * 10**sf, -sf)``, so both
libraries produce the same float for the same registers.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from drivers.modbus.sunspec.models import GroupDef, ModelDef, PointDef
from gateway.model import Value

#: struct format and not-implemented raw value per SunSpec integer type.
_INTEGER: dict[str, tuple[str, int | None]] = {
    "int16": ("h", -0x8000),
    "uint16": ("H", 0xFFFF),
    "count": ("H", 0xFFFF),
    "acc16": ("H", 0),
    "enum16": ("H", 0xFFFF),
    "bitfield16": ("H", 0xFFFF),
    "sunssf": ("h", -0x8000),
    "pad": ("H", None),
    "int32": ("i", -0x8000_0000),
    "uint32": ("I", 0xFFFF_FFFF),
    "acc32": ("I", 0),
    "enum32": ("I", 0xFFFF_FFFF),
    "bitfield32": ("I", 0xFFFF_FFFF),
    "ipaddr": ("I", 0),
    "int64": ("q", -0x8000_0000_0000_0000),
    "uint64": ("Q", 0xFFFF_FFFF_FFFF_FFFF),
    "acc64": ("Q", 0),
}
_FLOAT = {"float32": "f", "float64": "d"}


def _bytes(words: Sequence[int]) -> bytes:
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"register value {word!r} is not a 16-bit word")
    return b"".join(word.to_bytes(2, "big") for word in words)


def decode_point(words: Sequence[int], point: PointDef) -> int | float | str | None:
    """The raw (unscaled) value of ``point`` from exactly ``point.size`` registers.

    SunSpec is big-endian throughout (ABCD). Returns ``None`` for the type's not-implemented
    pattern; raises `ValueError` for a wrong register count or an unknown type.
    """
    if len(words) != point.size:
        raise ValueError(f"point {point.name}: needs {point.size} registers, got {len(words)}")
    data = _bytes(words)
    if point.type in _INTEGER:
        fmt, unimplemented = _INTEGER[point.type]
        if struct.calcsize(">" + fmt) != len(data):
            raise ValueError(f"point {point.name}: {point.type} cannot be {point.size} registers")
        value: int = struct.unpack(">" + fmt, data)[0]
        return None if value == unimplemented else value
    if point.type in _FLOAT:
        number: float = struct.unpack(">" + _FLOAT[point.type], data)[0]
        return None if math.isnan(number) or math.isinf(number) else number
    if point.type == "string":
        if not data or data[0] == 0:
            return None
        return data[:1].decode("utf-8", "replace") + data[1:].rstrip(b"\0").decode(
            "utf-8", "replace"
        )
    if point.type == "eui48":
        return None if data[2:] == b"\xff" * 6 else data[2:].hex(":").upper()
    if point.type == "ipv6addr":
        return None if data[0] == 0 else data.hex()
    raise ValueError(f"point {point.name}: unknown SunSpec type {point.type!r}")


def scale(raw: int | float | str | None, sf: int | None, *, scaled: bool) -> Value:
    """Apply a scale factor the way pysunspec2's ``cvalue`` does; ``None`` stays ``None``.

    ``scaled`` says whether the point declares a scale factor at all; if it does and ``sf`` is
    ``None`` (not implemented), the value is unusable and ``None`` is returned.
    """
    if raw is None or isinstance(raw, str) or not scaled:
        return raw
    if sf is None:
        return None
    if sf == 0:
        return raw
    return round(raw * math.pow(10, sf), -sf)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodedModel:
    """One model instance: scaled values of the fixed block and of each repeating block, keyed
    by SunSpec point name (pad points are left out; they carry no value)."""

    id: int
    name: str
    values: Mapping[str, Value]
    repeats: tuple[Mapping[str, Value], ...] = ()


def _raw_block(words: Sequence[int], group: GroupDef) -> dict[str, int | float | str | None]:
    raw: dict[str, int | float | str | None] = {}
    offset = 0
    for point in group.points:
        raw[point.name] = decode_point(words[offset : offset + point.size], point)
        offset += point.size
    return raw


def _scaled_block(
    group: GroupDef,
    raw: Mapping[str, int | float | str | None],
    fixed_raw: Mapping[str, int | float | str | None],
) -> dict[str, Value]:
    values: dict[str, Value] = {}
    for point in group.points:
        if point.type == "pad":
            continue
        sf: int | None = None
        if isinstance(point.sf, int):
            sf = point.sf
        elif isinstance(point.sf, str):
            source = raw.get(point.sf, fixed_raw.get(point.sf))
            if point.sf not in raw and point.sf not in fixed_raw:
                raise ValueError(f"point {point.name}: scale factor {point.sf} not in the model")
            sf = source if isinstance(source, int) else None
        values[point.name] = scale(raw[point.name], sf, scaled=point.sf is not None)
    return values


def decode_model(model: ModelDef, words: Sequence[int]) -> DecodedModel:
    """Decode a model instance from its registers, starting at its ``ID`` register.

    The layout follows from the announced length ``L = words[1]`` (`ModelDef.shape`: the common
    model without its trailing pad at ``L = 65``, extra trailing registers ignored, the number of
    repeating blocks). ``words`` must hold at least the registers that carry values
    (`ModelShape.size`) and at most ``L + 2``; what lies past the values is not looked at.
    Raises `ValueError` if the ID is not ``model.id``, the length does not fit the layout, or the
    register count is outside that range.
    """
    if len(words) < 2 or words[0] != model.id:
        found = words[0] if words else "nothing"
        raise ValueError(f"expected model {model.id} at this address, found {found}")
    length = words[1]
    shape = model.shape(length)
    if not shape.size <= len(words) <= length + 2:
        raise ValueError(
            f"model {model.id}: need {shape.size} to {length + 2} registers, got {len(words)}"
        )
    fixed_raw = _raw_block(words[: shape.fixed.size], shape.fixed)
    values = _scaled_block(shape.fixed, fixed_raw, fixed_raw)
    blocks: list[Mapping[str, Value]] = []
    for offset, group in shape.groups()[1:]:
        raw = _raw_block(words[offset : offset + group.size], group)
        blocks.append(_scaled_block(group, raw, fixed_raw))
    return DecodedModel(id=model.id, name=model.name, values=values, repeats=tuple(blocks))
