"""Emergency alarms with hysteresis, and "sensor silent": a pure state machine with injected clocks.

An alarm is identified by ``(device, name)``. Its state starts unknown and becomes known with the
first evaluation: a value rule on the device's first valid reading of the metric, the silence rule
on the first valid reading of any metric (clear) or when the device stays silent (active).

- A **threshold** alarm raises on the first reading strictly above ``raise_above`` and clears on
  the first reading strictly below ``clear_below``; in between it keeps its state. One reading is
  enough in both directions: the alarm must be shown and published within one poll, and the gap
  between the two thresholds is what prevents flapping, not a delay.
- **silent** raises when a device has delivered no reading at all for ``silent_after`` seconds
  of the monotonic ``clock`` (counted from start-up, so an absent sensor is noticed too) and
  clears with its next reading. A "no value" reading counts as heard: the sensor answered, and a
  PM sensor warming up for 30 s after every start must not raise an emergency. A sensor that
  fails (NACK, CRC, stuck) delivers no readings at all and does raise it.

Every evaluation that changes what is known returns `AlarmChange` objects; ``event`` is true for
a real transition (raised / cleared) and false for the first determination of a clear alarm, which
is published as retained state but is not news.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from gateway.model import Quality, Reading, utc_ms

SILENT = "silent"


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdRule:
    """Raise ``name`` when ``metric`` > ``raise_above``; clear it when < ``clear_below``."""

    name: str
    metric: str
    raise_above: float
    clear_below: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmState:
    """The known state of one alarm of one device.

    ``threshold`` is the limit that decided the state: ``raise_above`` while active,
    ``clear_below`` once cleared (for ``silent``: seconds without a valid reading). ``since`` is
    the wall-clock time the state began: the deciding reading's ``ts``, or for ``silent`` the
    moment the silence was noticed.
    """

    device: str
    name: str
    active: bool
    value: float | None
    unit: str
    threshold: float
    since: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmChange:
    """A new `AlarmState`; ``event`` is true for a transition (raised or cleared)."""

    state: AlarmState
    event: bool


class AlarmBook:
    """The alarm states of every device; feed it readings and call `check` now and then.

    ``silent_after`` maps each watched device to its silence limit in seconds (devices missing
    from it get no ``silent`` alarm). ``clock`` is monotonic seconds, ``wall`` returns aware UTC
    datetimes; both are injected so that tests drive time.
    """

    def __init__(
        self,
        *,
        rules: Iterable[ThresholdRule],
        silent_after: Mapping[str, float],
        clock: Callable[[], float],
        wall: Callable[[], datetime],
    ) -> None:
        self._rules: dict[str, list[ThresholdRule]] = {}
        for rule in rules:
            self._rules.setdefault(rule.metric, []).append(rule)
        self._silent_after = dict(silent_after)
        self._clock = clock
        self._wall = wall
        started = clock()
        self._heard: dict[str, float] = dict.fromkeys(self._silent_after, started)
        self._states: dict[tuple[str, str], AlarmState] = {}

    def states(self) -> list[AlarmState]:
        """Every known alarm state, in the order they became known."""
        return list(self._states.values())

    def active(self, device: str) -> list[AlarmState]:
        """The active alarms of ``device``."""
        return [s for s in self._states.values() if s.device == device and s.active]

    def observe(self, reading: Reading) -> list[AlarmChange]:
        """Evaluate one reading; returns what changed (usually nothing)."""
        changes = []
        if reading.device in self._silent_after:
            self._heard[reading.device] = self._clock()
            silent = AlarmState(
                device=reading.device,
                name=SILENT,
                active=False,
                value=0.0,
                unit="s",
                threshold=self._silent_after[reading.device],
                since=reading.ts,
            )
            changes += self._set(silent)
        if reading.quality is not Quality.GOOD or not _is_number(reading.value):
            return changes
        value = float(reading.value)  # type: ignore[arg-type]  # _is_number checked it
        for rule in self._rules.get(reading.metric, ()):
            key = (reading.device, rule.name)
            was = self._states.get(key)
            if value > rule.raise_above:
                active, threshold = True, rule.raise_above
            elif value < rule.clear_below or was is None:
                active, threshold = False, rule.clear_below
            else:
                continue  # inside the hysteresis band: keep the state
            state = AlarmState(
                device=reading.device,
                name=rule.name,
                active=active,
                value=value,
                unit=reading.unit,
                threshold=threshold,
                since=reading.ts,
            )
            changes += self._set(state)
        return changes

    def check(self) -> list[AlarmChange]:
        """Raise ``silent`` for every watched device not heard from for its limit."""
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
        return changes

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


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
