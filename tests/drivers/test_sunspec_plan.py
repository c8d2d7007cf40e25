"""SunSpec read planning: property tests over random model layouts (Hypothesis).

The contract under test (``drivers/modbus/sunspec/plan.py``): a model that fits in one read is
never split; a longer model is split only between whole blocks (or between points of a block
that alone is too long); and every scaled value is decoded with the scale factor that was in the
device *when that value was read* — from the same read, or, where no read can hold both, from a
read bracketed by a re-read of the scale factor that agrees with it.

The second property drives `read_models` against a fake device whose values change with every
request and whose scale factors change at moments Hypothesis picks, and checks each decoded value
against the device's state at the instant of the value's own read. Scale factors only ever move
forward (each change gives a value not seen before): a factor that changes and changes back
between two reads milliseconds apart is the one case a re-read cannot see (documented in the
planner).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.sunspec.decode import DecodedModel, decode_point, scale
from drivers.modbus.sunspec.discovery import ModelLocation
from drivers.modbus.sunspec.models import GroupDef, ModelDef, PointDef, model_definitions
from drivers.modbus.sunspec.plan import Span, model_references, plan_spans, read_models
from gateway.errors import DecodeError

_SIZES = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "acc32": 2,
    "float32": 2,
    "enum16": 1,
    "bitfield32": 2,
    "sunssf": 1,
    "pad": 1,
}
_SCALABLE = ("int16", "uint16", "int32", "uint32", "acc32")
_PLAIN = ("float32", "enum16", "bitfield32")


@st.composite
def _group(
    draw: st.DrawFn, *, name: str, head: Sequence[PointDef], outer_sfs: Sequence[str], most: int
) -> GroupDef:
    """A block: ``head`` points, then random points; scaled points refer to a scale factor of
    the block itself (before or after them) or of ``outer_sfs`` (the fixed block's)."""
    kinds = draw(
        st.lists(
            st.sampled_from(["sf", "sf", "scaled", "scaled", "scaled", "plain", "string", "pad"]),
            min_size=1,
            max_size=most,
        )
    )
    own_sfs = [f"{name}_sf{i}" for i, kind in enumerate(kinds) if kind == "sf"]
    points = list(head)
    for index, kind in enumerate(kinds):
        point_name = f"{name}_p{index}"
        if kind == "sf":
            points.append(PointDef(name=f"{name}_sf{index}", type="sunssf", size=1))
        elif kind == "scaled":
            kind_type = draw(st.sampled_from(_SCALABLE))
            choices = [*own_sfs, *outer_sfs]
            sf: str | int | None = draw(st.sampled_from(choices)) if choices else None
            if draw(st.integers(0, 9)) == 0:
                sf = -1  # a constant power of ten
            points.append(PointDef(name=point_name, type=kind_type, size=_SIZES[kind_type], sf=sf))
        elif kind == "plain":
            kind_type = draw(st.sampled_from(_PLAIN))
            points.append(PointDef(name=point_name, type=kind_type, size=_SIZES[kind_type]))
        elif kind == "string":
            points.append(PointDef(name=point_name, type="string", size=draw(st.integers(1, 8))))
        else:
            points.append(PointDef(name=point_name, type="pad", size=1))
    return GroupDef(name=name, points=tuple(points))


@st.composite
def _model(draw: st.DrawFn, model_id: int) -> ModelDef:
    head = (
        PointDef(name="ID", type="uint16", size=1),
        PointDef(name="L", type="uint16", size=1),
    )
    fixed = draw(_group(name=f"m{model_id}", head=head, outer_sfs=(), most=70))
    repeating = None
    if draw(st.booleans()):
        fixed_sfs = [p.name for p in fixed.points if p.type == "sunssf"]
        repeating = draw(_group(name=f"r{model_id}", head=(), outer_sfs=fixed_sfs, most=24))
    return ModelDef(id=model_id, name=f"m{model_id}", label="", fixed=fixed, repeating=repeating)


@dataclass
class Layout:
    """Random models back to back (with registers between them that are not polled)."""

    definitions: dict[int, ModelDef]
    locations: list[ModelLocation]
    max_count: int
    max_gap: int


@st.composite
def _layouts(draw: st.DrawFn) -> Layout:
    definitions: dict[int, ModelDef] = {}
    locations: list[ModelLocation] = []
    address = draw(st.sampled_from([2, 40002, 50002]))
    for index in range(draw(st.integers(1, 4))):
        model = draw(_model(60000 + index))
        definitions[model.id] = model
        length = model.fixed.size - 2
        if model.repeating is not None:
            length += draw(st.integers(0, 12)) * model.repeating.size
        else:
            length += draw(st.integers(0, 5))  # extra trailing registers, ignored
            trailing = 0
            for point in reversed(model.fixed.points):
                if point.type != "pad":
                    break
                trailing += 1
            if trailing and draw(st.booleans()):
                length = model.fixed.size - 2 - trailing  # the trailing pad left out
        locations.append(ModelLocation(id=model.id, address=address, length=length))
        address += 2 + length + draw(st.integers(0, 30))
    return Layout(
        definitions=definitions,
        locations=locations,
        max_count=draw(st.integers(20, 125)),
        max_gap=draw(st.integers(0, 20)),
    )


def _index(reads: Sequence[Span], address: int) -> int:
    hits = [i for i, span in enumerate(reads) if span.address <= address < span.end]
    assert len(hits) == 1, f"register {address} is in {len(hits)} decoded reads"
    return hits[0]


@settings(max_examples=400, deadline=None)
@given(_layouts())
def test_plans_keep_models_whole_and_scale_factors_with_their_values(layout: Layout) -> None:
    plan = plan_spans(
        layout.locations,
        definitions=layout.definitions,
        max_count=layout.max_count,
        max_gap=layout.max_gap,
    )
    kinds = ["check" if span.verify else "read" for span in plan]
    assert "read" in kinds
    first, last = kinds.index("read"), len(kinds) - 1 - kinds[::-1].index("read")
    assert set(kinds[first : last + 1]) == {"read"}, "checks come before or after the reads"
    pre, reads, post = plan[:first], plan[first : last + 1], plan[last + 1 :]
    for span in plan:
        assert 1 <= span.count <= layout.max_count
    for a, b in itertools.pairwise(reads):
        assert a.end <= b.address, "decoded reads are in address order and never overlap"

    wanted: set[int] = set()
    for location in layout.locations:
        wanted.update(_assert_kept_whole(layout, location, reads, pre, post))
    for span in reads:
        # Every decoded register is read, and a read spans at most max_gap unwanted registers
        # in a row (between models, or a model's ignored extra registers).
        run = 0
        for address in range(span.address, span.end):
            run = 0 if address in wanted else run + 1
            assert run <= layout.max_gap
        assert span.address in wanted and span.end - 1 in wanted
    assert wanted <= {a for span in reads for a in range(span.address, span.end)}
    for check in (*pre, *post):
        assert check.verify[0] == check.address and check.verify[-1] == check.end - 1


def _assert_kept_whole(
    layout: Layout,
    location: ModelLocation,
    reads: Sequence[Span],
    pre: Sequence[Span],
    post: Sequence[Span],
) -> range:
    """The per-model rules; returns the model's value registers."""
    model = layout.definitions[location.id]
    shape = model.shape(location.length)
    span = range(location.address, location.address + shape.size)
    if shape.size <= layout.max_count:
        # A model that fits one read is never split.
        assert _index(reads, span[0]) == _index(reads, span[-1])
    for offset, group in shape.groups():
        start = location.address + offset
        if group.size <= layout.max_count:  # a block that fits one read is never split
            assert _index(reads, start) == _index(reads, start + group.size - 1)
        for point in group.points:  # no point is ever split
            assert _index(reads, start) == _index(reads, start + point.size - 1)
            start += point.size
    for ref in model_references(location, model):
        value_read, sf_read = _index(reads, ref.start), _index(reads, ref.sf)
        if sf_read < value_read:
            assert any(ref.sf in c.verify for c in post), "re-read after the value's read"
        elif sf_read > value_read:
            assert any(ref.sf in c.verify for c in pre), "re-read before the value's read"
    return span


def test_a_model_of_at_most_125_registers_is_never_split_and_neighbours_share_reads() -> None:
    models = [
        ModelLocation(id=103, address=40070, length=50),
        ModelLocation(id=120, address=40122, length=26),
        ModelLocation(id=160, address=40150, length=48),
    ]
    # 52 + 28 = 80 registers, then model 160 (50) would make 130: it gets a read of its own.
    assert plan_spans(models) == [Span(40070, 80), Span(40150, 50)]
    assert plan_spans([models[0], models[2]]) == [Span(40070, 52), Span(40150, 50)]
    meter = ModelLocation(id=203, address=40000, length=105)  # 107 registers
    assert plan_spans([meter, ModelLocation(id=120, address=40107, length=26)]) == [
        Span(40000, 107),
        Span(40107, 28),
    ]


def test_model_160_with_eight_inputs_keeps_whole_blocks_and_rereads_its_scale_factors() -> None:
    mppt = ModelLocation(id=160, address=40000, length=8 + 8 * 20)  # 170 registers
    plan = plan_spans([mppt])
    # The fixed block (10, with DCA_SF..DCWH_SF at 40002..40005) and 5 whole inputs, then the
    # last 3 inputs, then the 4 scale factors again: inputs 6-8 were read without them.
    assert plan == [Span(40000, 110), Span(40110, 60), Span(40002, 4, (40002, 40003, 40004, 40005))]
    assert model_definitions()[160].fixed.offset_of("DCA_SF") == 2


# --- read_models against a device that keeps changing ------------------------------------------


@dataclass
class _Device:
    """Registers as functions of the request count: values change with every request, scale
    factors at the requests in ``sf_changes`` (always to a value not seen before)."""

    layout: Layout
    sf_changes: frozenset[int]
    epoch: int = 0
    read_at: dict[int, int] = field(default_factory=dict)  # address -> epoch of decoded read
    roles: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for location in self.layout.locations:
            self.roles[location.address] = f"id:{location.id}"
            self.roles[location.address + 1] = f"len:{location.length}"
            model = self.layout.definitions[location.id]
            for offset, group in model.shape(location.length).groups():
                address = location.address + offset
                for point in group.points:
                    if point.type == "sunssf":
                        self.roles[address] = "sf"
                    address += point.size

    def sf_value(self, address: int, epoch: int) -> int:
        changes = sum(1 for e in self.sf_changes if e <= epoch)
        return (address % 3) - 4 + changes  # -4..-2, then only upwards

    def word(self, address: int, epoch: int) -> int:
        role = self.roles.get(address, "")
        if role.startswith(("id:", "len:")):
            return int(role.split(":")[1])
        if role == "sf":
            return self.sf_value(address, epoch) & 0xFFFF
        return (address * 31 + epoch * 17) % 5000 + 1  # never a not-implemented pattern

    async def read(self, address: int, count: int) -> list[int]:
        self.epoch += 1
        return [self.word(a, self.epoch) for a in range(address, address + count)]


@settings(max_examples=300, deadline=None)
@given(_layouts(), st.frozensets(st.integers(1, 12), max_size=4))
def test_every_value_is_decoded_with_the_scale_factor_of_its_own_read(
    layout: Layout, sf_changes: frozenset[int]
) -> None:
    device = _Device(layout=layout, sf_changes=sf_changes)
    plan = plan_spans(
        layout.locations,
        definitions=layout.definitions,
        max_count=layout.max_count,
        max_gap=layout.max_gap,
    )
    reads = [s for s in plan if not s.verify]
    first = plan.index(reads[0])
    for offset, span in enumerate(reads):  # the epoch of each decoded read, in plan order
        for address in range(span.address, span.end):
            device.read_at[address] = first + offset + 1
    results = asyncio.run(
        read_models(
            device.read,
            layout.locations,
            definitions=layout.definitions,
            max_count=layout.max_count,
            max_gap=layout.max_gap,
        )
    )
    assert len(results) == len(layout.locations)
    for location, result in zip(layout.locations, results, strict=True):
        model = layout.definitions[location.id]
        refs = model_references(location, model)
        # Withheld exactly when a re-read saw one of its scale factors move.
        moved = any(_changed_between_checks(device, plan, r.sf) for r in refs)
        if isinstance(result, DecodeError):
            assert moved, result
            assert "scale factors" in str(result)
            continue
        assert not moved
        assert isinstance(result, DecodedModel)
        _assert_values_use_their_own_reads_scale_factors(device, location, model, result)


def _changed_between_checks(device: _Device, plan: Sequence[Span], sf: int) -> bool:
    epochs = [i + 1 for i, span in enumerate(plan) if sf in span.verify]
    return any(device.sf_value(sf, e) != device.sf_value(sf, device.read_at[sf]) for e in epochs)


def _assert_values_use_their_own_reads_scale_factors(
    device: _Device, location: ModelLocation, model: ModelDef, result: DecodedModel
) -> None:
    shape = model.shape(location.length)
    blocks = [result.values, *result.repeats]
    for (offset, group), values in zip(shape.groups(), blocks, strict=True):
        address = location.address + offset
        for point in group.points:
            if isinstance(point.sf, str):
                epoch = device.read_at[address]
                words = [device.word(a, epoch) for a in range(address, address + point.size)]
                ref = next(r for r in model_references(location, model) if r.start == address)
                sf = device.sf_value(ref.sf, epoch)  # the factor in force at the value's read
                expected = scale(decode_point(words, point), sf, scaled=True)
                assert values[point.name] == expected, (point.name, epoch)
            address += point.size
