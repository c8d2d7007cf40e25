"""Issue 5, acceptance 6: wall-clock steps of +2 h, -2 h and +1 day while polling.

The daemon runs in-process against a simulated meter polled every 0.5 s, with a steppable wall
clock and a fake sync source injected through `ClockMonitor`; monotonic time is real. What arrives
on a real Mosquitto must show: the poll period kept (+-10 %, no burst), readings polled while the
clock was wrong held and re-stamped to the true time once it was synchronised again, and readings
held longer than ``hold_unsynced`` released flagged ``time_synced: false``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.app import GatewayRuntime, run_gateway
from gateway.clock import ClockMonitor
from gateway.config import parse_config
from tests.servers import ServerProcess, wait_until
from tests.system.harness import ts_ms
from tests.system.mqtt_capture import MqttCapture

INTERVAL = 0.5
#: Polls per phase of the scenario below.
PHASE_POLLS = (4, 3, 4, 7, 4, 2, 4)


class SteppableClock:
    """True time advances with the monotonic clock; the wall clock is true time plus ``skew``."""

    def __init__(self) -> None:
        self.base = datetime.now(UTC)
        self.mono0 = time.monotonic()
        self.skew = timedelta(0)
        self.generation = 1

    def true_now(self) -> datetime:
        return self.base + timedelta(seconds=time.monotonic() - self.mono0)

    def wall(self) -> datetime:
        return self.true_now() + self.skew

    def sync(self) -> object:
        return self.generation


@pytest.mark.system
def test_clock_steps_keep_the_period_and_timestamps_are_restamped_or_flagged(
    tmp_path: Path, broker: ServerProcess
) -> None:
    config = parse_config(
        {
            "site": {"id": "kg"},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "buffer": {"path": str(tmp_path / "b.sqlite3"), "commit_interval": 0.05},
            "clock": {"hold_unsynced": 1.6},
            "devices": [
                {
                    "id": "meter",
                    "driver": "modbus",
                    "profile": "sdm630",
                    "interval": INTERVAL,
                    "transport": {"kind": "tcp", "host": "127.0.0.1", "port": 1502},
                }
            ],
        },
        source="test",
    )
    clock = SteppableClock()
    monitor = ClockMonitor(sync_generation=clock.sync, wall_clock=clock.wall)
    capture = MqttCapture(broker.port, "canary/kg/telemetry/meter").start()
    phases: list[tuple[str, int]] = []  # (phase name, polls so far when it began)

    async def scenario() -> None:
        stop = asyncio.Event()
        started: list[GatewayRuntime] = []
        task = asyncio.create_task(
            run_gateway(config, stop=stop, simulate=True, started=started.append, monitor=monitor)
        )

        async def polls(count: int) -> None:
            device = started[0].pollers[0].devices[0]
            target = device.polls + count
            async with asyncio.timeout(count * INTERVAL * 4 + 10):
                while device.polls < target:  # noqa: ASYNC110 - the scheduler has no poll event
                    await asyncio.sleep(0.02)

        async def phase(name: str, count: int, *, skew: timedelta, sync: bool) -> None:
            phases.append((name, started[0].pollers[0].devices[0].polls))
            clock.skew = skew
            if sync:
                clock.generation += 1
            await polls(count)

        while not started:  # noqa: ASYNC110 - started is set synchronously at start-up
            await asyncio.sleep(0.01)
        steps = [
            ("synced", timedelta(0), False),
            ("+2h unsynced", timedelta(hours=2), False),
            ("ntp fixes it", timedelta(0), True),
            ("-2h unsynced past the hold", timedelta(hours=-2), False),
            ("ntp fixes it again", timedelta(0), True),
            ("+1 day unsynced", timedelta(days=1), False),
            ("ntp fixes it once more", timedelta(0), True),
        ]
        for (name, skew, sync), count in zip(steps, PHASE_POLLS, strict=True):
            await phase(name, count, skew=skew, sync=sync)
        stop.set()
        await task

    expected_polls = sum(PHASE_POLLS)
    try:
        asyncio.run(scenario())
        wait_until(
            lambda: len(power_polls(capture)) >= expected_polls,
            timeout=10,
            what="every poll on the broker",
        )
    finally:
        capture.stop()

    polls = power_polls(capture)
    trusted = [r for r in polls if r.get("time_synced", True)]
    flagged = [r for r in polls if not r.get("time_synced", True)]
    start_ms, end_ms = ts_ms(clock.base.isoformat()), ts_ms(clock.true_now().isoformat())

    # Re-stamped: every trusted timestamp is true time, none is 2 h or a day off.
    assert all(start_ms <= ts_ms(r["ts"]) <= end_ms for r in trusted), [r["ts"] for r in trusted]
    # Held past hold_unsynced: released flagged, with the 2 h error they were polled with.
    assert len(flagged) >= 2
    for r in flagged:
        assert ts_ms(r["ts"]) < start_ms - 7_000_000, r["ts"]
    # The period is kept on the monotonic clock: adjacent polls with trusted timestamps are
    # 0.5 s +-10 % apart (the re-stamped ones included); no burst anywhere.
    gaps = [
        (ts_ms(b["ts"]) - ts_ms(a["ts"])) / 1000
        for a, b in itertools.pairwise(polls)
        if a.get("time_synced", True) and b.get("time_synced", True)
    ]
    assert len(gaps) >= expected_polls - len(flagged) - 3
    print(f"\ngaps: min {min(gaps):.3f} max {max(gaps):.3f} n {len(gaps)}")
    assert all(INTERVAL * 0.9 <= g <= INTERVAL * 1.1 for g in gaps), gaps


def power_polls(capture: MqttCapture) -> list[dict[str, Any]]:
    """One reading per poll (the meter's total power), in poll order."""
    return sorted((r for r in capture.readings() if r["metric"] == "power"), key=lambda r: r["seq"])
