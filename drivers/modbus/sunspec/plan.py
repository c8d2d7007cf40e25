"""SunSpec read planning: every value is read together with the scale factor that scales it.

A SunSpec value is an integer plus a scale factor in another register (``W`` and ``W_SF``). A
device may change a scale factor from one instant to the next (an inverter moving ``W_SF`` from 0
to 1 as its power passes 32767 W), so a value read in one request and its scale factor read in
another can be off by a factor of ten. The planner therefore keeps models whole:

- A model of at most ``max_count`` registers (125, the Modbus limit) is never split; neighbouring
  models share a read while the total fits and the registers between them (another model not
  polled, extra trailing registers) are at most ``max_gap``.
- A longer model (model 160 with six or more MPPT inputs) starts a read of its own holding its
  fixed block, whose scale factors are there, and as many whole repeating blocks as fit; the
  remaining repeating blocks follow whole in further reads (a block longer than a read, or a
  fixed block longer than a read, is split between points, never inside one).
- A value that still ended up in another read than its scale factor (a repeating block that uses
  a fixed-block scale factor and did not fit in the first read) is bracketed: the scale-factor
  registers are read again after the value's read (or before it, when the scale factor lies
  after the value), and the model is decoded only if both readings agree. If they disagree the
  scale factor changed while the model was read: `read_models` reports a `DecodeError` for that
  model, and the next poll reads it afresh. (A factor that changes and changes back between two
  reads tens of milliseconds apart would pass the re-read; it is the one case no Modbus read can
  see, since FC 3 reads only contiguous registers.)

A repeating block that carries its own scale factors (SunSpec's newer models) is read whole, so
its values and scale factors always share a read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from drivers.modbus.sunspec.decode import DecodedModel, decode_model
from drivers.modbus.sunspec.discovery import ModelLocation
from drivers.modbus.sunspec.models import ModelDef, model_definitions
from gateway.errors import DecodeError

#: Largest register count of one read (Modbus application protocol, FC 3).
MAX_COUNT = 125
#: Unwanted registers a read may span to join two selected models (same reasoning as profiles).
MAX_GAP = 16

#: Reads ``count`` holding registers from ``address``; raises a `gateway.errors.DeviceError`.
ReadHolding = Callable[[int, int], Awaitable[Sequence[int]]]


@dataclass(frozen=True, slots=True)
class Span:
    """One read request of ``count`` registers from ``address``.

    ``verify`` is empty for a read whose registers are decoded. A check read lists the
    scale-factor addresses it re-reads; their values must equal what the decoded reads returned.
    """

    address: int
    count: int
    verify: tuple[int, ...] = ()

    @property
    def end(self) -> int:
        """First address after the read."""
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class ScaleRef:
    """A scaled point at registers ``[start, end)`` whose scale factor is the register ``sf``."""

    start: int
    end: int
    sf: int


class ModelChanged(DecodeError):
    """A model is no longer what discovery found at its address (another ID or length): the
    device's map changed (firmware update, another device behind a gateway); discover again."""


def model_references(location: ModelLocation, model: ModelDef) -> list[ScaleRef]:
    """Every point of the instance at ``location`` that is scaled by a scale-factor register.

    The scale factor is looked up as the decoder does: in the point's own block first, then in
    the fixed block. Raises `ValueError` if the length does not fit the model (`ModelDef.shape`).
    """
    shape = model.shape(location.length)
    refs: list[ScaleRef] = []
    for offset, group in shape.groups():
        block = location.address + offset
        position = block
        for point in group.points:
            if isinstance(point.sf, str):
                own = group.offset_of(point.sf)
                fixed = shape.fixed.offset_of(point.sf)
                sf = block + own if own is not None else None
                if sf is None and fixed is not None:
                    sf = location.address + fixed
                if sf is not None:  # a missing one is the decoder's error to report
                    refs.append(ScaleRef(position, position + point.size, sf))
            position += point.size
    return refs


def _atoms(location: ModelLocation, model: ModelDef, max_count: int) -> list[tuple[int, int]]:
    """The indivisible register ranges of one model, in address order."""
    shape = model.shape(location.length)
    if shape.size <= max_count:
        return [(location.address, location.address + shape.size)]
    atoms: list[tuple[int, int]] = []
    for offset, group in shape.groups():
        start = location.address + offset
        if group.size <= max_count:
            atoms.append((start, start + group.size))
            continue
        for point in group.points:
            atoms.append((start, start + point.size))
            start += point.size
    return atoms


