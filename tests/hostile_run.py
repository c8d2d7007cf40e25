"""One hostile RS-485 line through the production path, for the hostile suite and its bench.

`BusPoller` (one task for the line) → `ModbusDriver` (the SDM630 profile: two reads per poll)
→ `LineUnit` → `ModbusLine` → pyserial on a PTY, against `tests.hostile_rtu.HostileLine`: one
hostile unit following a script, healthy neighbours. `run_line` returns what happened; `check`
lists every way the outcome breaks issue 15's promises (empty means none):

- every value any poll returned traces back to the valid answer to that poll's own request
  (the request's serial is in the value; the request was received during the poll, with the
  read's function, address and size, and was answered validly);
- every injected fault is counted exactly once in its class, per unit on the line
  (`ModbusLine.faults`) and per failed poll (the scheduler's error kind);
- the healthy units never fail, nothing is counted against them, they never miss a grid slot
  and are late by at most the other units' longest polls;
- no log record carries a traceback, one WARNING per failure episode of the hostile unit and
  nothing above DEBUG from the drivers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from drivers.modbus.engine import ModbusDriver
from drivers.modbus.line import LineUnit, ModbusLine, SerialSettings
from drivers.modbus.planner import ReadRequest, plan_profile
from drivers.modbus.profiles import load_profile
from gateway.model import MetricSpec, Reading, Value
from gateway.scheduler import BusPoller, DeviceState, SequenceCounter
from tests.hostile_rtu import Action, HostileLine, HostileUnit, trace

#: Every fault class the suite injects, once each (the late answer is the field case: 1.5-2.2 s
#: after the request, with a 1 s timeout). ``other_unit`` 2 answers as the healthy neighbour.
ALL_FAULTS: tuple[Action, ...] = (
    Action("crc"),
    Action("truncate"),
    Action("garbage"),
    Action("noise"),
    Action("pause"),
    Action("other_unit", 7),
    Action("other_unit", 2),
    Action("wrong_function"),
    Action("byte_count"),
    Action("byte_length"),
    Action("late"),
    Action("duplicate"),
    Action("drop"),
    *(Action("exception", code) for code in range(0x01, 0x0C)),
)
#: What the line counts for the hostile unit per injected action (`ModbusLine.faults`).
LINE_FAULTS: dict[str, dict[str, int]] = {
    "crc": {"crc": 1},
    "truncate": {"truncated": 1},
    "garbage": {"garbage": 1},
    "noise": {},
    "pause": {"truncated": 1},
    "other_unit": {"wrong_unit": 1},
    "wrong_function": {"wrong_function": 1},
    "byte_count": {"byte_count": 1},
    "byte_length": {"byte_count": 1},
    "late": {"timeout": 1, "stale": 1},
    "duplicate": {"stale": 1},
    "drop": {"timeout": 1},
}
#: The scheduler's error kind per injected action (None: the poll succeeds).
POLL_ERRORS: dict[str, str | None] = {
    "noise": None,
    "duplicate": None,
    "late": "timeout",
    "drop": "timeout",
}
#: Actions after which the unit's answer was valid (its values may be returned).
VALID = {"ok", "noise", "duplicate"}

HOSTILE = 1
HEALTHY = (2, 3)


def expected_line_faults(action: Action) -> Counter[str]:
    if action.kind == "exception":
        return Counter({action.label: 1})
    return Counter(LINE_FAULTS[action.kind])


def expected_poll_error(action: Action) -> str | None:
    if action.kind == "exception":
        return "busy" if action.arg == 0x06 else "rejected"
    return POLL_ERRORS.get(action.kind, "decode")


@dataclass
class Poll:
    device: str
    start: float
    end: float
    values: Mapping[str, Value] | None


@dataclass
class Recorder:
    """Wraps a driver: every poll's time span and values (None if it failed)."""

    name: str
    inner: ModbusDriver
    polls: list[Poll] = field(default_factory=list)

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        return self.inner.metrics

    @property
    def plan(self) -> tuple[ReadRequest, ...]:
        return self.inner.plan

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def poll(self) -> Mapping[str, Value]:
        start = time.monotonic()
        try:
            values = await self.inner.poll()
        except asyncio.CancelledError:
            raise  # the run stopped mid-poll: neither a success nor a failure
        except BaseException:
            self.polls.append(Poll(self.name, start, time.monotonic(), None))
            raise
        self.polls.append(Poll(self.name, start, time.monotonic(), dict(values)))
        return values


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Outcome:
    peer: HostileLine
    line: ModbusLine
    recorders: dict[int, Recorder]
    states: dict[int, DeviceState]
    readings: list[Reading]
    records: list[logging.LogRecord]
    actions: list[Action]
    start: float
    intervals: dict[int, float]
    elapsed: float


