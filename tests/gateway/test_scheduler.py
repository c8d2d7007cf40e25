"""The `BusPoller` contract, run on a real event loop with fake drivers and a collecting sink.

Pinned here: what a `Reading` carries (device, metric, unit, wall-clock UTC ms timestamp, seqs from
`SequenceCounter`, NO_VALUE exactly for ``None``); that the devices of one bus are polled one at a
time, each on its own fixed grid without drift; that a failing device is logged once when it fails
and once when it recovers, counted per error kind, retried with backoff but never sooner than its
interval, and does not make its neighbours late; that a hung poll is cut off at ``guard`` and the
driver reopened; that a device which cannot be opened is retried until it opens; that cancellation
closes every opened driver; and that a late poll skips the grid slots it missed instead of bursting.

Timing is measured with ``time.monotonic`` (the poller's own clock, recorded through a wrapper);
the tests wait on conditions with deadlines, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.errors import DecodeError, DeviceBusy, DeviceError, DeviceTimeout
from gateway.model import MetricSpec, Quality, Reading, Value
from gateway.scheduler import BusPoller, DeviceState, SequenceCounter

#: Allowed scheduling jitter of the event loop on a busy test machine, in seconds.
JITTER = 0.03
#: Upper bound for any wait on a condition.
DEADLINE = 5.0

TEMP = {"temp": MetricSpec(key="temp", unit="Cel")}

Behaviour = Callable[[int], Awaitable[Mapping[str, Value]]]


@dataclass(frozen=True)
class Event:
    t: float
    device: str
    kind: str  # "open", "open-failed", "poll", "poll-cancelled", "close"


@dataclass
class Trace:
    """What happened on the bus, in order, with a condition to wait on."""

    events: list[Event] = field(default_factory=list)
    active_polls: int = 0
    max_active_polls: int = 0
    readings: list[Reading] = field(default_factory=list)
    sink_calls: Counter[str] = field(default_factory=Counter)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def record(self, device: str, kind: str) -> None:
        self.events.append(Event(time.monotonic(), device, kind))
        async with self._changed:
            self._changed.notify_all()

    async def sink(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)
        self.sink_calls.update({r.device for r in readings})
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], within: float = DEADLINE) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    def times(self, device: str, kind: str) -> list[float]:
        return [e.t for e in self.events if e.device == device and e.kind == kind]

    def kinds(self, device: str) -> list[str]:
        return [e.kind for e in self.events if e.device == device]

    def count(self, device: str, kind: str) -> int:
        return len(self.times(device, kind))

    def polled(self, device: str) -> int:
        """Successful polls of ``device``: one sink call each."""
        return self.sink_calls[device]


async def answer(_: int) -> Mapping[str, Value]:
    return {"temp": 21.5}


class FakeDriver:
    """A `drivers.base.Driver` whose answers are scripted per poll call (1-based)."""

    def __init__(
        self,
        name: str,
        trace: Trace,
        *,
        behaviour: Behaviour = answer,
        metrics: Mapping[str, MetricSpec] = TEMP,
        open_failures: int = 0,
        busy_for: float = 0.002,
    ) -> None:
        self.name = name
        self.trace = trace
        self.behaviour = behaviour
        self._metrics = metrics
        self.open_failures = open_failures
        self.busy_for = busy_for
        self.is_open = False
        self.calls = 0
        self.misuse: list[str] = []

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        return self._metrics

    async def open(self) -> None:
        if self.is_open:
            self.misuse.append("open while open")
        if self.open_failures:
            self.open_failures -= 1
            await self.trace.record(self.name, "open-failed")
            raise DeviceTimeout("no such device")
        self.is_open = True
        await self.trace.record(self.name, "open")

    async def poll(self) -> Mapping[str, Value]:
        if not self.is_open:
            self.misuse.append("poll while closed")
        self.calls += 1
        self.trace.active_polls += 1
        self.trace.max_active_polls = max(self.trace.max_active_polls, self.trace.active_polls)
        try:
            await self.trace.record(self.name, "poll")
            await asyncio.sleep(self.busy_for)  # the bus is busy for a moment
            return await self.behaviour(self.calls)
        except asyncio.CancelledError:
            self.trace.events.append(Event(time.monotonic(), self.name, "poll-cancelled"))
            raise
        finally:
            self.trace.active_polls -= 1

    async def close(self) -> None:
        self.is_open = False
        self.trace.events.append(Event(time.monotonic(), self.name, "close"))


class ScriptedRandom(random.Random):
    """Returns ``fraction`` of the backoff range and records the ranges asked for."""

    def __init__(self, fraction: float = 0.0) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return a + (b - a) * self.fraction


class RecordingClock:
    """``time.monotonic``, remembering its first reading: the start of the poller's grid."""

    def __init__(self) -> None:
        self.first: float | None = None

    def __call__(self) -> float:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        return now

    @property
    def start(self) -> float:
        assert self.first is not None
        return self.first


