"""The alarm-rules engine: a pure state machine over readings, with injected clocks.

An alarm is identified by ``(device, name)``. Its state starts unknown (or restored from disk,
see `gateway.status.persist`) and becomes known with the first evaluation: a value rule on the
device's first usable signal, the silence rules on the first reading of the device (clear) or
when the device stays silent (active). Every rule is evaluated on each observed reading; only the
silence rules need `check`, which the status service calls every half second.

- A **value rule** (`ValueRule`) reads a *signal* of one metric: the value itself, its *rise*
  over the last ``window`` s (value minus the window's minimum: smoke), the *rate* of a counter
  (increase over the window, per ``per`` s: water flow from a volume counter), or its *mean* over
  the window. It raises when the signal is beyond ``raise_at`` (above, below, or equal to one of
  ``equals``) for ``sustain`` seconds while its schedule `Gate` is open, and clears when it is
  beyond ``clear_at`` for ``clear_sustain`` seconds, gate open or not (a schedule decides when an
  alarm may be raised, it never hides an active one). Between the two limits the state is kept:
  the hysteresis band and the two durations are what prevents flapping. With ``sustain`` 0 one
  reading is enough, so the v1 alarms are shown and published within the poll that crossed.
  A *baseline* rule's limits are the device's own: ``factor`` x the median of its last nights'
  mean plus ``margin``; a night (an open-gate period) during which the alarm was active is not
  learnt.
- **silent** raises when a device has delivered no reading at all for ``silent_after`` seconds
  of the monotonic ``clock`` (counted from start-up, so an absent sensor is noticed too) and
  clears with its next reading. A "no value" reading counts as heard: the sensor answered, and a
  PM sensor warming up for 30 s after every start must not raise an emergency.
- **silent_while** (`SilentWhileRule`): a device silent for ``after`` s while one of its
  witnesses was heard within that time (a main meter silent while the PV inverter answers: the
  power is out in part of the building, not the gateway's network).

Durations are measured on the monotonic ``clock``; schedules and ``since`` on the readings' (and
``wall``'s) UTC time. Memory is bounded: a window is at most `Window.BUCKETS` + 1 buckets, a
baseline at most its number of nights.

Every evaluation that changes what is known returns `AlarmChange` objects; ``event`` is true for
a real transition (raised / cleared) and false for the first determination of a clear alarm,
which is published as retained state but is not news.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time, tzinfo
from typing import Literal

from gateway.model import Quality, Reading, utc_ms

SILENT = "silent"
#: Readings an open-gate period needs before its mean is learnt as a night of the baseline.
MIN_NIGHT_READINGS = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate:
    """When a rule may raise: ``when`` the building is occupied / empty / always, and only within
    local ``hours`` (start, end; an end before the start wraps past midnight) if given."""

    when: Literal["always", "occupied", "empty"] = "always"
    hours: tuple[time, time] | None = None


ALWAYS = Gate()


def _in_hours(at: time, hours: tuple[time, time]) -> bool:
    start, end = hours
    return start <= at < end if start <= end else at >= start or at < end


class Schedule:
    """The building's occupied hours in its time zone (``zone`` None: the machine's local zone).

    ``occupied`` holds (weekdays Mon=0, start, end) blocks; a block that wraps midnight belongs
    to the weekday it starts on.
    """

    def __init__(
        self,
        *,
        zone: tzinfo | None = None,
        occupied: Sequence[tuple[frozenset[int], time, time]] = (),
    ) -> None:
        self._zone = zone
        self._blocks = tuple(occupied)

    def local(self, at: datetime) -> datetime:
        """``at`` in the site's time zone."""
        return at.astimezone(self._zone)

    def is_occupied(self, at: datetime) -> bool:
        """Whether the building is occupied at ``at`` (aware)."""
        local = self.local(at)
        clock, day = local.time(), local.weekday()
        for days, start, end in self._blocks:
            if start <= end:
                if day in days and start <= clock < end:
                    return True
            elif (day in days and clock >= start) or ((day - 1) % 7 in days and clock < end):
                return True
        return False

    def is_open(self, gate: Gate, at: datetime) -> bool:
        """Whether ``gate`` lets a rule raise at ``at``."""
        if gate.hours is not None and not _in_hours(self.local(at).time(), gate.hours):
            return False
        if gate.when == "always":
            return True
        return self.is_occupied(at) == (gate.when == "occupied")


