"""Air-quality classes of one room from its latest readings: pure functions, no I/O, no clock.

The classes are what the traffic light and the face on the panel show, so they must be few and
stable: `Level.GOOD`, `Level.MODERATE`, `Level.POOR`; `Level.ALARM` is never the result of
classification, the alarm state machine (`gateway.status.alarms`) sets it.

Choices, and why (docs/design.md repeats them for staff):

- **CO2**, the ventilation indicator. Default: the school traffic light, good below 1000 ppm,
  moderate below 1400 ppm, poor from 1400 ppm. Option ``en16798``: the EN 16798-1 categories by
  CO2 *above outdoor* (I ≤ +550, II ≤ +800, III ≤ +1350 ppm, IV beyond); I and II ("normal
  expectation") show good, III ("moderate expectation") moderate, IV poor.
- **PM2.5**: the display shows the current value against the WHO 2021 **24-hour** guideline,
  15 µg/m³: good up to 15, moderate up to 37.5 (the WHO 24-h interim target 3), poor above. The
  annual guideline (5 µg/m³) is a long-term exposure figure; applied to an instantaneous reading it
  would show a moderate face on an ordinary day in most European towns, teaching children that the
  face means nothing. The emergency alarm's default (75 µg/m³) is the WHO 24-h interim target 1.
- **Comfort** (temperature, humidity): good within 20-24 °C and 30-60 %RH (EN 16798-1 category
  II, heating season), moderate within 18-26 °C and 20-70 %RH, poor beyond. Discomfort is not a
  health risk, so it can make the room's overall level moderate, never poor.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import StatusConfig

#: Metric keys read here; PM2.5 accepts the spellings a PM driver may use.
CO2, TEMPERATURE, HUMIDITY = "co2", "temperature", "humidity"
PM25_KEYS = ("pm25", "pm2_5")

#: EN 16798-1 CO2 limits above outdoor, per category.
EN16798_LIMITS = (("I", 550.0), ("II", 800.0), ("III", 1350.0))

#: Comfort bands: (good low, good high, moderate low, moderate high).
TEMPERATURE_BANDS = (20.0, 24.0, 18.0, 26.0)
HUMIDITY_BANDS = (30.0, 60.0, 20.0, 70.0)


class Level(enum.IntEnum):
    """An air-quality class, ordered from best to worst so that ``max`` picks the worst."""

    GOOD = 0
    MODERATE = 1
    POOR = 2
    #: An emergency alarm is active (set by the alarm state machine, never by classification).
    ALARM = 3

    @property
    def label(self) -> str:
        """Lower-case name used in file names, logs and MQTT."""
        return self.name.lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class Assessment:
    """The classes of one room; a metric's class is ``None`` when there is no value for it."""

    level: Level
    co2: Level | None = None
    pm25: Level | None = None
    comfort: Level | None = None
    #: The EN 16798-1 category ("I".."IV") when that scheme is configured and CO2 is known.
    category: str | None = None


def classify_co2(ppm: float, config: StatusConfig) -> tuple[Level, str | None]:
    """The CO2 class and, with the ``en16798`` scheme, the EN 16798-1 category."""
    if config.co2_scheme == "en16798":
        above = ppm - config.outdoor_co2
        category = next((name for name, limit in EN16798_LIMITS if above <= limit), "IV")
        level = {"I": Level.GOOD, "II": Level.GOOD, "III": Level.MODERATE}.get(category, Level.POOR)
        return level, category
    if ppm < config.co2_moderate:
        return Level.GOOD, None
    return (Level.MODERATE if ppm < config.co2_poor else Level.POOR), None


def classify_pm25(ugm3: float, config: StatusConfig) -> Level:
    """PM2.5 against the WHO 24-h guideline (good ≤ ``pm25_moderate``, moderate ≤ ``pm25_poor``)."""
    if ugm3 <= config.pm25_moderate:
        return Level.GOOD
    return Level.MODERATE if ugm3 <= config.pm25_poor else Level.POOR


def _band(value: float, bands: tuple[float, float, float, float]) -> Level:
    good_low, good_high, moderate_low, moderate_high = bands
    if good_low <= value <= good_high:
        return Level.GOOD
    if moderate_low <= value <= moderate_high:
        return Level.MODERATE
    return Level.POOR


def classify_comfort(temperature: float | None, humidity: float | None) -> Level | None:
    """The worse of the temperature and humidity bands; ``None`` when neither is known."""
    levels = [
        _band(value, bands)
        for value, bands in ((temperature, TEMPERATURE_BANDS), (humidity, HUMIDITY_BANDS))
        if value is not None
    ]
    return max(levels) if levels else None


def pm25_of(values: Mapping[str, float]) -> float | None:
    """The PM2.5 value among ``values``, whichever key the driver uses."""
    return next((values[key] for key in PM25_KEYS if key in values), None)


def assess(values: Mapping[str, float], config: StatusConfig) -> Assessment:
    """Classify a room from its latest numeric values by metric key (missing keys are unknown).

    The overall level is the worst of CO2 and PM2.5, and of comfort capped at moderate. A room
    with no values at all is `Level.GOOD` with every class ``None``: the service shows such a room
    as "no data" rather than trusting this level.
    """
    co2_level, category = (None, None)
    if CO2 in values:
        co2_level, category = classify_co2(values[CO2], config)
    pm25 = pm25_of(values)
    pm25_level = classify_pm25(pm25, config) if pm25 is not None else None
    comfort = classify_comfort(values.get(TEMPERATURE), values.get(HUMIDITY))
    parts = [co2_level, pm25_level, min(comfort, Level.MODERATE) if comfort is not None else None]
    known = [level for level in parts if level is not None]
    return Assessment(
        level=max(known) if known else Level.GOOD,
        co2=co2_level,
        pm25=pm25_level,
        comfort=comfort,
        category=category,
    )