def device(driver: FakeDriver, *, interval: float, guard: float = 1.0) -> DeviceState:
    return DeviceState(id=driver.name, driver=driver, interval=interval, guard=guard)


@contextlib.asynccontextmanager
async def running(bus: BusPoller) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``bus`` as a named task; cancel it and wait for its cleanup on exit."""
    task = asyncio.create_task(bus.run(), name=f"bus-{bus.name}")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def poller(
    trace: Trace,
    devices: Sequence[DeviceState],
    *,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    last_seq: int = 0,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BusPoller:
    return BusPoller(
        name="rs485-0",
        devices=devices,
        sink=trace.sink,
        sequence=SequenceCounter(last_seq),
        monotonic=clock,
        wall_clock=wall_clock,
        rng=rng or ScriptedRandom(0.0),
    )


def grid_slots(times: Sequence[float], start: float, interval: float) -> list[tuple[int, float]]:
    """For each time, the grid slot it belongs to and how late it is for that slot."""
    slots = []
    for t in times:
        k = int((t - start + interval * 0.25) // interval)  # a poll is never early
        slots.append((k, t - (start + k * interval)))
    return slots


# --- What a reading carries -------------------------------------------------------------------


def test_readings_carry_identity_unit_wall_clock_time_seq_and_quality() -> None:
    metrics = {
        "power": MetricSpec(key="power", unit="W"),
        "energy": MetricSpec(key="energy", unit="kWh"),
        "relay": MetricSpec(key="relay", unit=""),
        "status": MetricSpec(key="status", unit=""),
    }
    cest = timezone(timedelta(hours=2))
    later = datetime(2026, 6, 1, 14, 0, 1, 999999, tzinfo=cest)
    stamps = itertools.chain(
        [datetime(2026, 6, 1, 14, 0, 0, 123456, tzinfo=cest)], itertools.repeat(later)
    )

    async def values(call: int) -> Mapping[str, Value]:
        # "status" is missing from the answer: it must become None/NO_VALUE too.
        return {"power": 0.0 if call == 1 else 1234.5, "energy": None, "relay": False}

    async def main() -> Trace:
        trace = Trace()
        meter = FakeDriver("meter-1", trace, behaviour=values, metrics=metrics)
        bus = poller(
            trace, [device(meter, interval=0.02)], last_seq=41, wall_clock=lambda: next(stamps)
        )
        async with running(bus):
            await trace.wait_until(lambda: len(trace.readings) >= 8)
        return trace

    trace = asyncio.run(main())
    first, second = trace.readings[:4], trace.readings[4:8]
    assert [r.seq for r in trace.readings[:8]] == list(range(42, 50))
    # Numbered in metric key order, not the driver's: payload v2 carries only a poll's first
    # number and rebuilds the others from the keys' code-point order (gateway/telemetry.py).
    assert [(r.device, r.metric, r.unit) for r in first] == [
        ("meter-1", "energy", "kWh"),
        ("meter-1", "power", "W"),
        ("meter-1", "relay", ""),
        ("meter-1", "status", ""),
    ]
    assert [(r.value, r.quality) for r in first] == [
        (None, Quality.NO_VALUE),
        (0.0, Quality.GOOD),  # falsy is not "no value"
        (False, Quality.GOOD),
        (None, Quality.NO_VALUE),
    ]
    assert second[1].value == 1234.5
    assert {r.ts for r in first} == {datetime(2026, 6, 1, 12, 0, 0, 123000, tzinfo=UTC)}
    assert {r.ts for r in second} == {datetime(2026, 6, 1, 12, 0, 1, 999000, tzinfo=UTC)}
    assert all(r.ts.utcoffset() == timedelta(0) for r in trace.readings[:8])


# --- Timing -----------------------------------------------------------------------------------


def test_devices_on_one_bus_are_polled_in_turn_each_at_its_own_interval() -> None:
    clock = RecordingClock()

    async def main() -> Trace:
        trace = Trace()
        fast = FakeDriver("fast", trace, busy_for=0.005)
        slow = FakeDriver("slow", trace, busy_for=0.005)
        bus = poller(trace, [device(fast, interval=0.05), device(slow, interval=0.13)], clock=clock)
        async with running(bus):
            await trace.wait_until(lambda: trace.count("slow", "poll") >= 5)
        return trace

    trace = asyncio.run(main())

    assert trace.max_active_polls == 1, "devices of one bus must never be polled concurrently"
    for name, interval in (("fast", 0.05), ("slow", 0.13)):
        slots = grid_slots(trace.times(name, "poll"), clock.start, interval)
        ks = [k for k, _ in slots]
        assert ks == list(range(len(ks))), f"{name}: skipped or repeated grid slots {ks}"
        lateness = [late for _, late in slots]
        # Late at most by the other device's poll (5 ms) plus loop jitter; no drift over time.
        assert min(lateness) >= 0, f"{name} polled early: {lateness}"
        assert max(lateness) <= 0.005 + JITTER, f"{name} late: {lateness}"
    assert trace.count("fast", "poll") >= 10
    # One sink call per poll, sequence numbers consecutive across devices.
    assert [r.seq for r in trace.readings] == list(range(1, len(trace.readings) + 1))


def test_a_late_poll_skips_missed_slots_instead_of_bursting() -> None:
    clock = RecordingClock()
    interval = 0.08

    async def slow_once(call: int) -> Mapping[str, Value]:
        if call == 3:
            await asyncio.sleep(2.5 * interval)
        return {"temp": float(call)}

    async def main() -> Trace:
        trace = Trace()
        meter = FakeDriver("meter", trace, behaviour=slow_once)
        bus = poller(trace, [device(meter, interval=interval)], clock=clock)
        async with running(bus):
            await trace.wait_until(lambda: trace.count("meter", "poll") >= 8)
        return trace

    trace = asyncio.run(main())

    starts = trace.times("meter", "poll")
    slots = grid_slots(starts, clock.start, interval)
    ks = [k for k, _ in slots]
    # Slots 3 and 4 were missed while poll 3 (slot 2) ran; the next poll takes slot 5.
    assert ks[:4] == [0, 1, 2, 5], ks
    assert ks[3:] == list(range(5, 5 + len(ks) - 3)), ks
    assert max(late for _, late in slots) <= JITTER
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= interval - JITTER, f"burst: {gaps}"
    assert all(abs(g - interval) <= JITTER for g in gaps[3:]), gaps


# --- Failures ---------------------------------------------------------------------------------


def scheduler_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.scheduler"]


def test_failing_device_is_logged_once_counted_per_kind_and_retried_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.scheduler")
    interval = 0.04
    errors: dict[int, DeviceError] = {
        1: DecodeError("bad CRC"),
        2: DecodeError("bad CRC"),
        3: DeviceBusy("exception 06"),
        # calls 4 and 5 succeed
        6: DecodeError("short frame"),
        7: DeviceTimeout("no answer"),
    }

    async def flaky(call: int) -> Mapping[str, Value]:
        if call in errors:
            raise errors[call]
        return {"temp": float(call)}

    rng = ScriptedRandom(0.0)

    async def main() -> tuple[Trace, DeviceState, FakeDriver]:
        trace = Trace()
        meter = FakeDriver("meter", trace, behaviour=flaky)
        state = device(meter, interval=interval)
        bus = poller(trace, [state], rng=rng)
        async with running(bus):
            await trace.wait_until(lambda: meter.calls >= 3)
            # While it keeps failing: exactly one warning, nothing else.
            assert [r.levelno for r in scheduler_records(caplog)] == [logging.WARNING]
            await trace.wait_until(lambda: trace.polled("meter") >= 3)
        return trace, state, meter

    trace, state, meter = asyncio.run(main())

    records = scheduler_records(caplog)
    levels = [r.levelno for r in records[:4]]
    assert levels == [logging.WARNING, logging.INFO, logging.WARNING, logging.INFO]
    assert all("meter" in r.getMessage() for r in records)
    assert state.errors == Counter({"decode": 3, "busy": 1, "timeout": 1})
    assert state.available
    assert state.failures == 0
    assert meter.misuse == []
    # Exponential backoff ranges, restarting after the recovery.
    assert rng.ranges[:5] == [(0, 1.5), (0, 1.5**2), (0, 1.5**3), (0, 1.5), (0, 1.5**2)]
    # The backoff drew 0, yet no retry came sooner than the interval.
    polls = trace.times("meter", "poll")
    retry_gaps = [polls[i + 1] - polls[i] for i in (0, 1, 2, 5, 6) if i + 1 < len(polls)]
    assert len(retry_gaps) == 5
    assert min(retry_gaps) >= interval, retry_gaps


def test_a_failing_device_does_not_make_its_neighbour_late(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.scheduler")
    clock = RecordingClock()
    cost = 0.02  # what one failed attempt costs the bus: the driver's own timeout

    async def dead(_: int) -> Mapping[str, Value]:
        await asyncio.sleep(cost)
        raise DeviceTimeout("no answer")

    async def main() -> tuple[Trace, DeviceState]:
        trace = Trace()
        broken = FakeDriver("broken", trace, behaviour=dead)
        healthy = FakeDriver("healthy", trace)
        broken_state = device(broken, interval=0.05)
        # Backoff jitter drawn as 0: the dead device is retried as often as allowed (worst case).
        bus = poller(
            trace,
            [broken_state, device(healthy, interval=0.05)],
            clock=clock,
            rng=ScriptedRandom(0),
        )
        async with running(bus):
            await trace.wait_until(lambda: trace.count("healthy", "poll") >= 12)
        return trace, broken_state

    trace, broken_state = asyncio.run(main())

    attempts = trace.times("broken", "poll")
    assert len(attempts) >= 5, "the dead device must keep being retried"
    # An attempt still running when the test cancelled the poller was never counted.
    finished = len(attempts) - trace.count("broken", "poll-cancelled")
    assert broken_state.errors == Counter({"timeout": finished})
    assert min(b - a for a, b in itertools.pairwise(attempts)) >= 0.05
    slots = grid_slots(trace.times("healthy", "poll"), clock.start, 0.05)
    ks = [k for k, _ in slots]
    assert ks == list(range(len(ks))), f"healthy device skipped slots: {ks}"
    lateness = [late for _, late in slots]
    assert max(lateness) <= cost + 0.002 + JITTER, lateness
    assert [r.levelno for r in scheduler_records(caplog)] == [logging.WARNING]


def test_a_poll_hanging_past_guard_is_cut_off_counted_and_the_driver_reopened() -> None:
    guard = 0.1

    async def hangs_once(call: int) -> Mapping[str, Value]:
        if call == 2:
            await asyncio.Event().wait()
        return {"temp": float(call)}

    async def main() -> tuple[Trace, DeviceState, FakeDriver]:
        trace = Trace()
        meter = FakeDriver("meter", trace, behaviour=hangs_once)
        state = device(meter, interval=0.03, guard=guard)
        async with running(poller(trace, [state])):
            await trace.wait_until(lambda: trace.polled("meter") >= 3)
        return trace, state, meter

    trace, state, meter = asyncio.run(main())

    assert state.errors == Counter({"timeout": 1})
    assert meter.misuse == []
    kinds = trace.kinds("meter")
    assert kinds[:7] == ["open", "poll", "poll", "poll-cancelled", "close", "open", "poll"], kinds
    hung = trace.times("meter", "poll")[1]
    cut = trace.times("meter", "poll-cancelled")[0]
    assert guard - 0.01 <= cut - hung <= guard + JITTER
    assert [r.value for r in trace.readings[:3]] == [1.0, 3.0, 4.0]


def test_a_device_that_cannot_be_opened_is_retried_with_backoff_until_it_opens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.scheduler")
    interval = 0.02
    rng = ScriptedRandom(0.05)  # backoffs 0.075, 0.1125, 0.16875 s: all above the interval

    async def main() -> tuple[Trace, DeviceState]:
        trace = Trace()
        meter = FakeDriver("meter", trace, open_failures=3)
        state = device(meter, interval=interval)
        async with running(poller(trace, [state], rng=rng)):
            await trace.wait_until(lambda: trace.polled("meter") >= 2)
        return trace, state

    trace, state = asyncio.run(main())

    attempts = trace.times("meter", "open-failed") + trace.times("meter", "open")
    # Each failed open is followed by a close: a half-open transport must not leak into the retry.
    assert trace.kinds("meter")[:8] == ["open-failed", "close"] * 3 + ["open", "poll"]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    for gap, expected in zip(gaps, (0.075, 0.1125, 0.16875), strict=True):
        assert expected <= gap <= expected + JITTER, gaps
    assert state.errors == Counter({"timeout": 3})
    assert state.opened and state.available
    assert [r.levelno for r in scheduler_records(caplog)] == [logging.WARNING, logging.INFO]


def test_cancellation_closes_every_driver() -> None:
    async def hang(_: int) -> Mapping[str, Value]:
        await asyncio.Event().wait()
        return {}

    async def main() -> tuple[Trace, list[FakeDriver], asyncio.Task[None]]:
        trace = Trace()
        absent = FakeDriver("absent", trace, open_failures=1_000)
        ok = FakeDriver("ok", trace)
        stuck = FakeDriver("stuck", trace, behaviour=hang)
        bus = poller(
            trace,
            [
                device(absent, interval=0.05),
                device(ok, interval=0.05),
                device(stuck, interval=0.05, guard=60),
            ],
        )
        async with running(bus) as task:
            await trace.wait_until(lambda: trace.count("stuck", "poll") >= 1)
        return trace, [absent, ok, stuck], task

    trace, (absent, ok, stuck), task = asyncio.run(main())

    assert task.cancelled()
    assert trace.polled("ok") == 1
    assert trace.kinds("ok")[-1] == "close"
    assert trace.kinds("stuck")[-2:] == ["poll-cancelled", "close"]
    assert not ok.is_open and not stuck.is_open and not absent.is_open
    assert trace.kinds("absent")[-1] == "close", "a driver whose open() failed is closed too"


class BuggyDriver(FakeDriver):
    """A `FakeDriver` whose open() and close() can raise exceptions no driver should raise."""

    def __init__(self, *args: object, open_bugs: int = 0, close_bugs: int = 0, **kw: object):
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.open_bugs = open_bugs
        self.close_bugs = close_bugs

    async def open(self) -> None:
        if self.open_bugs:
            self.open_bugs -= 1
            await self.trace.record(self.name, "open-failed")
            raise ZeroDivisionError("division by zero")
        await super().open()

    async def close(self) -> None:
        await super().close()
        if self.close_bugs:
            self.close_bugs -= 1
            raise ValueError("close() is broken too")


def test_a_driver_bug_is_contained_to_its_device_counted_logged_once_and_backed_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception that is not a DeviceError (a bug) from one driver's open() or poll() must not
    stop the bus: the device is counted under "internal", logged once per failure streak (one
    WARNING line, the traceback at DEBUG), closed and backed off; its neighbours keep their grid
    and are never reopened; no sequence number is spent on a broken answer."""
    caplog.set_level(logging.DEBUG, logger="gateway.scheduler")
    clock = RecordingClock()
    interval = 0.05

    async def buggy_poll(call: int) -> Mapping[str, Value]:
        if call == 1:
            raise RuntimeError("the decoder has a bug")
        if call == 2:
            return None  # type: ignore[return-value]  # not a mapping: a bug too
        if call == 3:
            raise KeyError("register 40001")
        return {"temp": float(call)}

    async def main() -> tuple[Trace, DeviceState, DeviceState, DeviceState]:
        trace = Trace()
        buggy = BuggyDriver("buggy", trace, behaviour=buggy_poll, close_bugs=1)
        unopenable = BuggyDriver("unopenable", trace, open_bugs=2)
        healthy = FakeDriver("healthy", trace)
        states = [
            device(buggy, interval=interval),
            device(unopenable, interval=interval),
            device(healthy, interval=interval),
        ]
        bus = poller(trace, states, clock=clock, rng=ScriptedRandom(0))
        async with running(bus) as task:
            await trace.wait_until(
                lambda: (
                    trace.polled("buggy") >= 2
                    and trace.polled("unopenable") >= 2
                    and trace.count("healthy", "poll") >= 12
                )
            )
            assert not task.done(), "a driver bug stopped the bus task"
        return trace, states[0], states[1], states[2]

    trace, buggy, unopenable, healthy = asyncio.run(main())

    assert buggy.errors == Counter({"internal": 3})
    assert unopenable.errors == Counter({"internal": 2})
    assert healthy.errors == Counter()
    assert buggy.available and unopenable.available
    # The neighbour was opened once and never closed until the end, and kept its grid.
    assert trace.kinds("healthy").count("open") == 1
    assert "close" not in trace.kinds("healthy")[:-1]
    ks = [k for k, _ in grid_slots(trace.times("healthy", "poll"), clock.start, interval)]
    assert ks == list(range(len(ks))), f"healthy device skipped slots: {ks}"
    # The buggy device was closed and reopened after each bug, like after a timeout.
    assert trace.kinds("buggy")[:4] == ["open", "poll", "close", "open"]
    # Broken answers spent no sequence number.
    assert [r.seq for r in trace.readings] == list(range(1, len(trace.readings) + 1))
    records = scheduler_records(caplog)
    for name, cause in (("buggy", RuntimeError), ("unopenable", ZeroDivisionError)):
        mine = [r for r in records if r.getMessage().startswith(f"device {name}")]
        warnings = [r for r in mine if r.levelno == logging.WARNING]
        debug = [r for r in mine if r.levelno == logging.DEBUG]
        assert len(warnings) == 1, [r.getMessage() for r in mine]
        assert "internal" in warnings[0].getMessage()
        assert cause.__name__ in warnings[0].getMessage()
        assert warnings[0].exc_info is None, "the WARNING is one line; the traceback is at DEBUG"
        assert len(debug) == 1 and debug[0].exc_info is not None
        assert isinstance(debug[0].exc_info[1], cause)
        assert [r.levelno for r in mine if r.levelno == logging.INFO] == [logging.INFO]
    assert not [r for r in records if "healthy" in r.getMessage()]
    assert not [r for r in records if r.levelno >= logging.ERROR]
