"""The status service: readings in; alarms on MQTT, the LED traffic lights and e-ink panels out.

The gateway calls two things (see `StatusService`):

- ``observe(readings)`` from the poll path, synchronously, for every poll's readings. It only
  updates the latest values and evaluates the alarm rules (pure, microseconds) and wakes ``run``;
  it never blocks and never raises for odd readings.
- ``run()`` as a task. It publishes alarm changes as soon as ``observe`` queued them (so an alarm
  reaches MQTT within the poll that crossed the threshold), checks for silent sensors, drives the
  LEDs (and their alarm blink, 1 Hz) and refreshes panels whose content changed, writing images
  off the event loop.

``step()`` is the synchronous part of one ``run`` iteration; tests call it with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gpiozero.exc import GPIOZeroError
from PIL import Image

from gateway.config import GatewayConfig, LedPins, PanelConfig, RoomConfig
from gateway.model import Quality, Reading
from gateway.status.airquality import (
    CO2,
    HUMIDITY,
    TEMPERATURE,
    Assessment,
    Level,
    assess,
    pm25_of,
)
from gateway.status.alarms import AlarmBook, AlarmChange, AlarmState
from gateway.status.eink import MESSAGES, InkyBackend, Panel, PanelBackend, PanelContent, PngBackend
from gateway.status.engine import SEVERITY_RANK, build_book
from gateway.status.led import TrafficLight
from gateway.status.messages import text_for
from gateway.status.persist import AlarmStore
from gateway.status.publisher import AlarmPublisher

log = logging.getLogger(__name__)

#: Seconds between iterations of ``run`` without news; also the LED blink half-period.
TICK = 0.5


def blink_phase(now: float) -> bool:
    """Whether a blinking LED is on at monotonic time ``now`` (1 Hz, on for the first half)."""
    return int(now / TICK) % 2 == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomStatus:
    """What a room shows right now: ``level`` ``None`` means no data yet.

    ``alarms`` blink the room's light and take over its panel: the room's own devices' alarms and
    the *critical* building alarms (a leak, a power cut, smoke: whoever is in any room must act).
    ``notices`` are the building alarms of lower severity (PV broken, power left on): the panel
    says them when no alarm does, the light stays the children's air-quality light.
    """

    room: str
    level: Level | None
    assessment: Assessment | None
    alarms: tuple[AlarmState, ...]
    notices: tuple[AlarmState, ...] = ()


class StatusService:
    """Air-quality status for the rooms of ``config.status``; see the module docstring.

    ``clock`` (monotonic seconds) and ``wall`` (aware UTC now) are injected for tests; so is
    ``pin_factory`` (gpiozero's default when ``None``; pass ``MockFactory()`` when simulating).
    ``publish`` is false to run without MQTT (tests of the local outputs).
    """

    def __init__(
        self,
        *,
        config: GatewayConfig,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        pin_factory: Any = None,
        publish: bool = True,
        panel_min_interval: float = 60.0,
        state_path: Path | None = None,
    ) -> None:
        status = config.status
        self._config = status
        self._clock = clock
        self._rooms: dict[str, RoomConfig] = {room.id: room for room in status.rooms}
        self._store = AlarmStore(path=state_path) if state_path is not None else None
        restored, baselines = self._store.load() if self._store is not None else ([], {})
        self._book, self._building = build_book(
            config, clock=clock, wall=wall, restored=restored, baselines=baselines
        )
        self._dirty = False
        self._latest: dict[str, dict[str, float]] = {}
        self._latest_ts: dict[str, datetime] = {}
        self._pending: list[AlarmChange] = []
        self._wake = asyncio.Event()
        self.publisher = (
            AlarmPublisher(config=config.mqtt, site=config.site.id) if publish else None
        )
        if self.publisher is not None:
            for state in restored:  # the broker learns them (retained) on connect; not news
                self.publisher.publish(AlarmChange(state=state, event=False))
        self.leds: dict[str, TrafficLight] = {}
        self.panels: dict[str, Panel] = {}
        try:
            for room in status.rooms:
                if room.led is not None:
                    light = _traffic_light(room.name, room.led, pin_factory)
                    if light is not None:
                        self.leds[room.id] = light
                if room.panel is not None:
                    self.panels[room.id] = Panel(
                        size=room.panel.size,
                        backend=_backend(room.panel),
                        clock=clock,
                        min_interval=panel_min_interval,
                    )
        except BaseException:
            self.close()
            raise

    def observe(self, readings: Sequence[Reading]) -> None:
        """Take one poll's readings (any devices); cheap and synchronous, never raises for data."""
        for reading in readings:
            values = self._latest.setdefault(reading.device, {})
            if reading.quality is Quality.GOOD and isinstance(reading.value, int | float):
                values[reading.metric] = float(reading.value)
                self._latest_ts[reading.device] = reading.ts
            else:
                values.pop(reading.metric, None)  # shown as "--", never as a stale number
            self._pending += self._book.observe(reading)
        self._wake.set()

    def active_alarms(self) -> list[AlarmState]:
        """Every alarm active now (threshold and silence), for the local status."""
        return [state for state in self._book.states() if state.active]

    def room(self, room_id: str) -> RoomStatus:
        """What room ``room_id`` shows now."""
        room = self._rooms[room_id]
        values: dict[str, float] = {}
        for device in room.devices:  # later devices win for a metric two of them report
            values.update(self._latest.get(device, {}))
        own = [
            a for d in room.devices for a in self._book.active(d) if a.name not in self._building
        ]
        building = [s for s in self._book.states() if s.active and s.name in self._building]
        alarms = own + [a for a in building if a.severity == "critical"]
        alarms.sort(key=lambda a: SEVERITY_RANK.get(a.severity or "warning", 1))  # stable
        notices = tuple(a for a in building if a.severity != "critical")
        assessment = assess(values, self._config) if values else None
        level = Level.ALARM if alarms else (assessment.level if assessment else None)
        return RoomStatus(
            room=room_id,
            level=level,
            assessment=assessment,
            alarms=tuple(alarms),
            notices=notices,
        )

    def step(self) -> list[tuple[Panel, Image.Image]]:
        """One iteration: check silence, publish changes, set the LEDs; return panel refreshes due."""
        self._pending += self._book.check()
        pending, self._pending = self._pending, []
        for change in pending:
            log.log(
                logging.WARNING if change.state.active else logging.INFO,
                "alarm %s of %s: %s (value %s, threshold %s)",
                change.state.name,
                change.state.device,
                "active" if change.state.active else "clear",
                change.state.value,
                change.state.threshold,
            )
            if self.publisher is not None:
                self.publisher.publish(change)
            self._dirty = self._dirty or change.event
        if self._book.baselines_changed:
            self._book.baselines_changed = False
            self._dirty = True
        blink_on = blink_phase(self._clock())
        refreshes = []
        for room_id in self._rooms:
            status = self.room(room_id)
            if room_id in self.leds:
                self.leds[room_id].show(status.level, blink_on=blink_on)
            if room_id in self.panels:
                image = self.panels[room_id].update(self._content(status))
                if image is not None:
                    refreshes.append((self.panels[room_id], image))
        return refreshes

    async def run(self) -> None:
        """Publish, blink and refresh until cancelled (see the module docstring)."""
        publisher_task = (
            asyncio.create_task(self.publisher.run(), name="status-mqtt")
            if self.publisher is not None
            else None
        )
        failing: set[Panel] = set()  # a failing panel is logged once, and its recovery once
        try:
            while True:
                self._wake.clear()
                refreshes = self.step()
                if self._dirty:
                    await asyncio.to_thread(self.persist)
                for panel, image in refreshes:
                    try:
                        await asyncio.to_thread(panel.backend.show, image)
                    except OSError as exc:
                        if panel not in failing:
                            log.error("panel refresh failed: %s", exc)
                        else:
                            log.debug("panel refresh failed again: %s", exc)
                        failing.add(panel)
                    else:
                        if panel in failing:
                            log.info("panel refresh works again")
                        failing.discard(panel)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK):
                        await self._wake.wait()
        finally:
            if publisher_task is not None:
                publisher_task.cancel()
                await asyncio.gather(publisher_task, return_exceptions=True)

    def persist(self) -> None:
        """Save the alarm state if an alarm changed since the last save (blocking: a file)."""
        if self._dirty and self._store is not None:
            self._store.save(self._book.states(), self._book.baselines())
        self._dirty = False

    @property
    def book(self) -> AlarmBook:
        """The alarm engine (tests and the CLI read its states)."""
        return self._book

    def close(self) -> None:
        """Release the GPIO pins (LEDs off)."""
        for led in self.leds.values():
            led.close()
        self.leds.clear()

    def _content(self, status: RoomStatus) -> PanelContent:
        room = self._rooms[status.room]
        values: dict[str, float] = {}
        for device in room.devices:
            values.update(self._latest.get(device, {}))
        stamps = [self._latest_ts[d] for d in room.devices if d in self._latest_ts]
        return PanelContent(
            room=room.name,
            level=status.level,
            co2=_round(values.get(CO2)),
            temperature=round(values[TEMPERATURE], 1) if TEMPERATURE in values else None,
            humidity=_round(values.get(HUMIDITY)),
            pm25=_round(pm25_of(values)),
            message=_message(status, values),
            time=max(stamps).astimezone().strftime("%H:%M") if stamps else "",
        )