def hostile_script(actions: Sequence[Action], *, seed: int, normal_after: int = 2) -> list[Action]:
    """``actions`` shuffled with ``seed``, each followed by ``normal_after`` normal answers."""
    shuffled = list(actions)
    random.Random(seed).shuffle(shuffled)
    out: list[Action] = []
    for action in shuffled:
        out.append(action)
        out.extend(Action("ok") for _ in range(normal_after))
    return out


async def run_line(
    actions: Sequence[Action],
    *,
    seed: int = 15,
    baudrate: int = 9600,
    response_timeout: float = 1.0,
    hostile_interval: float = 0.3,
    healthy_interval: float = 2.0,
    within: float = 120.0,
) -> Outcome:
    """Poll one hostile and two healthy SDM630s until the hostile script is used up and every
    fault it injected has been counted (or ``within`` seconds passed)."""
    profile = load_profile("sdm630")
    script = hostile_script(actions, seed=seed)
    plan = frozenset((r.address, r.count) for r in plan_profile(profile))
    units = {HOSTILE: HostileUnit(script=list(script), plan=plan)}
    units.update({u: HostileUnit() for u in HEALTHY})
    peer = HostileLine(units=units, baudrate=baudrate, seed=seed)
    readings: list[Reading] = []
    capture = LogCapture()
    watched = [logging.getLogger("gateway"), logging.getLogger("drivers")]
    levels = [lg.level for lg in watched]
    for lg in watched:
        lg.addHandler(capture)
        lg.setLevel(logging.DEBUG)

    async def sink(batch: Sequence[Reading]) -> None:
        readings.extend(batch)

    class NoJitter(random.Random):
        """Backoff without jitter: a failing unit is retried at every interval (worst case)."""

        def uniform(self, a: float, b: float) -> float:
            return a

    expected_faults: Counter[str] = Counter()
    expected_errors: Counter[str] = Counter()
    for action in actions:
        expected_faults += expected_line_faults(action)
        if (kind := expected_poll_error(action)) is not None:
            expected_errors[kind] += 1
    intervals = {HOSTILE: hostile_interval} | {u: healthy_interval for u in HEALTHY}
    try:
        async with peer:
            line = ModbusLine(settings=SerialSettings(port=peer.path, baudrate=baudrate))
            recorders = {
                u: Recorder(
                    f"m{u}",
                    ModbusDriver(
                        reader=LineUnit(line=line, unit_id=u, response_timeout=response_timeout),
                        profile=profile,
                        name=f"m{u}",
                    ),
                )
                for u in units
            }
            states = {
                u: DeviceState(id=f"m{u}", driver=r, interval=intervals[u], guard=30.0)
                for u, r in recorders.items()
            }
            poller = BusPoller(
                name="rtu-hostile",
                devices=list(states.values()),
                sink=sink,
                sequence=SequenceCounter(0),
                rng=NoJitter(),
            )
            start = time.monotonic()
            task = asyncio.create_task(poller.run(), name="rtu-hostile")

            def counted() -> bool:
                faults = line.faults(HOSTILE)
                return (
                    not units[HOSTILE].script
                    and all(faults[k] >= n for k, n in expected_faults.items())
                    and all(states[HOSTILE].errors[k] >= n for k, n in expected_errors.items())
                    and bool(recorders[HOSTILE].polls)
                    and recorders[HOSTILE].polls[-1].values is not None
                )

            try:
                deadline = start + within
                while not counted():
                    if time.monotonic() >= deadline or task.done():
                        break
                    await asyncio.sleep(0.05)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            elapsed = time.monotonic() - start
    finally:
        for lg, level in zip(watched, levels, strict=True):
            lg.removeHandler(capture)
            lg.setLevel(level)
    return Outcome(
        peer=peer,
        line=line,
        recorders=recorders,
        states=states,
        readings=readings,
        records=capture.records,
        actions=list(actions),
        start=start,
        intervals=intervals,
        elapsed=elapsed,
    )


