"""Shared test helpers for the status package: configs, readings, a fake clock, mock GPIO."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from gateway.config import GatewayConfig, parse_config
from gateway.model import Quality, Reading, Value
from tests.fakeclock import FakeClock as BaseFakeClock

T0 = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
UNITS = {"co2": "ppm", "temperature": "°C", "humidity": "%RH", "pm25": "µg/m³"}


class FakeClock(BaseFakeClock):
    """The shared fake clock plus the wall clock that goes with it."""

    def wall(self) -> datetime:
        """The wall clock that goes with it: T0 + monotonic seconds."""
        return T0 + timedelta(seconds=self())


def reading(device: str, metric: str, value: Value, *, at: float = 0.0, seq: int = 1) -> Reading:
    return Reading(
        device=device,
        metric=metric,
        value=value,
        unit=UNITS.get(metric, ""),
        ts=T0 + timedelta(seconds=at),
        seq=seq,
        quality=Quality.GOOD if value is not None else Quality.NO_VALUE,
    )


def status_config(*, mqtt_port: int = 1883, **status: Any) -> GatewayConfig:
    """A site with one canary pair (SCD4x + PMSA003I) in room 'ladybird', plus ``[status]`` keys."""
    data: dict[str, Any] = {
        "site": {"id": "kg"},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "devices": [
            {"id": "ladybird-co2", "driver": "scd4x", "bus": "/dev/i2c-1"},
            {"id": "ladybird-pm", "driver": "pmsa003i", "bus": "/dev/i2c-1", "interval": 5.0},
        ],
        "status": {
            "rooms": [
                {
                    "id": "ladybird",
                    "name": "Ladybird room",
                    "devices": ["ladybird-co2", "ladybird-pm"],
                    "led": {"red": 17, "amber": 27, "green": 22},
                }
            ],
            **status,
        },
    }
    return parse_config(data, source="test")


@pytest.fixture
def mock_pins() -> Iterator[MockFactory]:
    """gpiozero's MockFactory as the default pin factory, restored after the test."""
    saved = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = saved


def lit(factory: MockFactory) -> tuple[bool, bool, bool]:
    """(red, amber, green) of the test room's traffic light (BCM 17, 27, 22)."""
    return tuple(bool(factory.pin(n).state) for n in (17, 27, 22))  # type: ignore[return-value]
