"""The health verdict (gateway/health.py) and the state it reads.

- A bus task is hung only past its own deadline, which it sets before each step: a planned
  wake-up plus the grace, or three driver-call guards plus the grace. A bus sleeping for minutes
  (a dead device backing off) is healthy; one stuck in a step is not, by name. (The real hang,
  a driver swallowing its cancellation, is tests/gateway/test_watchdog.py.)
- A storage call that never returns (a real `BufferWorker` over a real `SqliteBuffer` whose
  commit blocks: a card that stopped answering) fails the verdict past `STORAGE_DEADLINE`; a
  commit that fails quickly (a full card) is not a hang.
- The write-behind buffer reports its oldest unwritten and pending readings (local status).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.buffer import BufferWorker, MemoryBuffer, SqliteBuffer
from gateway.buffer.writebehind import WriteBehind
from gateway.health import STORAGE_DEADLINE, judge
from gateway.model import MetricSpec, Quality, Reading, Value, to_epoch_ms, utc_ms
from gateway.scheduler import PROGRESS_GRACE, BusPoller, DeviceState, SequenceCounter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Idle:
    metrics: Mapping[str, MetricSpec] = {}

    async def open(self) -> None:
        return None

    async def poll(self) -> Mapping[str, Value]:
        return {}

    async def close(self) -> None:
        return None


def poller(clock: Clock, guard: float) -> BusPoller:
    async def sink(readings: Any) -> None:
        return None

    state = DeviceState(id="d", driver=Idle(), interval=10.0, guard=guard)
    return BusPoller(
        name="bus a", devices=[state], sink=sink, sequence=SequenceCounter(0), monotonic=clock
    )


def test_a_bus_asleep_until_its_next_slot_is_healthy_until_it_oversleeps() -> None:
    clock = Clock()
    bus = poller(clock, guard=10.0)
    bus._progress(until=clock.now + 300.0)  # a dead device backed off for 5 minutes
    assert judge([bus], None, clock.now + 300.0 + PROGRESS_GRACE).ok
    late = judge([bus], None, clock.now + 300.0 + PROGRESS_GRACE + 2)
    assert late.problems == ("bus a: no progress for 2 s past its deadline",)


def test_a_bus_in_a_step_has_three_guards_and_the_grace() -> None:
    clock = Clock()
    bus = poller(clock, guard=10.0)
    bus._progress()  # a step (open, poll, close) begins
    assert judge([bus], None, clock.now + 3 * 10.0 + PROGRESS_GRACE).ok
    assert not judge([bus], None, clock.now + 3 * 10.0 + PROGRESS_GRACE + 1).ok


class StuckCard(SqliteBuffer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.fail = False

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            raise sqlite3.OperationalError("database or disk is full")
        self.release.wait(30)
        return super().commit(*args, **kwargs)


def reading(seq: int) -> Reading:
    return Reading(
        device="d",
        metric="m",
        value=1.0,
        unit="1",
        ts=datetime.now(UTC).replace(microsecond=0),
        seq=seq,
        quality=Quality.GOOD,
    )


def test_a_storage_call_that_never_returns_fails_the_verdict(tmp_path: Path) -> None:
    async def main() -> None:
        card = StuckCard(tmp_path / "b.sqlite3")
        worker = BufferWorker(card, commit_interval=0)
        assert worker.busy_since is None
        write = asyncio.create_task(worker.append([reading(1)]))
        while worker.busy_since is None:  # noqa: ASYNC110 - set on the buffer thread
            await asyncio.sleep(0.01)
        started = worker.busy_since
        assert judge([], started, started + 1).ok, "a slow call is not yet a hang"
        late = judge([], started, started + STORAGE_DEADLINE + 1)
        assert not late.ok and "storage call has run" in late.problems[0]
        card.release.set()
        await write
        assert worker.busy_since is None
        assert judge([], worker.busy_since, time.monotonic() + 1e6).ok
        card.fail = True  # fails fast: retried by the worker, never a hang
        worker.stage([reading(2)])
        await asyncio.sleep(0.2)
        assert worker.busy_since is None or time.monotonic() - worker.busy_since < 1
        await worker.close()

    asyncio.run(main())


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