def plan_spans(
    locations: Sequence[ModelLocation],
    *,
    definitions: Mapping[int, ModelDef] | None = None,
    max_count: int = MAX_COUNT,
    max_gap: int = MAX_GAP,
) -> list[Span]:
    """The reads, in order, that cover the values of every model in ``locations``.

    Check reads (``verify``) that must precede the decoded reads come first, then the decoded
    reads in address order, then the check reads that must follow them (module docstring).
    Raises `ValueError` if a location's length does not fit its model (filter those out first,
    with `ModelDef.shape`) or a point is longer than ``max_count``.
    """
    models = definitions if definitions is not None else model_definitions()
    reads: list[list[int]] = []
    refs: list[ScaleRef] = []
    for location in sorted(locations, key=lambda m: m.address):
        model = models[location.id]
        atoms = _atoms(location, model, max_count)
        refs.extend(model_references(location, model))
        split = len(atoms) > 1
        for index, (start, end) in enumerate(atoms):
            if end - start > max_count:
                raise ValueError(
                    f"model {location.id} at {location.address}: a point of {end - start} "
                    f"registers does not fit in one read of {max_count}"
                )
            if (
                not reads
                or (split and index == 0)
                or end - reads[-1][0] > max_count
                or start - reads[-1][1] > max_gap
            ):
                reads.append([start, end])
            else:
                reads[-1][1] = max(reads[-1][1], end)
    before: set[int] = set()
    after: set[int] = set()
    for ref in refs:
        value_read = _read_index(reads, ref.start)
        sf_read = _read_index(reads, ref.sf)
        if sf_read < value_read:
            after.add(ref.sf)
        elif sf_read > value_read:
            before.add(ref.sf)
    decoded = [Span(start, end - start) for start, end in reads]
    return _checks(before, max_count, max_gap) + decoded + _checks(after, max_count, max_gap)


def _read_index(reads: Sequence[Sequence[int]], address: int) -> int:
    for index, (start, end) in enumerate(reads):
        if start <= address < end:
            return index
    raise ValueError(f"register {address} is in no planned read")


def _checks(addresses: set[int], max_count: int, max_gap: int) -> list[Span]:
    """Check reads covering ``addresses`` (merged across small gaps like decoded reads)."""
    groups: list[list[int]] = []
    for address in sorted(addresses):
        if (
            groups
            and address - groups[-1][-1] - 1 <= max_gap
            and (address - groups[-1][0] < max_count)
        ):
            groups[-1].append(address)
        else:
            groups.append([address])
    return [Span(g[0], g[-1] - g[0] + 1, verify=tuple(g)) for g in groups]


async def read_models(
    read: ReadHolding,
    locations: Sequence[ModelLocation],
    *,
    definitions: Mapping[int, ModelDef] | None = None,
    max_count: int = MAX_COUNT,
    max_gap: int = MAX_GAP,
    where: str = "",
) -> list[DecodedModel | DecodeError]:
    """Read ``locations`` as `plan_spans` plans and decode each; one result per location.

    A model that cannot be decoded gets its own error in the list, so one bad model never
    hides the others: `ModelChanged` if its ID or length is no longer what discovery found,
    `DecodeError` if a scale factor changed between the reads of the model or the registers do
    not decode. Transport errors (`DeviceTimeout`, `DeviceRejected`) propagate: then nothing
    was read consistently. ``where`` prefixes the error messages (the device).
    """
    models = definitions if definitions is not None else model_definitions()
    prefix = f"{where}: " if where else ""
    image: dict[int, int] = {}
    checks: list[tuple[Span, Sequence[int]]] = []
    for span in plan_spans(locations, definitions=models, max_count=max_count, max_gap=max_gap):
        words = await read(span.address, span.count)
        if len(words) != span.count:
            raise DecodeError(
                f"{prefix}asked {span.count} registers at {span.address}, got {len(words)}",
                fault="byte_count",
            )
        if span.verify:
            checks.append((span, words))
        else:
            image.update(zip(range(span.address, span.end), words, strict=True))
    changed = {
        address
        for span, words in checks
        for address in span.verify
        if words[address - span.address] != image[address]
    }
    results: list[DecodedModel | DecodeError] = []
    for location in locations:
        model = models[location.id]
        size = model.shape(location.length).size
        words = [image[a] for a in range(location.address, location.address + size)]
        where_model = f"{prefix}model {location.id} at {location.address}"
        if words[0] != location.id or words[1] != location.length:
            results.append(
                ModelChanged(
                    f"{where_model}: found ID {words[0]}, L {words[1]}; discovery found "
                    f"ID {location.id}, L {location.length}"
                )
            )
            continue
        moved = sorted({r.sf for r in model_references(location, model)} & changed)
        if moved:
            results.append(
                DecodeError(
                    f"{where_model}: scale factors at {moved} changed while the model was "
                    "read; its values are withheld until the next poll"
                )
            )
            continue
        try:
            results.append(decode_model(model, words))
        except ValueError as exc:
            results.append(DecodeError(f"{where_model}: {exc}"))
    return results