@dataclass(frozen=True, slots=True, kw_only=True)
class Baseline:
    """Limits learnt from the device's own nights (see the module docstring)."""

    nights: int = 7
    min_nights: int = 3
    factor: float = 3.0
    margin: float = 300.0

    def limits(self, history: Sequence[float]) -> tuple[float, float] | None:
        """(raise_at, clear_at) from the learnt nights, or None while too few are known."""
        if len(history) < self.min_nights:
            return None
        base = statistics.median(history)
        return self.factor * base + self.margin, base + self.margin


@dataclass(frozen=True, slots=True, kw_only=True)
class ValueRule:
    """A rule on one metric's signal; see the module docstring. ``metrics`` lists alternative
    keys of the same quantity (``pm25``, ``pm2_5``); ``devices`` None means every device.

    ``severity`` and ``message`` go into the published payload; None keeps the v1 payload of the
    three v1 alarms byte for byte (docs/mqtt.md). ``unit`` overrides the reading's unit for a
    derived signal (``m³/h`` from a counter in m³).
    """

    name: str
    metrics: tuple[str, ...]
    direction: Literal["above", "below", "equals"] = "above"
    raise_at: float = 0.0
    clear_at: float = 0.0
    equals: tuple[float, ...] = ()
    signal: Literal["value", "rise", "rate", "mean"] = "value"
    window: float = 0.0
    per: float = 1.0
    sustain: float = 0.0
    clear_sustain: float = 0.0
    gate: Gate = ALWAYS
    baseline: Baseline | None = None
    devices: frozenset[str] | None = None
    severity: str | None = None
    message: str | None = None
    unit: str | None = None


def ThresholdRule(  # noqa: N802 - the v1 name of the simplest value rule, kept for its callers
    *, name: str, metric: str, raise_above: float, clear_below: float
) -> ValueRule:
    """Raise ``name`` when ``metric`` > ``raise_above``; clear it when < ``clear_below``."""
    return ValueRule(name=name, metrics=(metric,), raise_at=raise_above, clear_at=clear_below)


@dataclass(frozen=True, slots=True, kw_only=True)
class SilentWhileRule:
    """``name`` raises for a device of ``devices`` silent for ``after`` s while a witness answers."""

    name: str
    devices: frozenset[str]
    witnesses: frozenset[str]
    after: float
    severity: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmState:
    """The known state of one alarm of one device.

    ``threshold`` is the limit that decided the state: the raise limit while active, the clear
    limit once cleared (for the silence rules: seconds without a reading). ``since`` is the
    wall-clock time the state began: the deciding reading's ``ts``, or for a silence rule the
    moment the silence was noticed. ``severity``/``message`` are None for the v1 alarms.
    """

    device: str
    name: str
    active: bool
    value: float | None
    unit: str
    threshold: float
    since: datetime
    severity: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmChange:
    """A new `AlarmState`; ``event`` is true for a transition (raised or cleared)."""

    state: AlarmState
    event: bool


class Window:
    """The samples of the last ``span`` seconds, in at most `BUCKETS` + 1 buckets.

    Each bucket keeps (start, first value, minimum, sum, count): enough for the rise (value minus
    minimum), the rate (increase since the oldest bucket's first value) and the mean. The oldest
    bucket starts at or before ``now - span``, so a full window spans ``span`` to ``span`` plus
    one bucket width.
    """

    BUCKETS = 120

    def __init__(self, span: float) -> None:
        self._span = span
        self._width = span / self.BUCKETS
        self._buckets: deque[list[float]] = deque()

    def add(self, now: float, value: float) -> None:
        """Add a sample taken at monotonic ``now``."""
        buckets = self._buckets
        if buckets and now < buckets[-1][0]:
            buckets.clear()  # the clock went back: start again rather than mix time scales
        if not buckets or now - buckets[-1][0] >= self._width:
            buckets.append([now, value, value, value, 1.0])
        else:
            last = buckets[-1]
            last[2] = min(last[2], value)
            last[3] += value
            last[4] += 1.0
        while len(buckets) > 1 and buckets[1][0] <= now - self._span:
            buckets.popleft()

    def full(self, now: float) -> bool:
        """Whether the samples cover at least half the span (a rate or mean is meaningful)."""
        return bool(self._buckets) and now - self._buckets[0][0] >= self._span / 2

    def rise(self, value: float) -> float:
        """``value`` minus the lowest sample of the window."""
        return value - min(b[2] for b in self._buckets)

    def rate(self, now: float, value: float, per: float) -> float | None:
        """The increase per ``per`` s since the oldest sample; None if too short or it fell."""
        if not self.full(now):
            return None
        start, first = self._buckets[0][0], self._buckets[0][1]
        if value < first:  # a counter reset or replaced meter: learn again
            self._buckets.clear()
            self.add(now, value)
            return None
        return (value - first) / (now - start) * per

    def mean(self, now: float) -> float | None:
        """The mean of the samples, or None while the window is short."""
        if not self.full(now):
            return None
        return sum(b[3] for b in self._buckets) / sum(b[4] for b in self._buckets)


