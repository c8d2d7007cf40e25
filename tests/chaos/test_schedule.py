"""The seeded schedule holds every fault kind, is the same for the same seed, and never lets two
process faults overlap (each owns the process it breaks until it is done)."""

from __future__ import annotations

import itertools

import pytest

from tests.chaos.schedule import (
    ALL_KINDS,
    LINKS,
    NETWORK_KINDS,
    PROCESS_KINDS,
    SECOND_BRIDGE,
    make_schedule,
)
from tests.system.test_chaos import LENGTH


@pytest.mark.parametrize("seed", [1, 2, 3, 99])
@pytest.mark.parametrize("length", [LENGTH, 600.0])
def test_every_kind_at_least_once_within_the_length(seed: int, length: float) -> None:
    faults = make_schedule(seed, length)
    assert {f.kind for f in faults} == set(ALL_KINDS)
    for link in LINKS:
        assert {f.kind for f in faults if f.link == link and f.kind in NETWORK_KINDS} == set(
            NETWORK_KINDS
        )
    assert all(f.at >= 0 and f.at + f.duration <= length for f in faults)
    process = [f for f in faults if f.kind in PROCESS_KINDS]
    for first, second in itertools.pairwise(process):
        assert first.at + first.duration < second.at, (first, second)


def test_the_same_seed_gives_the_same_schedule() -> None:
    assert make_schedule(5, 300) == make_schedule(5, 300)
    assert make_schedule(5, 300) != make_schedule(6, 300)


def test_long_schedules_repeat_kinds() -> None:
    faults = make_schedule(1, 600)
    assert sum(f.kind in PROCESS_KINDS for f in faults) >= 100
    assert sum(f.kind == SECOND_BRIDGE for f in faults) == 5


def test_kinds_can_be_left_out() -> None:
    faults = make_schedule(1, 120, exclude=frozenset({"store_kill", "latency", SECOND_BRIDGE}))
    assert {f.kind for f in faults} == set(ALL_KINDS) - {"store_kill", "latency", SECOND_BRIDGE}
    with pytest.raises(ValueError, match="unknown fault kinds"):
        make_schedule(1, 120, exclude=frozenset({"meteor"}))
