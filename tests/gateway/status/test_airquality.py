"""Air-quality classes: the documented bands, both CO2 schemes, and monotonicity."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.status.airquality import Level, assess, classify_co2, classify_pm25
from tests.gateway.status.helpers import status_config

DEFAULT = status_config().status
EN = status_config(co2_scheme="en16798").status


@pytest.mark.parametrize(
    ("ppm", "level"),
    [
        (420, Level.GOOD),
        (999, Level.GOOD),
        (1000, Level.MODERATE),
        (1399, Level.MODERATE),
        (1400, Level.POOR),
    ],
)
def test_co2_traffic_light(ppm: float, level: Level) -> None:
    assert classify_co2(ppm, DEFAULT) == (level, None)


@pytest.mark.parametrize(
    ("ppm", "category", "level"),
    [
        (970, "I", Level.GOOD),  # outdoor 420 + 550
        (971, "II", Level.GOOD),
        (1220, "II", Level.GOOD),
        (1221, "III", Level.MODERATE),
        (1770, "III", Level.MODERATE),
        (1771, "IV", Level.POOR),
    ],
)
def test_co2_en16798_categories(ppm: float, category: str, level: Level) -> None:
    assert classify_co2(ppm, EN) == (level, category)


def test_en16798_follows_the_configured_outdoor_level() -> None:
    config = status_config(co2_scheme="en16798", outdoor_co2=500).status
    assert classify_co2(1050, config) == (Level.GOOD, "I")


@pytest.mark.parametrize(
    ("ugm3", "level"),
    [
        (5, Level.GOOD),
        (15, Level.GOOD),
        (15.1, Level.MODERATE),
        (37.5, Level.MODERATE),
        (38, Level.POOR),
    ],
)
def test_pm25_against_the_who_24h_guideline(ugm3: float, level: Level) -> None:
    assert classify_pm25(ugm3, DEFAULT) is level


def test_room_level_is_the_worst_class() -> None:
    result = assess({"co2": 800, "pm25": 40, "temperature": 21, "humidity": 45}, DEFAULT)
    assert (result.level, result.co2, result.pm25, result.comfort) == (
        Level.POOR,
        Level.GOOD,
        Level.POOR,
        Level.GOOD,
    )


def test_discomfort_alone_is_at_most_moderate() -> None:
    result = assess({"co2": 600, "temperature": 29.0, "humidity": 80}, DEFAULT)
    assert result.comfort is Level.POOR
    assert result.level is Level.MODERATE


def test_unknown_metrics_are_unknown_not_good() -> None:
    result = assess({"co2": 600}, DEFAULT)
    assert result.pm25 is None and result.comfort is None


def test_pm25_may_be_spelled_pm2_5() -> None:
    assert assess({"pm2_5": 50}, DEFAULT).pm25 is Level.POOR


@given(st.floats(300, 5000), st.floats(300, 5000))
def test_more_co2_is_never_better(a: float, b: float) -> None:
    low, high = sorted((a, b))
    for config in (DEFAULT, EN):
        assert classify_co2(low, config)[0] <= classify_co2(high, config)[0]
