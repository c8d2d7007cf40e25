"""Read planning: fewest reads within the gap and size limits."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import DataType
from drivers.modbus.planner import ReadRequest, plan_profile, plan_reads
from drivers.modbus.profiles import Point, RegisterKind, load_profile


def _point(
    key: str,
    address: int,
    data_type: DataType = DataType.UINT16,
    kind: RegisterKind = RegisterKind.INPUT,
) -> Point:
    return Point(key=key, kind=kind, address=address, data_type=data_type)


def _spans(plan: tuple[ReadRequest, ...]) -> list[tuple[str, int, int]]:
    return [(r.kind.value, r.address, r.count) for r in plan]


def test_contiguous_points_make_one_read() -> None:
    points = [_point(f"p{i}", 10 + 2 * i, DataType.FLOAT32) for i in range(5)]
    plan = plan_reads(points, max_registers_per_read=125, max_gap=0)
    assert _spans(plan) == [("input", 10, 10)]
    assert [p.key for p in plan[0].points] == ["p0", "p1", "p2", "p3", "p4"]


def test_gap_up_to_max_gap_is_merged_and_larger_gap_splits() -> None:
    points = [_point("a", 0), _point("b", 5), _point("c", 20)]
    # a ends at 1, b starts at 5: gap 4; b ends at 6, c at 20: gap 14.
    assert _spans(plan_reads(points, max_registers_per_read=125, max_gap=4)) == [
        ("input", 0, 6),
        ("input", 20, 1),
    ]
    assert _spans(plan_reads(points, max_registers_per_read=125, max_gap=3)) == [
        ("input", 0, 1),
        ("input", 5, 1),
        ("input", 20, 1),
    ]
    assert _spans(plan_reads(points, max_registers_per_read=125, max_gap=14)) == [("input", 0, 21)]


def test_reads_never_exceed_the_size_limit() -> None:
    points = [_point(f"p{i:03}", i * 2, DataType.FLOAT32) for i in range(100)]  # 200 registers
    plan = plan_reads(points, max_registers_per_read=125, max_gap=10)
    assert _spans(plan) == [("input", 0, 124), ("input", 124, 76)]
    small = plan_reads(points, max_registers_per_read=80, max_gap=10)
    assert _spans(small) == [("input", 0, 80), ("input", 80, 80), ("input", 160, 40)]


def test_a_multi_register_point_is_never_split() -> None:
    points = [_point("a", 0, DataType.UINT16), _point("b", 1, DataType.FLOAT64)]
    plan = plan_reads(points, max_registers_per_read=4, max_gap=0)
    assert _spans(plan) == [("input", 0, 1), ("input", 1, 4)]
    with pytest.raises(ValueError, match="needs 4 registers"):
        plan_reads(points, max_registers_per_read=3, max_gap=0)


def test_register_kinds_are_planned_separately() -> None:
    points = [
        _point("h", 0, kind=RegisterKind.HOLDING),
        _point("i0", 0),
        _point("i1", 1),
        _point("h1", 1, kind=RegisterKind.HOLDING),
    ]
    plan = plan_reads(points, max_registers_per_read=125, max_gap=0)
    assert _spans(plan) == [("input", 0, 2), ("holding", 0, 2)]


def test_overlapping_points_share_a_read() -> None:
    # A 32-bit value and its low word exposed as a separate point.
    points = [_point("whole", 10, DataType.UINT32), _point("low", 11, DataType.UINT16)]
    plan = plan_reads(points, max_registers_per_read=125, max_gap=0)
    assert _spans(plan) == [("input", 10, 2)]


def test_sdm630_needs_two_reads_not_fourteen() -> None:
    profile = load_profile("sdm630")
    plan = plan_profile(profile)
    assert _spans(plan) == [("input", 0x0000, 0x004C), ("input", 0x0156, 2)]
    assert sum(len(r.points) for r in plan) == len(profile.points) == 14
    # Without gap merging each contiguous group costs its own request.
    assert _spans(plan_reads(profile.points, max_registers_per_read=80, max_gap=0)) == [
        ("input", 0x0000, 0x0012),
        ("input", 0x0034, 2),
        ("input", 0x0046, 6),
        ("input", 0x0156, 2),
    ]


def test_empty_input_gives_an_empty_plan() -> None:
    assert plan_reads([], max_registers_per_read=125, max_gap=0) == ()


def _optimum(points: list[Point], limit: int, gap: int) -> int:
    """Fewest reads over all partitions of the sorted points into consecutive runs (DP)."""
    ordered = sorted(points, key=lambda p: (p.address, p.count))

    def ok(i: int, j: int) -> bool:
        run = ordered[i:j]
        end = run[0].end
        for point in run[1:]:
            if point.address - end > gap:
                return False
            end = max(end, point.end)
        return end - run[0].address <= limit

    @functools.cache
    def best(i: int) -> int:
        if i == len(ordered):
            return 0
        return min(1 + best(j) for j in range(i + 1, len(ordered) + 1) if ok(i, j))

    return best(0)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 300),
            st.sampled_from([DataType.UINT16, DataType.FLOAT32, DataType.FLOAT64]),
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(4, 40),
    st.integers(0, 20),
)
def test_plan_is_minimal_and_covers_every_point(
    layout: list[tuple[int, DataType]], limit: int, gap: int
) -> None:
    points = [_point(f"p{i}", address, data_type) for i, (address, data_type) in enumerate(layout)]
    plan = plan_reads(points, max_registers_per_read=limit, max_gap=gap)
    assert len(plan) == _optimum(points, limit, gap)
    covered = [p.key for r in plan for p in r.points]
    assert sorted(covered) == sorted(p.key for p in points)
    for request in plan:
        assert 1 <= request.count <= limit
        assert all(request.address <= p.address and p.end <= request.end for p in request.points)
