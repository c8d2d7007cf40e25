"""Issue 15, acceptance 1 (RTU): a hostile unit on an RS-485 line, through the production path.

One SDM630-like unit injects every fault class once (CRC, truncated, garbage, noise between
frames, a 100 ms pause inside a frame, answers from another slave address — one of them the
healthy neighbour's —, wrong function code, wrong byte count, a byte count that disagrees with
the length, a late answer 1.5-2.2 s after its request with a 1 s timeout, a duplicated answer,
no answer, exception codes 01-0B), in a seeded order, on a 9600 baud line with two healthy
units, polled by the real `BusPoller` → `ModbusDriver` → `LineUnit` → `ModbusLine` against the
byte-level peer written for the test (`tests.hostile_rtu`). `tests.hostile_run.check` states the
promises; here they are asserted one by one so a failure says which.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

from gateway.counters import status_details
from tests.hostile_run import (
    ALL_FAULTS,
    HEALTHY,
    HOSTILE,
    Outcome,
    check,
    expected_line_faults,
    log_problems,
    run_line,
    summary,
    wrong_values,
)


def test_a_hostile_unit_never_yields_a_wrong_value_nor_spoils_its_neighbours() -> None:
    outcome: Outcome = asyncio.run(run_line(ALL_FAULTS, seed=15))
    print("\n" + summary(outcome))

    # Every value returned is from the valid answer to its own poll's request.
    assert wrong_values(outcome) == []
    hostile_polls = outcome.recorders[HOSTILE].polls
    assert sum(p.values is not None for p in hostile_polls) >= len(ALL_FAULTS)

    # Every injected fault counted exactly once in its class.
    injected: Counter[str] = Counter()
    for action in ALL_FAULTS:
        injected += expected_line_faults(action)
    assert outcome.line.faults(HOSTILE) == injected
    assert outcome.line.counters()["sync_reads"] >= 1
    assert outcome.peer.noise_bytes > 0

    # The healthy neighbours: nothing against them, no poll lost.
    for unit in HEALTHY:
        assert outcome.line.faults(unit) == Counter()
        assert outcome.states[unit].errors == Counter()
        assert len(outcome.recorders[unit].polls) >= 5

    # The status topic's counters say the same (`gateway.counters`, as the daemon publishes them).
    details = status_details(
        devices=[
            replace(state, driver=outcome.recorders[unit].inner)
            for unit, state in outcome.states.items()
        ],
        buses=[outcome.line],
        pending=0,
        dropped=0,
        unstored=0,
        recovered_from=None,
    )
    by_unit = {unit: details["devices"][state.id] for unit, state in outcome.states.items()}
    assert by_unit[HOSTILE]["faults"] == dict(injected)
    assert all(by_unit[unit]["faults"] == {} for unit in HEALTHY)
    assert details["lines"][outcome.line.name] == outcome.line.counters()

    # No traceback, one line per failure episode.
    assert log_problems(outcome) == []

    # And the rest of the contract (scheduler kinds, stored readings, lateness, grid slots).
    assert check(outcome) == []
