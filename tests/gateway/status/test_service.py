"""The status service: observe() -> run() -> MQTT (real Mosquitto, payloads against the schema),
the panel file, and the alarm taking over the LED and the panel."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
from gpiozero.pins.mock import MockFactory
from PIL import Image

from gateway.status.airquality import Level
from gateway.status.service import StatusService
from tests.gateway.status.helpers import FakeClock, lit, mock_pins, reading, status_config
from tests.servers import ServerProcess, wait_until
from tests.system.mqtt_capture import MqttCapture

__all__ = ["mock_pins"]  # the fixture

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "gateway" / "schema" / "alarm.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def with_panel(tmp_path: Path, port: int = 1883) -> StatusService:
    room = status_config().status.rooms[0].model_dump()
    room["panel"] = {"size": "296x128", "backend": "png", "path": str(tmp_path / "ladybird.png")}
    config = status_config(mqtt_port=port, rooms=[room])
    clock = FakeClock()
    return StatusService(config=config, clock=clock, wall=clock.wall)


def test_observe_reaches_mqtt_through_run(
    tmp_path: Path, broker: ServerProcess, mock_pins: MockFactory
) -> None:
    service = with_panel(tmp_path, broker.port)
    capture = MqttCapture(broker.port, "canary/kg/#").start()

    async def scenario() -> None:
        task = asyncio.create_task(service.run())
        assert service.publisher is not None
        await asyncio.wait_for(service.publisher.connected.wait(), 10)
        service.observe(
            [reading("ladybird-co2", "co2", 2400, at=5), reading("ladybird-pm", "pm25", 3, at=5)]
        )
        await asyncio.to_thread(
            wait_until,
            lambda: any(m.topic.endswith("/events") for m in capture.snapshot()),
            timeout=5,
            what="the alarm event",
        )
        await asyncio.to_thread(
            wait_until, (tmp_path / "ladybird.png").is_file, timeout=5, what="the panel"
        )
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        capture.stop()
        service.close()
    messages = [
        m for m in capture.snapshot() if "/alarms/" in m.topic or m.topic.endswith("/events")
    ]
    for message in messages:
        VALIDATOR.validate(message.json())
    state = next(m for m in messages if m.topic == "canary/kg/alarms/ladybird-co2/co2_high")
    assert state.json() == {
        "v": 1,
        "site": "kg",
        "device": "ladybird-co2",
        "alarm": "co2_high",
        "state": "active",
        "value": 2400.0,
        "unit": "ppm",
        "threshold": 2000.0,
        "since": "2026-11-23T07:00:05.000Z",
    }
    late = MqttCapture(broker.port, "canary/kg/alarms/ladybird-co2/co2_high").start()
    try:
        wait_until(late.snapshot, timeout=5, what="the retained state")
    finally:
        late.stop()
    assert late.snapshot()[0].retain and late.snapshot()[0].json() == state.json()
    event = next(m for m in messages if m.topic == "canary/kg/events")
    assert not event.retain and event.json()["type"] == "alarm"
    assert Image.open(tmp_path / "ladybird.png").size == (296, 128)


def test_schema_rejects_what_the_contract_forbids() -> None:
    good = {
        "v": 1,
        "site": "kg",
        "device": "d",
        "alarm": "silent",
        "state": "clear",
        "value": 0,
        "unit": "s",
        "threshold": 15,
        "since": "2026-11-23T07:00:05.000Z",
    }
    VALIDATOR.validate(good)
    for bad in ({"state": "on"}, {"alarm": "fire"}, {"since": "07:00"}, {"extra": 1}):
        assert not VALIDATOR.is_valid({**good, **bad}), bad


def test_alarm_overrides_the_class_and_silence_is_an_alarm(
    tmp_path: Path, mock_pins: MockFactory
) -> None:
    service = with_panel(tmp_path)
    clock: FakeClock = service._clock  # type: ignore[assignment]
    try:
        assert service.room("ladybird").level is None
        service.observe([reading("ladybird-co2", "co2", 600), reading("ladybird-pm", "pm25", 4)])
        service.step()
        assert (service.room("ladybird").level, lit(mock_pins)) == (
            Level.GOOD,
            (False, False, True),
        )
        clock.advance(15.5)  # three 5 s intervals without the PM sensor
        service.observe([reading("ladybird-co2", "co2", 600, at=15)])
        service.step()
        status = service.room("ladybird")
        assert status.level is Level.ALARM
        assert [a.name for a in status.alarms] == ["silent"]
        panel = service.panels["ladybird"]
        assert panel.refreshes == 2  # good, then the alarm; the panel holds the rest
    finally:
        service.close()
