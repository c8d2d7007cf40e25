"""Issue 14 acceptance: a scripted day and night, a normal week, and a restart, of a simulated
kindergarten building (see `tests.gateway.status.kindergarten` for how time is driven).

The scripted day (Monday 23 November 2026, Europe/Berlin), after four normal days and nights
from which the night baselines are learnt:

- 11:40 burnt toast in the bee room (next to the kitchen): PM2.5 towards 400 µg/m³ (1 min);
- 13:00-17:00 a heatwave afternoon in the ladybird room (+9 °C, time constant 30 min);
- 17:00-06:30 the air conditioner left on overnight (60 % of its 6 kW);
- 22:00-05:00 a running cistern, 30 L/h, through the empty night;
- 03:00-06:00 the heating of the bee room fails (towards 10 °C, 3 h), then warms back (1 h).

Each expected alarm has a window, derived from the models' time constants, the rule's limits
and durations, and the 60 s poll; the windows are stated next to each entry. The test asserts
the exact sequence of transitions (nothing else is raised), that each raise was published in
the poll whose reading decided it, and what the rooms show.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from gateway.status.airquality import Level
from gateway.status.service import StatusService
from simulators.classroom import AirEvent
from simulators.particles import PmEvent
from tests.gateway.status.helpers import mock_pins
from tests.gateway.status.kindergarten import ZONE, Recorder, Scenario, Site, local

__all__ = ["mock_pins"]  # the fixture

START = local("2026-11-19 12:00")  # Thursday: four nights to learn from before the scripted one
DAY = "2026-11-23"
NEXT = "2026-11-24"


def at(text: str) -> float:
    return local(text).timestamp()


SCRIPTED = Scenario(
    air={
        "ladybird": [
            AirEvent(kind="heatwave", start=at(f"{DAY} 13:00"), duration=4 * 3600, level=9)
        ],
        "bee": [
            AirEvent(kind="heating_failure", start=at(f"{NEXT} 03:00"), duration=3 * 3600, level=10)
        ],
    },
    dust={"bee": [PmEvent(kind="smoke", start=at(f"{DAY} 11:40"), duration=180, level=400)]},
    leaks=[(at(f"{DAY} 22:00"), at(f"{NEXT} 05:00"), 0.03)],
    aircon_left_on=[(at(f"{DAY} 17:00"), at(f"{NEXT} 06:30"))],
)

#: (device, alarm, active, earliest, latest), in the order they happen.
EXPECTED = [
    # PM2.5 passes 150 µg/m³ above its 5-min minimum 28 s after 11:40 (400 x (1 - e^-t/60)):
    # the next poll raises both the smoke and the dusty-air alarm.
    ("bee-pm", "pm25_high", True, f"{DAY} 11:40", f"{DAY} 11:42"),
    ("bee-pm", "smoke", True, f"{DAY} 11:40", f"{DAY} 11:42"),
    # The model's own lunch cooking next door (seeded, as on the days before): dusty air.
    ("ladybird-pm", "pm25_high", True, f"{DAY} 12:00", f"{DAY} 13:30"),
    # Toast smoke decays (15 min) below 60 µg/m³ in ≈ 30 min, plus the kitchen's own lunch.
    ("bee-pm", "pm25_high", False, f"{DAY} 11:58", f"{DAY} 13:30"),
    # The rise stops at ≈ 11:47 (window 5 min); clear after 15 min without rise; the bee room's
    # own lunch cooking may prolong the rise.
    ("bee-pm", "smoke", False, f"{DAY} 11:58", f"{DAY} 12:35"),
    ("ladybird-pm", "pm25_high", False, f"{DAY} 12:15", f"{DAY} 13:30"),
    # Above 27 °C from ≈ 13:15-13:30 (lesson load 0-3 °C on top of 20.4 °C), sustained 30 min.
    ("ladybird-co2", "room_hot", True, f"{DAY} 13:30", f"{DAY} 14:30"),
    # Cools (30 min) below 26 °C ≈ 20-35 min after 17:00.
    ("ladybird-co2", "room_hot", False, f"{DAY} 17:10", f"{DAY} 18:00"),
    # Night gate opens 23:00 with the 30-min mean at 3.6 kW > 3 x 20 W + 300 W; sustained 1 h.
    ("ac-a", "power_left_on", True, f"{NEXT} 00:00", f"{NEXT} 00:02"),
    # 1-h rate > 5 L/h once 1/6 of the window holds the 30 L/h (≈ 22:10), sustained 2 h.
    ("water-a", "water_night_flow", True, f"{NEXT} 00:05", f"{NEXT} 00:20"),
    # Below 18 °C for 30 min: the fall (3 h towards 10 °C) crosses 18 °C between 03:40 and
    # 04:40 depending on the lesson load of the model.
    ("bee-co2", "room_cold", True, f"{NEXT} 03:45", f"{NEXT} 05:15"),
    # The rate falls below 1 L/h once less than 1/30 of the hour holds the leak: ≈ 05:58.
    ("water-a", "water_night_flow", False, f"{NEXT} 05:50", f"{NEXT} 06:05"),
    # Repaired at 06:00: back above 19 °C after ≈ 1 h (time constant 1 h).
    ("bee-co2", "room_cold", False, f"{NEXT} 06:15", f"{NEXT} 07:30"),
    # Off at 06:30: the 30-min mean falls below 20 W + 300 W after ≈ 27 min.
    ("ac-a", "power_left_on", False, f"{NEXT} 06:50", f"{NEXT} 07:05"),
]


def _local(when: datetime) -> str:
    return when.astimezone(ZONE).strftime("%a %H:%M")


def test_a_scripted_day_and_night_raises_exactly_the_expected_alarms(
    mock_pins: MockFactory,
) -> None:
    site = Site(start=START, scenario=SCRIPTED)
    service = site.service()
    seen: dict[str, tuple[Level | None, list[str], list[str], str]] = {}

    def look(service: StatusService) -> None:
        if site.wall() == local(f"{NEXT} 01:00"):
            for room in ("ladybird", "bee"):
                status = service.room(room)
                seen[room] = (
                    status.level,
                    [a.name for a in status.alarms],
                    [a.name for a in status.notices],
                    service._content(status).message,
                )

    site.run_until(service, local(f"{NEXT} 12:00"), each=look)
    recorder: Recorder = service.publisher  # type: ignore[assignment]
    events = [e for e in recorder.events() if e[0] >= local(f"{DAY} 00:00")]
    assert [(d, a, on) for _, d, a, on in events] == [(d, a, on) for d, a, on, _, _ in EXPECTED], [
        (_local(t), d, a, on) for t, d, a, on in events
    ]
    for (when, *_), (device, alarm, on, earliest, latest) in zip(events, EXPECTED, strict=True):
        assert local(earliest) <= when <= local(latest), (device, alarm, on, _local(when))
    # Within one poll: a value alarm's state carries the deciding reading's time, and it was
    # published at the step of that very poll.
    for when, change in recorder.changes:
        if change.event and change.state.name != "power_lost":
            assert change.state.since == when
    # Before the scripted day only the model's daily lunch cooking raised anything.
    before = {a for t, _, a, _ in recorder.events() if t < local(f"{DAY} 00:00")}
    assert before == {"pm25_high"}
    # At 01:00 the leak (critical, building) shows in every room; the AC left on (a warning)
    # only on the panels.
    for room in ("ladybird", "bee"):
        level, alarms, notices, message = seen[room]
        assert (level, alarms, notices) == (Level.ALARM, ["water_night_flow"], ["power_left_on"])
        assert message == "Water running at night"
    # Every state carries its rule's severity and message key, except the v1 alarms.
    smoke = next(c.state for _, c in recorder.changes if c.state.name == "smoke")
    assert (smoke.severity, smoke.message, smoke.unit) == ("critical", "smoke", "µg/m³")
    pm = next(c.state for _, c in recorder.changes if c.state.name == "pm25_high")
    assert (pm.severity, pm.message) == (None, None)
    service.close()


def test_a_normal_week_raises_no_alarm_but_the_kitchens_dusty_air(mock_pins: MockFactory) -> None:
    """Seeded (seed 7), Monday 16 to Monday 23 November: none of the rules of issue 14 fires.

    The one alarm the week does raise is the v1 ``pm25_high`` (WHO 24-h interim target 1,
    75 µg/m³) when the model's kitchen next door cooks lunch (PM2.5 40-120 µg/m³, seeded per
    day): that is the dusty air the rule exists for (tests/system/test_classroom_day.py asserts
    it too), not a false positive; and cooking must not look like smoke.
    """
    site = Site(start=local("2026-11-16 00:00"), scenario=Scenario(), seed=7)
    service = site.service()
    site.run_until(service, local("2026-11-23 00:00"))
    recorder: Recorder = service.publisher  # type: ignore[assignment]
    events = recorder.events()
    assert {alarm for _, _, alarm, _ in events} <= {"pm25_high"}
    for when, _device, _alarm, on in events:
        hour = when.astimezone(ZONE).hour + when.astimezone(ZONE).minute / 60
        assert 11.5 <= hour <= 14.5, f"pm25_high outside the lunch cooking: {_local(when)}"
        assert on or hour >= 12.0
    states = {s.name for s in service.book.states()}
    assert {"room_hot", "room_cold", "smoke", "water_night_flow", "power_left_on"} <= states
    assert not [s for s in service.book.states() if s.active]
    service.close()


def test_after_a_restart_active_alarms_come_back_without_a_second_event(
    tmp_path: Path, mock_pins: MockFactory
) -> None:
    state = tmp_path / "alarms.json"
    site = Site(start=START, scenario=SCRIPTED)
    first = site.service(state_path=state)
    site.run_until(first, local(f"{NEXT} 02:00"))
    first.close()
    saved = json.loads(state.read_text())
    assert sorted(a["name"] for a in saved["active"]) == ["power_left_on", "water_night_flow"]
    assert len(saved["baselines"]["ac-a/power_left_on"]) == 4  # Thu-Fri ... Sun-Mon nights
    store = first._store
    assert store is not None
    # Written only on a transition or a learnt night: never per poll.
    events_before = first.publisher.events()  # type: ignore[union-attr]
    # (a write covers everything that changed in one poll: events and nights may share one)
    distinct_polls = len({when for when, *_ in events_before})
    assert distinct_polls <= store.writes <= len(events_before) + 2 * 4  # 4 nights, 2 meters

    site.clock.advance(120.0)  # the gateway was down for two minutes
    second = site.service(state_path=state)
    restored = {(s.device, s.name) for s in second.book.states() if s.active}
    assert restored == {("ac-a", "power_left_on"), ("water-a", "water_night_flow")}
    site.run_until(second, local(f"{NEXT} 08:00"))
    after = [(d, a, on) for _, d, a, on in second.publisher.events()]  # type: ignore[union-attr]
    assert after == [
        ("bee-co2", "room_cold", True),
        ("water-a", "water_night_flow", False),  # cleared once; never raised a second time
        ("bee-co2", "room_cold", False),
        ("ac-a", "power_left_on", False),
    ]
    assert json.loads(state.read_text())["active"] == []
    second.close()


def test_an_unusable_state_file_starts_with_nothing_active(
    tmp_path: Path, mock_pins: MockFactory
) -> None:
    state = tmp_path / "alarms.json"
    state.write_text("{not json")
    site = Site(start=START, scenario=Scenario())
    service = site.service(state_path=state)
    assert [s for s in service.book.states() if s.active] == []
    site.run_until(service, START + timedelta(minutes=5))
    service.close()