def _round(value: float | None) -> int | None:
    return None if value is None else round(value)


def _message(status: RoomStatus, values: Mapping[str, float]) -> str:
    """The sentence for the teacher: what is wrong, and what to do about it."""
    if status.alarms or status.notices:
        first = (status.alarms or status.notices)[0]
        return text_for(first.message or first.name).panel
    assessment = status.assessment
    if assessment is None or status.level is None:
        return MESSAGES[None]
    if (
        status.level is Level.POOR
        and assessment.pm25 is Level.POOR
        and assessment.co2 is not Level.POOR
    ):
        return "Too much fine dust!"
    if (
        status.level is Level.MODERATE
        and assessment.co2 in (Level.GOOD, None)
        and assessment.pm25 in (Level.GOOD, None)
    ):
        return _comfort_message(values.get(TEMPERATURE), values.get(HUMIDITY))
    return MESSAGES[status.level]


def _comfort_message(temperature: float | None, humidity: float | None) -> str:
    """Why comfort alone made the room moderate (see `gateway.status.airquality`)."""
    if temperature is not None and not 20 <= temperature <= 24:
        return "A bit warm" if temperature > 24 else "A bit cold"
    return "Air is dry" if humidity is not None and humidity < 30 else "Air is humid"


def _backend(panel: PanelConfig) -> PanelBackend:
    if panel.backend == "inky":
        return InkyBackend()
    assert panel.path is not None  # guaranteed by PanelConfig's validator
    return PngBackend(path=panel.path)


def _traffic_light(name: str, pins: LedPins, pin_factory: Any) -> TrafficLight | None:
    """The room's traffic light, or None (logged) when this machine has no usable GPIO.

    A missing or busy LED must never stop the gateway from polling and publishing: the panels and
    the alarms go on without it.
    """
    try:
        return TrafficLight(pins=pins, pin_factory=pin_factory)
    except GPIOZeroError as exc:
        log.error(
            "%s: no traffic light (%s: %s); panels and alarms go on without it",
            name,
            type(exc).__name__,
            exc,
        )
        return None
