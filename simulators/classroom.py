"""A deterministic model of the air in a classroom, shared by the air-quality chip simulators."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class AirEvent:
    """A scripted episode of the room's temperature from ``start`` for ``duration`` seconds.

    ``heatwave``: the room warms by up to ``level`` °C (time constant 30 min) while it lasts and
    cools back afterwards. ``heating_failure``: the room cools towards ``level`` °C (the
    building's unheated temperature; time constant 3 h) while it lasts; once repaired it warms
    back (time constant 1 h).
    """

    kind: Literal["heatwave", "heating_failure"]
    start: float
    duration: float
    level: float


class ClassroomAir:
    """Classroom air as a pure function of time: ``air(t) -> (co2_ppm, temperature_c, rh_pct)``.

    Every hour is a 45-minute lesson followed by a 15-minute break with the windows open. Each
    lesson's occupancy (40-100 % of a full class) is drawn from ``seed`` and the lesson number, so
    a value depends on ``(seed, t)`` only: two processes, or a test and the chip it drives, agree
    on the air without sharing state. During a lesson CO2 climbs from the outdoor baseline
    (430 ppm) towards at most 1600 ppm; in the break it decays back. Temperature (20-24 °C) and
    humidity (35-55 %RH) rise with the same occupancy-driven excess, plus a slow daily swing.
    ``t`` is in seconds on any monotonic scale.
    """

    OUTDOOR_PPM = 430.0
    MAX_EXCESS_PPM = 1170.0
    CYCLE_S = 3600.0
    LESSON_S = 2700.0
    RISE_S = 900.0
    AIRING_S = 240.0

    HEAT_S = 1800.0
    COOL_S = 3 * 3600.0
    REHEAT_S = 3600.0

    def __init__(self, *, seed: int = 0, events: Sequence[AirEvent] = ()) -> None:
        self._seed = seed
        self._events = tuple(events)

    def __call__(self, t: float) -> tuple[float, float, float]:
        lesson = math.floor(t / self.CYCLE_S)
        excess = self._excess(lesson, t - lesson * self.CYCLE_S)
        load = excess / self.MAX_EXCESS_PPM
        daily = math.sin(2 * math.pi * t / 86_400.0)
        temperature = 20.4 + 3.0 * load + 0.4 * daily
        humidity = 37.0 + 15.0 * load + 2.0 * daily
        for event in self._events:
            temperature += self._offset(event, t, temperature)
        return self.OUTDOOR_PPM + excess, temperature, humidity

    def _offset(self, event: AirEvent, t: float, normal: float) -> float:
        """What ``event`` adds to the ``normal`` temperature at ``t`` (a first-order response)."""
        if t < event.start:
            return 0.0
        into = min(t, event.start + event.duration) - event.start
        after = max(0.0, t - (event.start + event.duration))
        if event.kind == "heatwave":
            peak = event.level * (1.0 - math.exp(-into / self.HEAT_S))
            return peak * math.exp(-after / self.HEAT_S)
        fall = (event.level - normal) * (1.0 - math.exp(-into / self.COOL_S))
        return fall * math.exp(-after / self.REHEAT_S)

    def occupancy(self, lesson: int) -> float:
        """Share of a full class present in lesson number ``lesson`` (0.4-1.0, seeded)."""
        return random.Random(f"classroom:{self._seed}:{lesson}").uniform(0.4, 1.0)

    def _excess(self, lesson: int, into: float) -> float:
        target = self.MAX_EXCESS_PPM * self.occupancy(lesson)
        start = self._left_over(lesson - 1)
        if into < self.LESSON_S:
            return target + (start - target) * math.exp(-into / self.RISE_S)
        at_bell = target + (start - target) * math.exp(-self.LESSON_S / self.RISE_S)
        return at_bell * math.exp(-(into - self.LESSON_S) / self.AIRING_S)

    def _left_over(self, lesson: int) -> float:
        # The excess a lesson leaves after its break; what earlier lessons left is < 1 ppm.
        target = self.MAX_EXCESS_PPM * self.occupancy(lesson)
        at_bell = target * (1.0 - math.exp(-self.LESSON_S / self.RISE_S))
        return at_bell * math.exp(-(self.CYCLE_S - self.LESSON_S) / self.AIRING_S)
