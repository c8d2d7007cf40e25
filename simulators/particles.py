"""A deterministic model of the particulate matter in a kindergarten classroom.

`ClassroomDust` is, like `simulators.classroom.ClassroomAir`, a pure function of time: the PM
chip simulator and a test that drives it agree on the air without sharing state. It follows the
same timetable (a 45-minute lesson, then a 15-minute break with the windows open, every hour) and
adds the events that matter for fine dust in the pilot kindergarten:

* **outdoor background**: PM2.5 around 8 µg/m³ with a slow daily swing (urban background);
* **occupancy**: children stir up coarse dust, so PM10 (much more than PM2.5) rises in lessons;
* **windows open** (the breaks): indoor air relaxes towards the outdoor background;
* **cooking next door**: the kindergarten kitchen shares the building; every day around lunch
  (seeded start and strength) fine particles leak into the classroom, PM2.5 peaking at
  40-120 µg/m³ and decaying over half an hour.

Extra `PmEvent` episodes can be scripted (``events=``) for a test's "classroom day": cooking at a
chosen time, a window left open. Values are atmospheric-environment (CF=ATM) mass concentrations
in µg/m³; the chip model derives its CF=1 values and particle counts from them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

#: One simulated day, in seconds of the model's time scale.
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PmSample:
    """PM1.0, PM2.5 and PM10 in µg/m³ (atmospheric environment); pm1 <= pm25 <= pm10."""

    pm1: float
    pm25: float
    pm10: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PmEvent:
    """A scripted episode from ``start`` for ``duration`` seconds.

    ``cooking``: PM2.5 rises towards ``level`` µg/m³ while it lasts (time constant 5 min) and
    decays afterwards (15 min). ``smoke`` (burnt toast, a pan on fire): the same with a time
    constant of 1 min, as smoke fills a room in minutes. ``window``: the air relaxes towards the
    outdoor background while it lasts, whatever the timetable says.
    """

    kind: Literal["cooking", "smoke", "window"]
    start: float
    duration: float
    level: float = 80.0


class ClassroomDust:
    """Classroom particulate matter as a pure function of time: ``dust(t) -> PmSample``."""

    OUTDOOR_PM25 = 8.0
    CYCLE_S = 3600.0
    LESSON_S = 2700.0
    COOK_RISE_S = 300.0
    COOK_DECAY_S = 900.0
    SMOKE_RISE_S = 60.0
    LUNCH_S = 11.5 * 3600.0  # around 11:30 on the model's day
    AIRING_S = 240.0

    def __init__(self, *, seed: int = 0, events: Sequence[PmEvent] = ()) -> None:
        self._seed = seed
        self._events = tuple(events)

    def __call__(self, t: float) -> PmSample:
        outdoor = self.OUTDOOR_PM25 * (1.0 + 0.3 * math.sin(2 * math.pi * t / DAY_S))
        lesson = math.floor(t / self.CYCLE_S)
        into = t - lesson * self.CYCLE_S
        airing = into >= self.LESSON_S or self._window_open(t)
        # Children stir up coarse dust during lessons; it settles / is aired out in breaks.
        coarse = 25.0 * self._occupancy(lesson) * (0.2 if airing else 1.0)
        fine = sum(self._cooking(event, t) for event in self._daily_cooking(t))
        fine += sum(self._cooking(event, t) for event in self._events if event.kind != "window")
        if airing:
            fine *= 0.5  # fresh air dilutes whatever the kitchen let in
        pm25 = outdoor + fine + 0.15 * coarse
        pm1 = 0.7 * outdoor + 0.85 * fine
        return PmSample(pm1=pm1, pm25=pm25, pm10=pm25 + coarse)

    def _occupancy(self, lesson: int) -> float:
        return random.Random(f"classroom:{self._seed}:{lesson}").uniform(0.4, 1.0)

    def _window_open(self, t: float) -> bool:
        return any(e.kind == "window" and e.start <= t < e.start + e.duration for e in self._events)

    def _daily_cooking(self, t: float) -> list[PmEvent]:
        """Lunch in the kitchen next door, today's and yesterday's (its tail may still linger)."""
        day = math.floor(t / DAY_S)
        events = []
        for d in (day - 1, day):
            rng = random.Random(f"kitchen:{self._seed}:{d}")
            start = d * DAY_S + self.LUNCH_S + rng.uniform(-1800.0, 1800.0)
            events.append(
                PmEvent(kind="cooking", start=start, duration=2400.0, level=rng.uniform(40, 120))
            )
        return events

    def _cooking(self, event: PmEvent, t: float) -> float:
        if t < event.start:
            return 0.0
        rise = self.SMOKE_RISE_S if event.kind == "smoke" else self.COOK_RISE_S
        at = min(t, event.start + event.duration) - event.start
        peak = event.level * (1.0 - math.exp(-at / rise))
        after = t - (event.start + event.duration)
        return peak if after <= 0 else peak * math.exp(-after / self.COOK_DECAY_S)