def wrong_values(outcome: Outcome) -> list[str]:
    """Every value that is not from the valid answer to its own poll's request."""
    problems = []
    for unit, recorder in outcome.recorders.items():
        for poll in recorder.polls:
            if poll.values is None:
                continue
            for read in recorder.plan:
                serials = set()
                for point in read.points:
                    value = poll.values[point.key]
                    assert isinstance(value, float)
                    serial_no, address = trace(value)
                    served = outcome.peer.served(serial_no)
                    ok = (
                        address == point.address
                        and served.unit == unit
                        and (served.function, served.address, served.count)
                        == (4, read.address, read.count)
                        and poll.start <= served.received <= poll.end
                        and served.action in VALID
                    )
                    if not ok:
                        problems.append(f"m{unit} {point.key}={value} from {served}")
                    serials.add(serial_no)
                if len(serials) != 1:
                    problems.append(f"m{unit} read {read.address}: values of {sorted(serials)}")
    return problems


def check(outcome: Outcome) -> list[str]:
    """Every broken promise (see the module docstring); empty if none."""
    problems = wrong_values(outcome)
    line, states, recorders = outcome.line, outcome.states, outcome.recorders
    expected_faults: Counter[str] = Counter()
    expected_errors: Counter[str] = Counter()
    for action in outcome.actions:
        expected_faults += expected_line_faults(action)
        if (kind := expected_poll_error(action)) is not None:
            expected_errors[kind] += 1
    if line.faults(HOSTILE) != expected_faults:
        problems.append(f"hostile faults {line.faults(HOSTILE)} != injected {expected_faults}")
    if states[HOSTILE].errors != expected_errors:
        problems.append(f"hostile poll errors {states[HOSTILE].errors} != {expected_errors}")
    # Readings stored: exactly the successful polls' values.
    stored = Counter((r.device, r.metric, r.value) for r in outcome.readings)
    returned = Counter(
        (f"m{u}", key, value)
        for u, rec in recorders.items()
        for p in rec.polls
        if p.values is not None
        for key, value in p.values.items()
    )
    if stored != returned:
        problems.append("stored readings differ from the values the polls returned")
    longest = {
        u: max((p.end - p.start for p in r.polls), default=0.0) for u, r in recorders.items()
    }
    for unit in HEALTHY:
        polls = recorders[unit].polls
        interval = outcome.intervals[unit]
        if line.faults(unit) or states[unit].errors:
            problems.append(f"m{unit} charged: {line.faults(unit)} {states[unit].errors}")
        if any(p.values is None for p in polls):
            problems.append(f"m{unit} had a failed poll")
        others = sum(longest[u] for u in recorders if u != unit)
        lateness = [(p.start - outcome.start) % interval for p in polls]
        if max(lateness, default=0.0) >= others + 0.1:
            problems.append(f"m{unit} late by {max(lateness):.3f} s (others' polls {others:.3f})")
        slots = [int((p.start - outcome.start) // interval) for p in polls]
        if slots != list(range(len(slots))):
            problems.append(f"m{unit} missed a grid slot: {slots}")
    problems += log_problems(outcome)
    return problems


def log_problems(outcome: Outcome) -> list[str]:
    problems = []
    records = outcome.records
    if any(r.exc_info or "Traceback" in r.getMessage() for r in records):
        problems.append("a log record carries a traceback")
    polls = outcome.recorders[HOSTILE].polls
    episodes = sum(
        1
        for i, p in enumerate(polls)
        if p.values is None and (i == 0 or polls[i - 1].values is not None)
    )
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    if len(warnings) != episodes or any("m1 " not in r.getMessage() for r in warnings):
        problems.append(f"{len(warnings)} warnings for {episodes} failure episodes")
    loud = [r for r in records if r.name.startswith("drivers") and r.levelno > logging.DEBUG]
    if loud:
        problems.append(f"drivers logged above DEBUG: {[r.getMessage() for r in loud]}")
    return problems


def summary(outcome: Outcome) -> str:
    """Counts for a human: injected, counted, line totals, polls."""
    injected = Counter(a.label for a in outcome.actions)
    hostile = outcome.recorders[HOSTILE].polls
    lines = [
        f"{outcome.elapsed:.1f} s, {len(outcome.peer.log)} requests served",
        f"injected: {dict(sorted(injected.items()))}",
        f"counted for unit {HOSTILE}: {dict(sorted(outcome.line.faults(HOSTILE).items()))}",
        f"poll errors of unit {HOSTILE}: {dict(outcome.states[HOSTILE].errors)}",
        f"line counters: {outcome.line.counters()}",
        f"hostile polls: {len(hostile)} ({sum(p.values is None for p in hostile)} failed)",
    ]
    for unit in HEALTHY:
        polls = outcome.recorders[unit].polls
        lines.append(
            f"healthy m{unit}: {len(polls)} polls, {sum(p.values is None for p in polls)} failed,"
            f" faults {dict(outcome.line.faults(unit))}"
        )
    lines.append(f"wrong values: {len(wrong_values(outcome))}")
    return "\n".join(lines)
