"""`gateway.health.verdict` on scheduler and buffer state driven by a fake clock.

Pinned: a bus is judged from the later of its last progress and its earliest due time, against
the largest ``interval + guard`` of its devices; so a bus waiting for its next slot or backing
off a dead device for minutes is healthy, and one whose due device makes no progress past the
deadline is not, by name. The buffer is unhealthy only once a reading waited in memory longer
than ``commit_interval + COMMIT_GRACE``. A broker that is away is not a problem.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.app import GatewayRuntime
from gateway.buffer import BufferWorker, MemoryBuffer, SqliteBuffer
from gateway.buffer.writebehind import WriteBehind
from gateway.health import COMMIT_GRACE, Verdict, bus_deadline, verdict
from gateway.model import MetricSpec, Reading, Value, to_epoch_ms, utc_ms
from gateway.scheduler import BusPoller, DeviceState, SequenceCounter


class Idle:
    metrics: Mapping[str, MetricSpec] = {}

    async def open(self) -> None:
        return None

    async def poll(self) -> Mapping[str, Value]:
        return {}

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def poller(name: str, clock: Clock, *devices: tuple[float, float]) -> BusPoller:
    """A bus whose devices have these (interval, guard)."""
    states = [
        DeviceState(id=f"{name}-{i}", driver=Idle(), interval=interval, guard=guard)
        for i, (interval, guard) in enumerate(devices)
    ]

    async def sink(readings: Any) -> None:
        return None

    return BusPoller(
        name=f"bus {name}", devices=states, sink=sink, sequence=SequenceCounter(0), monotonic=clock
    )


@dataclass
class Buffer:
    oldest_unwritten_at: float | None = None
    unwritten: int = 0


@dataclass
class Runtime:
    pollers: list[BusPoller]
    buffer: Buffer = field(default_factory=Buffer)
    config: Any = None


def judge(runtime: Runtime, now: float, commit_interval: float = 2.0) -> Verdict:
    runtime.config = type("C", (), {"buffer": type("B", (), {"commit_interval": commit_interval})})
    return verdict(cast(GatewayRuntime, runtime), now)


def test_a_bus_waiting_for_its_slot_or_backing_off_is_healthy_however_long() -> None:
    clock = Clock()
    bus = poller("a", clock, (10.0, 18.0), (60.0, 18.0))
    assert bus_deadline(bus) == 78.0
    for device in bus.devices:
        device.next_due = clock.now + 300.0  # a dead device backs off for minutes
    assert judge(Runtime([bus]), clock.now + 299.0) == Verdict(ok=True, problems=())


def test_a_due_bus_without_progress_is_stalled_after_its_deadline_only() -> None:
    clock = Clock()
    bus, other = poller("a", clock, (10.0, 18.0), (5.0, 10.0)), poller("b", clock, (5.0, 10.0))
    bus.progress = clock.now  # the end of its last poll
    bus.devices[0].next_due = clock.now + 1.0  # due 1 s later, and then the poll hangs
    bus.devices[1].next_due = clock.now + 50.0
    other.progress = clock.now + 100.0
    other.devices[0].next_due = clock.now + 101.0
    runtime = Runtime([bus, other])

    assert judge(runtime, clock.now + 1.0 + 28.0).ok, "at the deadline: not yet"
    late = judge(runtime, clock.now + 1.0 + 29.0)
    assert late == Verdict(ok=False, problems=("bus a: no progress for 29 s (deadline 28 s)",))


def test_progress_after_the_due_time_counts_from_the_progress() -> None:
    clock = Clock()
    bus = poller("a", clock, (1.0, 10.0))
    bus.devices[0].next_due = clock.now  # due, and the bus is working through it
    bus.progress = clock.now + 5.0  # it opened another device meanwhile
    assert judge(Runtime([bus]), clock.now + 5.0 + 11.0).ok
    assert not judge(Runtime([bus]), clock.now + 5.0 + 11.5).ok


def test_readings_waiting_in_memory_past_the_commit_deadline_are_a_buffer_problem() -> None:
    staged = 500.0
    runtime = Runtime([], Buffer(oldest_unwritten_at=staged, unwritten=42))
    assert judge(runtime, staged + 2.0 + COMMIT_GRACE).ok
    late = judge(runtime, staged + 2.0 + COMMIT_GRACE + 1)
    assert late.problems == (
        f"buffer: 42 readings not written to the card, the oldest for {2 + COMMIT_GRACE + 1:.0f} s "
        f"(deadline {2 + COMMIT_GRACE:.0f} s)",
    )
    assert judge(Runtime([], Buffer()), 10**6).ok, "nothing in memory: nothing to write"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_real_write_behind_reports_its_oldest_unwritten_and_pending_readings(
    kind: str, tmp_path: Path
) -> None:
    storage = MemoryBuffer() if kind == "memory" else SqliteBuffer(tmp_path / "b.sqlite3")

    ts = utc_ms(datetime.now(UTC))

    async def main() -> dict[str, Any]:
        buffer = WriteBehind(BufferWorker(storage), commit_interval=60)
        seen: dict[str, Any] = {"empty": await buffer.oldest()}
        seen["before"] = asyncio.get_running_loop().time()
        buffer.stage(
            [Reading(device="d", metric="m", value=1, unit="", ts=ts, seq=s) for s in (1, 2)]
        )
        seen["at"], seen["count"] = buffer.oldest_unwritten_at, buffer.unwritten
        seen["in_memory"] = await buffer.oldest()
        await buffer.flush()
        seen["after"], seen["stored"] = buffer.oldest_unwritten_at, await buffer.oldest()
        await buffer.close()
        return seen

    seen = asyncio.run(main())
    assert seen["at"] is not None and seen["before"] <= seen["at"] <= seen["before"] + 1
    assert seen["count"] == 2
    assert seen["after"] is None, "written: nothing waits in memory"
    assert seen["empty"] is None
    assert seen["in_memory"] == seen["stored"] == (1, to_epoch_ms(ts))
