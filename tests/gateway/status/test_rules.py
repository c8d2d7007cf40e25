"""The rules engine beyond the v1 alarms: silent_while, PV, schedule gates, no flapping, bounds."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from gateway.status.alarms import (
    AlarmBook,
    AlarmChange,
    Gate,
    Schedule,
    SilentWhileRule,
    ValueRule,
    Window,
)
from tests.gateway.status.helpers import FakeClock, reading


def summary(changes: list[AlarmChange]) -> list[tuple[str, str, bool, bool]]:
    return [(c.state.device, c.state.name, c.state.active, c.event) for c in changes]


def test_a_meter_silent_while_the_inverter_answers_is_a_power_cut() -> None:
    clock = FakeClock()
    rule = SilentWhileRule(
        name="power_lost", devices=frozenset({"main"}), witnesses=frozenset({"pv"}), after=120
    )
    book = AlarmBook(rules=[], silent_after={}, silent_while=[rule], clock=clock, wall=clock.wall)
    assert summary(book.observe(reading("main", "power", 900.0))) == [
        ("main", "power_lost", False, False)
    ]
    for second in range(10, 200, 10):  # the inverter answers, the meter does not
        clock.advance(10)
        book.observe(reading("pv", "ac_power", 5000.0, at=second))
        changes = book.check()
        if second <= 120:
            assert changes == []
    assert [s.active for s in book.active("main")] == [True]
    assert summary(book.observe(reading("main", "power", 800.0, at=200))) == [
        ("main", "power_lost", False, True)
    ]


def test_everything_silent_is_not_a_power_cut() -> None:
    clock = FakeClock()
    rule = SilentWhileRule(
        name="power_lost", devices=frozenset({"main"}), witnesses=frozenset({"pv"}), after=120
    )
    book = AlarmBook(rules=[], silent_after={}, silent_while=[rule], clock=clock, wall=clock.wall)
    book.observe(reading("pv", "ac_power", 5000.0))
    clock.advance(600)
    assert book.check() == []


def test_pv_fault_state_and_no_production_through_midday_only() -> None:
    clock = FakeClock()  # T0 is 07:00 UTC; the schedule below is in UTC
    rules = [
        ValueRule(name="pv_fault", metrics=("state",), direction="equals", equals=(7.0,)),
        ValueRule(
            name="pv_no_production",
            metrics=("ac_power",),
            direction="below",
            raise_at=20,
            clear_at=200,
            sustain=7200,
            gate=Gate(hours=(time(10), time(14))),
        ),
    ]
    book = AlarmBook(
        rules=rules, silent_after={}, clock=clock, wall=clock.wall, schedule=Schedule(zone=UTC)
    )
    raised = []
    for _ in range(0, 8 * 60, 5):  # 07:00 to 15:00, producing nothing
        clock.advance(300)
        at = clock()
        for change in book.observe(reading("pv", "ac_power", 0.0, at=at)):
            if change.event:
                raised.append((round(at / 3600 + 7, 2), change.state.name, change.state.active))
    assert raised == [(12.0, "pv_no_production", True)]  # 10:00 + 2 h, never in the morning
    assert summary(book.observe(reading("pv", "state", 7, at=clock()))) == [
        ("pv", "pv_fault", True, True)
    ]
    assert summary(book.observe(reading("pv", "state", 4, at=clock()))) == [
        ("pv", "pv_fault", False, True)
    ]


def test_a_temperature_hovering_at_the_limit_never_flaps() -> None:
    clock = FakeClock()
    rule = ValueRule(
        name="room_hot", metrics=("temperature",), raise_at=27, clear_at=26, sustain=1800
    )
    book = AlarmBook(rules=[rule], silent_after={}, clock=clock, wall=clock.wall)
    events = []
    for n in range(2000):  # 27.2 / 26.8 alternating every minute: never 30 min above 27
        clock.advance(60)
        events += [c for c in book.observe(reading("r", "temperature", 27.2 - 0.4 * (n % 2)))]
    assert [c.event for c in events] == [False]  # the first determination only
    for _ in range(31):  # now steadily above: raised once, after 30 min
        clock.advance(60)
        events += book.observe(reading("r", "temperature", 27.5))
    for n in range(2000):  # back to hovering between the limits: stays raised
        clock.advance(60)
        events += book.observe(reading("r", "temperature", 26.2 + 0.6 * (n % 2)))
    assert [(c.state.active, c.event) for c in events] == [(False, False), (True, True)]


def test_a_window_is_bounded_and_a_counter_reset_is_not_a_flow() -> None:
    window = Window(3600)
    for second in range(86_400):
        window.add(float(second), second / 3600.0)  # one m³ per hour, sampled every second
    assert len(window._buckets) <= Window.BUCKETS + 1
    assert window.rate(86_400.0, 24.0, 3600) == pytest.approx(1.0)
    assert window.rate(86_401.0, 0.5, 3600) is None  # replaced meter: learn again
    assert window.rate(86_402.0, 0.5, 3600) is None


def test_the_schedule_gate_in_the_sites_zone() -> None:
    schedule = Schedule(
        zone=ZoneInfo("Europe/Berlin"), occupied=[(frozenset(range(5)), time(7), time(18))]
    )
    monday_0630_utc = datetime(2026, 11, 23, 6, 30, tzinfo=UTC)  # 07:30 in Berlin
    assert schedule.is_occupied(monday_0630_utc)
    assert not schedule.is_open(Gate(when="empty"), monday_0630_utc)
    saturday = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert schedule.is_open(Gate(when="empty"), saturday)
    night = Gate(when="empty", hours=(time(23), time(5)))
    assert schedule.is_open(night, datetime(2026, 11, 23, 23, 30, tzinfo=UTC))  # 00:30 local
    assert not schedule.is_open(night, datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
