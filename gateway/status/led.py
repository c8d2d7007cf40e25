"""A room's LED traffic light through gpiozero: green, amber, red, and red blinking for an alarm.

Blinking is driven by the caller's tick (`TrafficLight.show` with ``blink_on``), not by gpiozero's
``blink()``: that starts a background thread per LED, and the house style keeps threads away from
the event loop. The status service ticks twice a second, so an alarm blinks at 1 Hz.

The pin factory is gpiozero's default (lgpio on a Pi) unless one is injected; tests inject
``gpiozero.pins.mock.MockFactory``.
"""

from __future__ import annotations

from typing import Any

from gpiozero import TrafficLights

from gateway.config import LedPins
from gateway.status.airquality import Level


class TrafficLight:
    """Three LEDs showing a `Level`; ``None`` (no data yet) shows nothing.

    GOOD: green; MODERATE: amber; POOR: red; ALARM: red blinking (on when ``blink_on``).
    Writes to the pins only when the wanted pattern differs from the last one written.
    """

    def __init__(self, *, pins: LedPins, pin_factory: Any = None) -> None:
        self._lights = TrafficLights(
            red=pins.red, amber=pins.amber, green=pins.green, pin_factory=pin_factory
        )
        self._shown: tuple[bool, bool, bool] | None = None

    @staticmethod
    def pattern(level: Level | None, *, blink_on: bool) -> tuple[bool, bool, bool]:
        """(red, amber, green) for ``level``."""
        if level is None:
            return (False, False, False)
        if level is Level.ALARM:
            return (blink_on, False, False)
        return (level is Level.POOR, level is Level.MODERATE, level is Level.GOOD)

    def show(self, level: Level | None, *, blink_on: bool = True) -> None:
        """Set the LEDs for ``level`` at this blink phase."""
        wanted = self.pattern(level, blink_on=blink_on)
        if wanted == self._shown:
            return
        for led, on in zip(
            (self._lights.red, self._lights.amber, self._lights.green), wanted, strict=True
        ):
            if on:
                led.on()
            else:
                led.off()
        self._shown = wanted

    def close(self) -> None:
        """Switch the LEDs off and release the pins."""
        self._lights.close()