@dataclass(slots=True)
class _Track:
    """What one (device, value rule) remembers between readings."""

    pending: float | None = None  # monotonic time the raise condition began
    clearing: float | None = None  # monotonic time the clear condition began
    windows: dict[str, Window] = field(default_factory=dict)
    night_sum: float = 0.0
    night_n: int = 0
    night_alarmed: bool = False
    nights: deque[float] = field(default_factory=deque)


class AlarmBook:
    """The alarm states of every device; feed it readings and call `check` now and then.

    ``silent_after`` maps each watched device to its silence limit in seconds (devices missing
    from it get no ``silent`` alarm). ``clock`` is monotonic seconds, ``wall`` returns aware UTC
    datetimes; both are injected so that tests drive time. ``restored`` are states read back at
    start-up (they are known, so a condition that still holds raises no second event);
    ``baselines`` the learnt nights, keyed ``device/rule``.
    """

    def __init__(
        self,
        *,
        rules: Iterable[ValueRule],
        silent_after: Mapping[str, float],
        clock: Callable[[], float],
        wall: Callable[[], datetime],
        silent_while: Iterable[SilentWhileRule] = (),
        schedule: Schedule | None = None,
        restored: Iterable[AlarmState] = (),
        baselines: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self._rules: dict[str, list[ValueRule]] = {}
        for rule in rules:
            for metric in rule.metrics:
                self._rules.setdefault(metric, []).append(rule)
        self._silent_after = dict(silent_after)
        self._silent_while = tuple(silent_while)
        self._schedule = schedule or Schedule()
        self._clock = clock
        self._wall = wall
        started = clock()
        self._heard: dict[str, float] = dict.fromkeys(self._silent_after, started)
        self._answered: dict[str, float] = {}
        for watch in self._silent_while:
            self._answered.update(dict.fromkeys(watch.devices, started))
        self._states: dict[tuple[str, str], AlarmState] = {(s.device, s.name): s for s in restored}
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._learnt = {key: list(nights) for key, nights in (baselines or {}).items()}
        #: Set when a baseline learnt a night (the service persists, then resets it).
        self.baselines_changed = False

    def states(self) -> list[AlarmState]:
        """Every known alarm state, in the order they became known."""
        return list(self._states.values())

    def active(self, device: str) -> list[AlarmState]:
        """The active alarms of ``device``."""
        return [s for s in self._states.values() if s.device == device and s.active]

    def baselines(self) -> dict[str, list[float]]:
        """The learnt nights of every baseline rule, keyed ``device/rule`` (for persistence)."""
        learnt = dict(self._learnt)
        for (device, name), track in self._tracks.items():
            if track.nights:
                learnt[f"{device}/{name}"] = list(track.nights)
        return learnt

    def observe(self, reading: Reading) -> list[AlarmChange]:
        """Evaluate one reading; returns what changed (usually nothing)."""
        changes = []
        now = self._clock()
        if reading.device in self._silent_after:
            self._heard[reading.device] = now
            changes += self._set(
                AlarmState(
                    device=reading.device,
                    name=SILENT,
                    active=False,
                    value=0.0,
                    unit="s",
                    threshold=self._silent_after[reading.device],
                    since=reading.ts,
                )
            )
        self._answered[reading.device] = now
        for watch in self._silent_while:
            if reading.device in watch.devices:
                changes += self._set(self._silence(watch, reading.device, None, reading.ts))
        if reading.quality is not Quality.GOOD or not _is_number(reading.value):
            return changes
        value = float(reading.value)  # type: ignore[arg-type]  # _is_number checked it
        for rule in self._rules.get(reading.metric, ()):
            if rule.devices is None or reading.device in rule.devices:
                changes += self._evaluate(rule, reading, value, now)
        return changes

    def check(self) -> list[AlarmChange]:
        """Raise the silence alarms of devices not heard from for their limit."""
        now = self._clock()
        changes = []
        for device, limit in self._silent_after.items():
            quiet = now - self._heard[device]
            if quiet > limit:
                state = AlarmState(
                    device=device,
                    name=SILENT,
                    active=True,
                    value=round(quiet, 3),
                    unit="s",
                    threshold=limit,
                    since=utc_ms(self._wall()),
                )
                changes += self._set(state)
        for watch in self._silent_while:
            witnessed = max((self._answered.get(w, -1e18) for w in watch.witnesses), default=-1e18)
            if now - witnessed > watch.after:
                continue  # the witnesses are silent too: not a power cut we can tell
            for device in sorted(watch.devices):
                quiet = now - self._answered[device]
                if quiet > watch.after:
                    changes += self._set(self._silence(watch, device, quiet, utc_ms(self._wall())))
        return changes

    def _silence(
        self, watch: SilentWhileRule, device: str, quiet: float | None, at: datetime
    ) -> AlarmState:
        return AlarmState(
            device=device,
            name=watch.name,
            active=quiet is not None,
            value=0.0 if quiet is None else round(quiet, 3),
            unit="s",
            threshold=watch.after,
            since=at,
            severity=watch.severity,
            message=watch.message,
        )

    def _evaluate(
        self, rule: ValueRule, reading: Reading, value: float, now: float
    ) -> list[AlarmChange]:
        key = (reading.device, rule.name)
        track = self._tracks.get(key)
        if track is None:
            track = self._tracks[key] = _Track()
            learnt = self._learnt.pop(f"{reading.device}/{rule.name}", ())
            if rule.baseline is not None:
                track.nights = deque(learnt, maxlen=rule.baseline.nights)
        gate_open = self._schedule.is_open(rule.gate, reading.ts)
        signal = self._signal(rule, track, reading.metric, value, now)
        raise_at, clear_at = rule.raise_at, rule.clear_at
        was = self._states.get(key)
        active = was is not None and was.active
        if rule.baseline is not None:
            self._learn(rule.baseline, track, value, gate_open=gate_open, active=active)
            limits = rule.baseline.limits(track.nights)
            if limits is None:
                return []
            raise_at, clear_at = limits
        if signal is None:
            return []
        beyond_raise, beyond_clear = _beyond(rule, signal, raise_at, clear_at)

        def state(active: bool, threshold: float) -> AlarmState:
            return AlarmState(
                device=reading.device,
                name=rule.name,
                active=active,
                value=signal,
                unit=rule.unit if rule.unit is not None else reading.unit,
                threshold=threshold,
                since=reading.ts,
                severity=rule.severity,
                message=rule.message,
            )

        if not active:
            track.clearing = None
            if not (beyond_raise and gate_open):
                track.pending = None
            elif track.pending is None:
                track.pending = now
            if track.pending is not None and now - track.pending >= rule.sustain:
                track.pending = None
                track.night_alarmed = True
                return self._set(state(True, raise_at))
            return self._set(state(False, clear_at)) if was is None else []
        track.pending = None
        if not beyond_clear:
            track.clearing = None
        elif track.clearing is None:
            track.clearing = now
        if track.clearing is not None and now - track.clearing >= rule.clear_sustain:
            track.clearing = None
            return self._set(state(False, clear_at))
        return self._set(state(True, was.threshold if was is not None else raise_at))

    def _signal(
        self, rule: ValueRule, track: _Track, metric: str, value: float, now: float
    ) -> float | None:
        if rule.signal == "value":
            return value
        window = track.windows.get(metric)
        if window is None:
            window = track.windows[metric] = Window(rule.window)
        if rule.signal == "rate":
            signal = window.rate(now, value, rule.per)
            window.add(now, value)
            return signal
        window.add(now, value)
        return window.rise(value) if rule.signal == "rise" else window.mean(now)

    def _learn(
        self, baseline: Baseline, track: _Track, value: float, *, gate_open: bool, active: bool
    ) -> None:
        """Accumulate tonight's mean; learn it when the night (the open gate) ends."""
        if gate_open:
            track.night_sum += value
            track.night_n += 1
            track.night_alarmed = track.night_alarmed or active
            return
        if track.night_n >= MIN_NIGHT_READINGS and not track.night_alarmed:
            track.nights.append(track.night_sum / track.night_n)
            self.baselines_changed = True
        track.night_sum, track.night_n, track.night_alarmed = 0.0, 0, False

    def _set(self, state: AlarmState) -> list[AlarmChange]:
        key = (state.device, state.name)
        was = self._states.get(key)
        if was is not None and was.active == state.active:
            if state.active and state.name != SILENT:
                # Keep the start of the episode; the value follows the readings locally only.
                self._states[key] = replace(state, since=was.since)
            return []
        self._states[key] = state
        return [AlarmChange(state=state, event=was is not None or state.active)]


def _beyond(rule: ValueRule, signal: float, raise_at: float, clear_at: float) -> tuple[bool, bool]:
    """(beyond the raise limit, beyond the clear limit) for ``signal``."""
    if rule.direction == "equals":
        return signal in rule.equals, signal not in rule.equals
    if rule.direction == "above":
        return signal > raise_at, signal < clear_at
    return signal < raise_at, signal > clear_at


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
