"""The alarm state machine: hysteresis, first determination, silence on a fake clock."""

from __future__ import annotations

from gateway.status.alarms import SILENT, AlarmBook, AlarmChange, ThresholdRule
from tests.gateway.status.helpers import T0, FakeClock, reading

CO2_RULE = ThresholdRule(name="co2_high", metric="co2", raise_above=2000, clear_below=1800)


def book(clock: FakeClock, silent_after: dict[str, float] | None = None) -> AlarmBook:
    return AlarmBook(
        rules=[CO2_RULE], silent_after=silent_after or {}, clock=clock, wall=clock.wall
    )


def summary(changes: list[AlarmChange]) -> list[tuple[str, bool, bool]]:
    return [(c.state.name, c.state.active, c.event) for c in changes]


def test_raises_above_and_clears_below_with_hysteresis() -> None:
    alarms = book(FakeClock())
    sequence = [1500, 2000, 2001, 2100, 1900, 1800, 1799, 1900, 2000, 2050]
    seen = [summary(alarms.observe(reading("r", "co2", v, at=i))) for i, v in enumerate(sequence)]
    assert seen == [
        [("co2_high", False, False)],  # first determination: clear, not news
        [],  # 2000 is not above 2000
        [("co2_high", True, True)],
        [],
        [],  # 1900: inside the band, still active
        [],  # 1800 is not below 1800
        [("co2_high", False, True)],
        [],
        [],
        [("co2_high", True, True)],
    ]


def test_state_names_the_deciding_reading_and_threshold() -> None:
    alarms = book(FakeClock())
    (change,) = alarms.observe(reading("r", "co2", 2100, at=30))
    state = change.state
    assert (state.active, state.value, state.threshold, state.unit) == (True, 2100.0, 2000, "ppm")
    assert state.since == reading("r", "co2", 0, at=30).ts
    alarms.observe(reading("r", "co2", 2300, at=35))
    assert alarms.active("r")[0].since == state.since  # the episode's start is kept
    (cleared,) = alarms.observe(reading("r", "co2", 1700, at=40))
    assert (cleared.state.active, cleared.state.threshold) == (False, 1800)
    assert alarms.active("r") == []


def test_starting_above_the_threshold_is_an_event() -> None:
    alarms = book(FakeClock())
    assert summary(alarms.observe(reading("r", "co2", 2500))) == [("co2_high", True, True)]


def test_no_value_and_other_metrics_are_ignored() -> None:
    alarms = book(FakeClock())
    assert alarms.observe(reading("r", "co2", None)) == []
    assert alarms.observe(reading("r", "temperature", 80.0)) == []
    assert alarms.observe(reading("r", "co2", True)) == []
    assert alarms.states() == []


def test_silent_raises_after_the_limit_and_clears_with_a_valid_reading() -> None:
    clock = FakeClock()
    alarms = book(clock, {"r": 15.0})
    clock.advance(15.0)
    assert alarms.check() == []  # exactly at the limit: not yet
    clock.advance(0.5)
    (change,) = alarms.check()
    assert (change.state.name, change.state.active, change.event) == (SILENT, True, True)
    assert change.state.value == 15.5 and change.state.since == T0.replace(
        second=15, microsecond=500_000
    )
    assert alarms.check() == []  # raised once
    changes = alarms.observe(reading("r", "co2", 600, at=17))
    assert summary(changes) == [(SILENT, False, True), ("co2_high", False, False)]


def test_a_no_value_reading_is_a_sign_of_life() -> None:
    clock = FakeClock()
    alarms = book(clock, {"r": 15.0})
    for second in range(0, 40, 5):  # a PM sensor warming up answers "no value" for 30 s
        clock.advance(5)
        alarms.observe(reading("r", "pm25", None, at=second))
        assert alarms.check() == []


def test_a_device_heard_in_time_is_never_silent() -> None:
    clock = FakeClock()
    alarms = book(clock, {"r": 15.0})
    for second in range(100):
        clock.advance(1)
        if second % 10 == 0:
            alarms.observe(reading("r", "co2", 600, at=second))
        assert [c for c in alarms.check() if c.state.active] == []
