"""The SunSpec model layouts the gateway decodes, loaded from the shipped ``models.json``.

``models.json`` is generated from the SunSpec Alliance's model definitions (as shipped in
pysunspec2) by ``tools/gen_sunspec_models.py``; a test checks it still equals its source. Shipping
a copy keeps pysunspec2 out of the runtime: on a Pi the gateway needs only these ~13 layouts.

A model is a fixed block (whose first two points are always ``ID`` and ``L``, the model id and the
length in registers of what follows them) and optionally one repeating block, repeated as often
as the length announced in ``L`` allows (model 160: one block per MPPT input). How an announced
length that differs from the definition is read (the common model without its trailing pad,
extra trailing registers) is `ModelDef.shape`, which follows pysunspec2.
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

    def offset_of(self, name: str) -> int | None:
        """Register offset of point ``name`` from the start of the block; ``None`` if absent."""
        offset = 0
        for point in self.points:
            if point.name == name:
                return offset
            offset += point.size
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelDef:
    """A SunSpec model: its fixed block (starting with ``ID`` and ``L``) and repeating block."""

    id: int
    name: str
    label: str
    fixed: GroupDef
    repeating: GroupDef | None = None

    def repeat_count(self, length: int) -> int:
        """How many repeating blocks a model announcing ``L = length`` carries (see `shape`)."""
        return self.shape(length).repeats

    def shape(self, length: int) -> ModelShape:
        """How an instance announcing ``L = length`` lays out, read as pysunspec2 reads it.

        - ``L`` equal to the definition: the whole fixed block and no extra registers.
        - Shorter by the fixed block's trailing pad (model 1 with ``L = 65``, as older maps and
          many inverters have it; pysunspec2 drops the ``Pad`` point for exactly that case): the
          fixed block without that pad. Only for a model without a repeating block, where no
          value's position depends on the pad.
        - Longer than the definition, for a model without a repeating block: the extra trailing
          registers are ignored (pysunspec2 reads them and decodes none).
        - With a repeating block: the fixed block plus a whole number of repeating blocks.

        Raises `ValueError` otherwise: shorter than the fixed block (less its trailing pad), or a
        remainder that is not a whole repeating block (pysunspec2 fails its whole scan there).
        The device's map is then not this model, and decoding it would produce wrong numbers.
        """
        rest = length + 2 - self.fixed.size
        if rest < 0:
            trimmed = self._without_trailing_pad()
            if self.repeating is None and trimmed is not None and length + 2 >= trimmed.size:
                return ModelShape(
                    fixed=trimmed, repeating=None, repeats=0, extra=length + 2 - trimmed.size
                )
            without = f", {trimmed.size - 2} without its trailing pad" if trimmed else ""
            raise ValueError(
                f"model {self.id}: length {length} is shorter than its fixed block "
                f"({self.fixed.size - 2}{without})"
            )
        if self.repeating is None:
            return ModelShape(fixed=self.fixed, repeating=None, repeats=0, extra=rest)
        count, remainder = divmod(rest, self.repeating.size)
        if remainder:
            raise ValueError(
                f"model {self.id}: length {length} is not the fixed block plus whole "
                f"{self.repeating.size}-register repeating blocks"
            )
        return ModelShape(fixed=self.fixed, repeating=self.repeating, repeats=count, extra=0)

    def _without_trailing_pad(self) -> GroupDef | None:
        points = list(self.fixed.points)
        if not points or points[-1].type != "pad":
            return None
        while points and points[-1].type == "pad":
            points.pop()
        return GroupDef(name=self.fixed.name, points=tuple(points))


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelShape:
    """One model instance as laid out by the length it announces (`ModelDef.shape`).

    ``fixed`` is the fixed block as present (model 1 with ``L = 65`` lacks its trailing pad),
    followed by ``repeats`` copies of ``repeating``, then ``extra`` trailing registers that carry
    nothing the gateway decodes. `size` counts the registers that carry values, from ``ID``.
    """

    fixed: GroupDef
    repeating: GroupDef | None
    repeats: int
    extra: int

    @property
    def size(self) -> int:
        """Registers from the ``ID`` register to the end of the last repeating block."""
        block = self.repeating.size if self.repeating is not None else 0
        return self.fixed.size + self.repeats * block

    def groups(self) -> tuple[tuple[int, GroupDef], ...]:
        """Every block with its register offset from ``ID``: the fixed block, then each repeat."""
        blocks: list[tuple[int, GroupDef]] = [(0, self.fixed)]
        if self.repeating is not None:
            for index in range(self.repeats):
                blocks.append((self.fixed.size + index * self.repeating.size, self.repeating))
        return tuple(blocks)


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
