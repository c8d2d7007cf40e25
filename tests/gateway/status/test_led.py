"""The traffic light on gpiozero's MockFactory: one LED per class, red blinking for an alarm."""

from __future__ import annotations

from gpiozero.pins.mock import MockFactory

from gateway.config import LedPins
from gateway.status.airquality import Level
from gateway.status.led import TrafficLight
from tests.gateway.status.helpers import lit, mock_pins

__all__ = ["mock_pins"]  # the fixture


def test_each_class_lights_its_led(mock_pins: MockFactory) -> None:
    light = TrafficLight(pins=LedPins(red=17, amber=27, green=22))
    try:
        expected = {
            None: (False, False, False),
            Level.GOOD: (False, False, True),
            Level.MODERATE: (False, True, False),
            Level.POOR: (True, False, False),
        }
        for level, pins in expected.items():
            light.show(level)
            assert lit(mock_pins) == pins
        light.show(Level.ALARM, blink_on=True)
        assert lit(mock_pins) == (True, False, False)
        light.show(Level.ALARM, blink_on=False)
        assert lit(mock_pins) == (False, False, False)
    finally:
        light.close()
    assert lit(mock_pins) == (False, False, False)


def test_unchanged_pattern_does_not_touch_the_pins(mock_pins: MockFactory) -> None:
    light = TrafficLight(pins=LedPins(red=17, amber=27, green=22))
    try:
        light.show(Level.GOOD)
        changes = len(mock_pins.pin(22).states)
        light.show(Level.GOOD)
        assert len(mock_pins.pin(22).states) == changes
    finally:
        light.close()
