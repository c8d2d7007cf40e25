"""A simulated kindergarten building driven faster than real time through the status service.

The physical models of `simulators/` (the SDM630 main meter, the SDM72 air-conditioner meter,
the TUF-2000M water meter with their counters; the classroom air and dust models) are sampled on
a fake clock every `POLL_S` seconds and their values are fed to `StatusService.observe` as the
poller would, then `step` runs as the service's loop would. The Modbus and I2C byte layers are
skipped on purpose: they have their own tests (tests/drivers, tests/system/test_classroom_day.py
runs the real I2C drivers), and a week of polls through them would take minutes here, where the
engine's decisions take seconds. Scenario knobs are the models' own (`AirEvent`, `PmEvent`,
``leaks``, ``left_on``); nothing here knows a rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import GatewayConfig, parse_config
from gateway.model import Quality, Reading
from gateway.status.alarms import AlarmChange
from gateway.status.service import StatusService
from simulators.classroom import AirEvent, ClassroomAir
from simulators.meters import Sdm72Meter, Sdm630Meter, Tuf2000mWaterMeter
from simulators.particles import ClassroomDust, PmEvent
from tests.fakeclock import FakeClock

POLL_S = 60.0
ZONE = ZoneInfo("Europe/Berlin")
UNITS = {
    "co2": "ppm",
    "temperature": "°C",
    "humidity": "%RH",
    "pm25": "µg/m³",
    "power": "W",
    "volume_forward": "m³",
    "flow_rate": "m³/h",
}


def local(text: str) -> datetime:
    """``"2026-11-23 11:40"`` in the site's zone, as aware UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=ZONE).astimezone(UTC)


def site_config(mqtt_port: int = 1883) -> GatewayConfig:
    """Building 1 of the pilot: two rooms (bee is next to the kitchen), three meters."""
    tcp = {"kind": "tcp", "host": "127.0.0.1", "port": 15021}
    devices: list[dict[str, Any]] = [
        {"id": "main-a", "driver": "modbus", "profile": "sdm630", "unit_id": 1, "transport": tcp},
        {"id": "ac-a", "driver": "modbus", "profile": "sdm72", "unit_id": 2, "transport": tcp},
        {
            "id": "water-a",
            "driver": "modbus",
            "profile": "tuf2000m",
            "unit_id": 3,
            "transport": tcp,
        },
    ]
    for room, bus in (("ladybird", "/dev/i2c-1"), ("bee", "/dev/i2c-3")):
        devices.append({"id": f"{room}-co2", "driver": "scd4x", "bus": bus, "interval": POLL_S})
        devices.append({"id": f"{room}-pm", "driver": "pmsa003i", "bus": bus, "interval": POLL_S})
    for device in devices:
        device.setdefault("interval", POLL_S)
    rooms = [
        {
            "id": "ladybird",
            "name": "Ladybird room",
            "devices": ["ladybird-co2", "ladybird-pm"],
            "led": {"red": 17, "amber": 27, "green": 22},
        },
        {
            "id": "bee",
            "name": "Bee room",
            "devices": ["bee-co2", "bee-pm"],
            "led": {"red": 5, "amber": 6, "green": 13},
        },
    ]
    data = {
        "site": {"id": "kg"},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "devices": devices,
        "status": {"rooms": rooms, "schedule": {"timezone": "Europe/Berlin"}},
    }
    return parse_config(data, source="kindergarten")


@dataclass
class Scenario:
    """Fault knobs, all empty for a normal week."""

    air: dict[str, Sequence[AirEvent]] = field(default_factory=dict)
    dust: dict[str, Sequence[PmEvent]] = field(default_factory=dict)
    leaks: Sequence[tuple[float, float, float]] = ()
    aircon_left_on: Sequence[tuple[float, float]] = ()


@dataclass
class Recorder:
    """Stands in for the MQTT publisher: every change, with the poll time it was published at."""

    clock: Callable[[], datetime]
    changes: list[tuple[datetime, AlarmChange]] = field(default_factory=list)

    def publish(self, change: AlarmChange) -> None:
        self.changes.append((self.clock(), change))

    def events(self) -> list[tuple[datetime, str, str, bool]]:
        """(when, device, alarm, active) of every transition."""
        return [
            (at, c.state.device, c.state.name, c.state.active) for at, c in self.changes if c.event
        ]


class Site:
    """The models on one fake clock, and a service fed from them; `run_until` drives it."""

    def __init__(self, *, start: datetime, scenario: Scenario, seed: int = 0) -> None:
        self.start = start
        self.clock = FakeClock()
        epoch = start.timestamp()
        self.epoch: Callable[[], float] = lambda: epoch + self.clock()
        self.main = Sdm630Meter(seed=seed + 1, clock=self.epoch)
        self.aircon = Sdm72Meter(seed=seed + 2, clock=self.epoch)
        self.aircon.left_on = scenario.aircon_left_on
        self.water = Tuf2000mWaterMeter(seed=seed + 3, clock=self.epoch)
        self.water.leaks = scenario.leaks
        self.air = {
            room: ClassroomAir(seed=seed + n, events=scenario.air.get(room, ()))
            for n, room in enumerate(("ladybird", "bee"), start=10)
        }
        self.dust = {
            room: ClassroomDust(seed=seed + n, events=scenario.dust.get(room, ()))
            for n, room in enumerate(("ladybird", "bee"), start=10)
        }
        self._seq = count(1)

    def wall(self) -> datetime:
        return self.start + timedelta(seconds=self.clock())

    def service(self, *, state_path: Path | None = None, **kwargs: Any) -> StatusService:
        """A status service on this site's clocks; its publisher replaced by a `Recorder`."""
        service = StatusService(
            config=site_config(),
            clock=self.clock,
            wall=self.wall,
            publish=False,
            state_path=state_path,
            **kwargs,
        )
        service.publisher = Recorder(self.wall)  # type: ignore[assignment]
        return service

    def readings(self) -> list[Reading]:
        """One poll of every device at the current time."""
        now = self.epoch()
        out: list[tuple[str, str, float]] = []
        for device, model in (
            ("main-a", self.main),
            ("ac-a", self.aircon),
            ("water-a", self.water),
        ):
            model.refresh()
            out += [(device, metric, value) for metric, value in model.values().items()]
        for room in ("ladybird", "bee"):
            co2, temperature, humidity = self.air[room](now)
            out += [
                (f"{room}-co2", "co2", co2),
                (f"{room}-co2", "temperature", temperature),
                (f"{room}-co2", "humidity", humidity),
            ]
            out.append((f"{room}-pm", "pm25", self.dust[room](now).pm25))
        ts = self.wall()
        return [
            Reading(
                device=device,
                metric=metric,
                value=float(value),
                unit=UNITS.get(metric, ""),
                ts=ts,
                seq=next(self._seq),
                quality=Quality.GOOD,
            )
            for device, metric, value in out
        ]

    def run_until(
        self,
        service: StatusService,
        end: datetime,
        *,
        each: Callable[[StatusService], None] | None = None,
    ) -> None:
        """Poll, observe and step every `POLL_S` until ``end`` (wall)."""
        while self.wall() < end:
            self.clock.advance(POLL_S)
            service.observe(self.readings())
            service.step()
            service.persist()
            if each is not None:
                each(service)
