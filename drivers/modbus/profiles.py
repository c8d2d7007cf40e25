"""Modbus device profiles: a device is data, a table of points run by one generic engine.

A profile lists the points to read (key, register kind, protocol address, wire type, word order,
scale, offset, unit, invalid sentinel) plus the device's read limits. Profiles shipped with the
gateway live in ``drivers/modbus/profiles/<name>.toml``; an installer can declare another device in
the site configuration, and the config layer hands that table to `profile_from_table`. Either way
the result is the same frozen `Profile`, validated once, so the poller never sees a dict.

TOML layout::

    description = "Eastron SDM630 three-phase meter"
    max_registers_per_read = 80   # optional, default 125 (the Modbus limit)
    max_gap = 40                  # optional, default DEFAULT_MAX_GAP

    [points.voltage_l1]
    register = "input"            # or "holding"
    address = 0x0000              # protocol address, 0-based (30001 in the datasheet is 0)
    type = "float32"              # int16 uint16 int32 uint32 int64 uint64 float32 float64,
                                  # string (needs length), bitfield16 bitfield32
    length = 16                   # string only: registers (2 bytes each), 1..125
    order = "ABCD"                # optional, default ABCD
    scale = 1.0                   # optional
    offset = 0.0                  # optional
    unit = "V"
    invalid = 0x8000              # optional; false disables the type's default sentinel
    description = "Phase 1 line to neutral voltage"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from types import MappingProxyType
from typing import Any

from drivers.modbus.codec import DataType, WordOrder
from gateway.model import MetricSpec

#: Largest register count a single read may ask for (Modbus application protocol, FC 3/4).
MODBUS_MAX_REGISTERS = 125

#: Default largest run of unwanted registers a read may span to save a request. Over RS-485 at
#: 9600 baud a request costs ≈ 30-80 ms of framing, gaps and turnaround, ≈ 13-35 registers of
#: payload, so reading across a small gap is cheaper than a second request.
DEFAULT_MAX_GAP = 16

_PACKAGE = "drivers.modbus"
_PROFILE_DIR = "profiles"


class RegisterKind(StrEnum):
    """Which register table a point lives in; selects the function code (4 or 3)."""

    INPUT = "input"
    HOLDING = "holding"


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One value of a device: where it lives and how to turn its registers into a number.

    ``address`` is the 0-based protocol address (datasheets often print 30001/40001-style
    register numbers, which are address + 1 plus a table prefix). ``sentinel`` is the raw value
    meaning "not available"; ``None`` with ``default_sentinel`` true uses the type's usual pattern
    (`drivers.modbus.codec.DEFAULT_SENTINELS`), and ``default_sentinel`` false disables it.
    ``length`` is the register count of a ``string`` point and must be ``None`` for every other
    type, whose width the type fixes. Strings and bitfields are not quantities: they take no
    scale or offset, and a string no sentinel (all NUL is its "no value").

    Raises `ValueError` naming the point if these rules are broken.
    """

    key: str
    kind: RegisterKind
    address: int
    data_type: DataType
    order: WordOrder = WordOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    sentinel: int | float | None = None
    default_sentinel: bool = True
    description: str = ""
    length: int | None = None

    def __post_init__(self) -> None:
        where = f"point {self.key!r}"
        if self.data_type is DataType.STRING:
            if self.length is None or not 1 <= self.length <= MODBUS_MAX_REGISTERS:
                raise ValueError(
                    f"{where}: type string needs length = 1..{MODBUS_MAX_REGISTERS} "
                    f"(registers, 2 bytes each), got {self.length!r}"
                )
            if self.sentinel is not None:
                raise ValueError(f"{where}: a string takes no invalid value (all NUL is none)")
        elif self.length is not None:
            raise ValueError(
                f"{where}: length applies to type string only, not {self.data_type.value}"
            )
        if not self.data_type.is_numeric and (self.scale != 1 or self.offset != 0):
            raise ValueError(f"{where}: a {self.data_type.value} takes no scale or offset")

    @property
    def count(self) -> int:
        """Number of registers the point occupies."""
        if self.length is not None:
            return self.length
        return self.data_type.words

    @property
    def end(self) -> int:
        """First address after the point."""
        return self.address + self.count

    def metric(self) -> MetricSpec:
        """The `MetricSpec` the driver advertises for this point (``float32`` for an unscaled
        float32 register, whose value is exactly a float32)."""
        unscaled = self.scale == 1 and self.offset == 0
        return MetricSpec(
            key=self.key,
            unit=self.unit,
            description=self.description,
            float32=self.data_type is DataType.FLOAT32 and unscaled,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """A named, validated set of points plus the device's read limits.

    ``max_registers_per_read`` is the device's own limit (many meters accept fewer than the
    protocol's 125); ``max_gap`` bounds how many unwanted registers the planner may read to merge
    two reads (0 for devices that reject reads touching undefined addresses).
    """

    name: str
    description: str
    points: tuple[Point, ...]
    max_registers_per_read: int = MODBUS_MAX_REGISTERS
    max_gap: int = DEFAULT_MAX_GAP
    metrics: Mapping[str, MetricSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.max_registers_per_read <= MODBUS_MAX_REGISTERS:
            raise ValueError(
                f"profile {self.name!r}: max_registers_per_read must be 1..{MODBUS_MAX_REGISTERS},"
                f" got {self.max_registers_per_read}"
            )
        if self.max_gap < 0:
            raise ValueError(f"profile {self.name!r}: max_gap must be >= 0, got {self.max_gap}")
        if not self.points:
            raise ValueError(f"profile {self.name!r}: no points")
        seen: set[str] = set()
        for point in self.points:
            if point.key in seen:
                raise ValueError(f"profile {self.name!r}: duplicate point key {point.key!r}")
            seen.add(point.key)
            if point.address < 0 or point.end > 0x10000:
                raise ValueError(
                    f"profile {self.name!r}: point {point.key!r} address {point.address} "
                    "is outside 0..65535"
                )
            if point.count > self.max_registers_per_read:
                raise ValueError(
                    f"profile {self.name!r}: point {point.key!r} needs {point.count} registers, "
                    f"more than max_registers_per_read={self.max_registers_per_read}"
                )
        metrics = MappingProxyType({p.key: p.metric() for p in self.points})
        object.__setattr__(self, "metrics", metrics)


_POINT_KEYS = frozenset(
    {
        "register",
        "address",
        "type",
        "length",
        "order",
        "scale",
        "offset",
        "unit",
        "invalid",
        "description",
    }
)
_PROFILE_KEYS = frozenset({"description", "max_registers_per_read", "max_gap", "points"})


def _expect(value: object, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    """Return ``value`` if it is an instance of ``kind`` (bool is never an int), else raise."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise ValueError(f"{where}: expected {what}, got {value!r}")
    return value


def _enum(enum: type[StrEnum], value: object, where: str) -> Any:
    choices = ", ".join(m.value for m in enum)
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return enum(value)
    except ValueError:
        raise ValueError(f"{where}: expected one of {choices}, got {value!r}") from None


def _point(profile: str, key: str, table: object) -> Point:
    where = f"profile {profile!r} point {key!r}"
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: expected a table, got {table!r}")
    unknown = set(table) - _POINT_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_POINT_KEYS)}")
    for required in ("register", "address", "type"):
        if required not in table:
            raise ValueError(f"{where}: missing key {required!r}")
    invalid = table.get("invalid")
    sentinel: int | float | None
    if invalid is False:
        sentinel, default_sentinel = None, False
    else:
        sentinel = _expect(invalid, (int, float, type(None)), f"{where}.invalid", "a number")
        default_sentinel = True
    kind = _enum(RegisterKind, table["register"], f"{where}.register")
    address = _expect(table["address"], int, f"{where}.address", "an integer")
    data_type = _enum(DataType, table["type"], f"{where}.type")
    length = _expect(table.get("length"), (int, type(None)), f"{where}.length", "an integer")
    order = _enum(WordOrder, table.get("order", "ABCD"), f"{where}.order")
    scale = _expect(table.get("scale", 1.0), (int, float), f"{where}.scale", "a number")
    offset = _expect(table.get("offset", 0.0), (int, float), f"{where}.offset", "a number")
    unit = _expect(table.get("unit", ""), str, f"{where}.unit", "a string")
    description = _expect(table.get("description", ""), str, f"{where}.description", "a string")
    try:
        return Point(
            key=key,
            kind=kind,
            address=address,
            data_type=data_type,
            length=length,
            order=order,
            scale=float(scale),
            offset=float(offset),
            unit=unit,
            sentinel=sentinel,
            default_sentinel=default_sentinel,
            description=description,
        )
    except ValueError as exc:  # Point's type-dependent rules: name the profile as well
        raise ValueError(f"profile {profile!r} {exc}") from None


def profile_from_table(name: str, table: Mapping[str, object]) -> Profile:
    """Build and validate a `Profile` from a parsed TOML table (layout in the module docstring).

    Raises `ValueError` naming the profile, the point and the key when anything is missing,
    unknown or of the wrong type; the config layer wraps it into a `ConfigError` with the file.
    """
    unknown = set(table) - _PROFILE_KEYS
    if unknown:
        raise ValueError(
            f"profile {name!r}: unknown keys {sorted(unknown)}; allowed: {sorted(_PROFILE_KEYS)}"
        )
    points = table.get("points")
    if not isinstance(points, Mapping) or not points:
        raise ValueError(f"profile {name!r}: expected a non-empty [points] table")
    return Profile(
        name=name,
        description=_expect(
            table.get("description", ""), str, f"profile {name!r}.description", "a string"
        ),
        points=tuple(_point(name, str(key), value) for key, value in points.items()),
        max_registers_per_read=_expect(
            table.get("max_registers_per_read", MODBUS_MAX_REGISTERS),
            int,
            f"profile {name!r}.max_registers_per_read",
            "an integer",
        ),
        max_gap=_expect(
            table.get("max_gap", DEFAULT_MAX_GAP), int, f"profile {name!r}.max_gap", "an integer"
        ),
    )


def available_profiles() -> tuple[str, ...]:
    """Names of the profiles shipped as package data, sorted."""
    folder = resources.files(_PACKAGE).joinpath(_PROFILE_DIR)
    return tuple(
        sorted(
            entry.name.removesuffix(".toml")
            for entry in folder.iterdir()
            if entry.is_file() and entry.name.endswith(".toml")
        )
    )


#: Names of the shipped profiles, computed once at import (reading package data has no side
#: effects beyond that).
PROFILE_NAMES: tuple[str, ...] = available_profiles()


def load_profile(name: str) -> Profile:
    """Load the shipped profile ``name`` (e.g. ``"sdm630"``).

    Raises `ValueError` listing the known names for an unknown profile, and the validation error
    of `profile_from_table` for a malformed file.
    """
    if name not in available_profiles():
        known = ", ".join(available_profiles()) or "(none)"
        raise ValueError(f"unknown Modbus profile {name!r}; known: {known}")
    resource = resources.files(_PACKAGE).joinpath(_PROFILE_DIR, f"{name}.toml")
    with resource.open("rb") as stream:
        table = tomllib.load(stream)
    return profile_from_table(name, table)
