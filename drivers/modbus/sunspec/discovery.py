"""SunSpec discovery: find the "SunS" marker and walk the model chain.

A SunSpec device starts its map with the 32-bit marker 0x53756E53 ("SunS") at one of the
well-known protocol addresses 40000, 0 or 50000 (tried in that order, as pysunspec2 does: 40000
is by far the most common), in the holding registers. Models follow back to back, each as
``ID, L, <L registers>``, until the end marker ``ID = 0xFFFF``. Some devices omit the end marker
and simply reject the read past their last model; that ends the chain too.

The walk needs only a register reader (``read(address, count)``), so it works over any
transport and is tested against the simulator over a real socket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.errors import DecodeError, DeviceRejected

#: "SunS" as two registers.
MARKER = (0x5375, 0x6E53)
#: Protocol addresses where a SunSpec map may start, in the order they are tried.
BASE_ADDRESSES = (40000, 0, 50000)
#: Model id that ends the chain.
END_MODEL_ID = 0xFFFF
#: A device announcing more models than this is treated as malformed (a loop, garbage).
MAX_MODELS = 64

#: Reads ``count`` holding registers from ``address``; raises a `gateway.errors.DeviceError`.
ReadHolding = Callable[[int, int], Awaitable[Sequence[int]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelLocation:
    """One model instance in a device's map: ``address`` of its ``ID`` register, and ``length``
    (the ``L`` register: registers after ``ID`` and ``L``)."""

    id: int
    address: int
    length: int

    @property
    def end(self) -> int:
        """First address after the model."""
        return self.address + 2 + self.length


@dataclass(frozen=True, slots=True, kw_only=True)
class SunSpecMap:
    """Where a device's SunSpec map starts and which models it holds, in map order."""

    base: int
    models: tuple[ModelLocation, ...]

    @property
    def model_ids(self) -> tuple[int, ...]:
        """The model ids in map order (a model may appear more than once)."""
        return tuple(m.id for m in self.models)


async def find_base(read: ReadHolding, bases: Sequence[int] = BASE_ADDRESSES) -> int | None:
    """The first of ``bases`` holding the "SunS" marker, or ``None``.

    A base the device rejects (illegal address) is skipped; a timeout propagates, because a
    device that does not answer cannot be told to be "not SunSpec".
    """
    for base in bases:
        try:
            words = await read(base, 2)
        except DeviceRejected:
            continue
        if tuple(words[:2]) == MARKER:
            return base
    return None


async def discover(read: ReadHolding, bases: Sequence[int] = BASE_ADDRESSES) -> SunSpecMap | None:
    """Find the marker and walk the chain; ``None`` if the device has no SunSpec map.

    Raises `DecodeError` for a malformed chain (more than `MAX_MODELS` models, or a model
    running past address 65535) and lets transport errors (`DeviceTimeout`) propagate.
    """
    base = await find_base(read, bases)
    if base is None:
        return None
    models: list[ModelLocation] = []
    address = base + 2
    while True:
        if address + 2 > 0x10000:
            raise DecodeError(f"SunSpec chain from {base} runs past the address space")
        try:
            model_id, length = (await read(address, 2))[:2]
        except DeviceRejected:
            break  # no end marker: the map simply stops
        if model_id == END_MODEL_ID:
            break
        if len(models) >= MAX_MODELS:
            raise DecodeError(f"SunSpec chain from {base} has more than {MAX_MODELS} models")
        location = ModelLocation(id=model_id, address=address, length=length)
        if location.end > 0x10000:
            raise DecodeError(f"SunSpec model {model_id} at {address} runs past 65535")
        models.append(location)
        address = location.end
    return SunSpecMap(base=base, models=tuple(models))
