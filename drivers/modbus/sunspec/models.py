"""The SunSpec model layouts the gateway decodes, loaded from the shipped ``models.json``.

``models.json`` is generated from the SunSpec Alliance's model definitions (as shipped in
pysunspec2) by ``tools/gen_sunspec_models.py``; a test checks it still equals its source. Shipping
a copy keeps pysunspec2 out of the runtime: on a Pi the gateway needs only these ~13 layouts.

A model is a fixed block (whose first two points are always ``ID`` and ``L``, the model id and the
length in registers of what follows them) and optionally one repeating block, repeated as often
as the length announced in ``L`` allows (model 160: one block per MPPT input).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

_PACKAGE = "drivers.modbus.sunspec"


@dataclass(frozen=True, slots=True, kw_only=True)
class PointDef:
    """One SunSpec point: ``size`` registers of SunSpec ``type`` (``int16``, ``acc32``, ...).

    ``sf`` names the scale-factor point (searched in the point's own block first, then in the
    fixed block) or is a constant power of ten; ``None`` means the value is not scaled.
    """

    name: str
    type: str
    size: int
    sf: str | int | None = None
    units: str = ""
    label: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupDef:
    """A block of consecutive points."""

    name: str
    points: tuple[PointDef, ...]

    @property
    def size(self) -> int:
        """Registers the block occupies."""
        return sum(p.size for p in self.points)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelDef:
    """A SunSpec model: its fixed block (starting with ``ID`` and ``L``) and repeating block."""

    id: int
    name: str
    label: str
    fixed: GroupDef
    repeating: GroupDef | None = None

    def repeat_count(self, length: int) -> int:
        """How many repeating blocks a model announcing ``L = length`` carries.

        Raises `ValueError` if ``length`` does not fit the layout (shorter than the fixed block,
        or a remainder that is not a whole number of repeating blocks): the device's map is
        then not this model, and decoding it would produce wrong numbers.
        """
        rest = length + 2 - self.fixed.size
        if rest < 0:
            raise ValueError(
                f"model {self.id}: length {length} is shorter than its fixed block "
                f"({self.fixed.size - 2})"
            )
        if self.repeating is None:
            if rest:
                raise ValueError(
                    f"model {self.id}: length {length}, expected {self.fixed.size - 2}"
                )
            return 0
        count, remainder = divmod(rest, self.repeating.size)
        if remainder:
            raise ValueError(
                f"model {self.id}: length {length} is not the fixed block plus whole "
                f"{self.repeating.size}-register repeating blocks"
            )
        return count


def _point(data: Mapping[str, Any]) -> PointDef:
    return PointDef(
        name=str(data["name"]),
        type=str(data["type"]),
        size=int(data["size"]),
        sf=data.get("sf"),
        units=str(data.get("units", "")),
        label=str(data.get("label", "")),
    )


def _group(data: Mapping[str, Any]) -> GroupDef:
    return GroupDef(name=str(data["name"]), points=tuple(_point(p) for p in data["points"]))


@functools.cache
def model_definitions() -> Mapping[int, ModelDef]:
    """Every shipped model layout by model id (read once, immutable)."""
    text = resources.files(_PACKAGE).joinpath("models.json").read_text(encoding="utf-8")
    models: dict[int, ModelDef] = {}
    for key, data in json.loads(text)["models"].items():
        repeating = data.get("repeating")
        models[int(key)] = ModelDef(
            id=int(data["id"]),
            name=str(data["name"]),
            label=str(data.get("label", "")),
            fixed=_group(data),
            repeating=_group(repeating) if repeating else None,
        )
    return MappingProxyType(models)


#: Model ids the gateway decodes, ascending.
SUPPORTED_MODELS: tuple[int, ...] = (1, 101, 102, 103, 111, 112, 113, 120, 160, 201, 202, 203, 204)
