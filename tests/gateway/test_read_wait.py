"""``gateway read`` waits for a sensor's next measurement and through a PMSA003I's warm-up.

Acceptance 4 of issue 8, on the demo site as an installer runs it (``gateway read --simulate``
as a subprocess, stdout a pipe, so the countdown is one line per 5 s): the SCD4x prints values
after waiting for its first measurement, the PMSA003I prints values (not "—") after its 30 s
warm-up, a Modbus meter prints at once, and ``--json`` parses. The three run side by side, so
the suite waits one warm-up, not three reads. Below them, `gateway.measure` with a scripted
driver and a fake clock: the waits, the bound, the countdown, the close on every path.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import EXIT_FAILURE, main
from gateway.commission import ProgressLine
from gateway.errors import DecodeError, DeviceNotReady
from gateway.measure import Measurement, MeasureTimeout, measure
from gateway.model import MetricSpec, Value
from tests.fakeclock import FakeClock
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "gateway" / "demo.toml"


def _read(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "read", "--simulate", "--config", str(DEMO), *args],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:]}


def test_read_waits_for_the_scd4x_and_through_the_pm_warm_up_on_the_demo_site() -> None:
    pm = _read("b1-room-ladybird-pm")
    co2 = _read("b2-room-hedgehog")
    meter = _read("--json", "b1-main-meter")
    results = {}
    for name, proc in (("pm", pm), ("co2", co2), ("meter", meter)):
        out, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, out, err)

    code, out, err = results["pm"]
    assert code == 0, err
    assert out.splitlines()[0] == "b1-room-ladybird-pm (pmsa003i)"
    rows = _rows(out)
    assert rows["pm25"][1] == "µg/m³" and rows["particles_03um"][1] == "/dL"
    assert all(value != "—" and int(value) >= 0 for value, _unit in rows.values())
    countdown = [line for line in err.splitlines() if "warming up" in line]
    # One line per 5 s of the 30 s warm-up, counting down (not one per second, not a TTY).
    assert countdown[0] == "b1-room-ladybird-pm: warming up, 30 s left"
    assert 6 <= len(countdown) <= 7, countdown
    lefts = [int(line.rsplit(", ", 1)[1].split()[0]) for line in countdown]
    assert lefts == sorted(lefts, reverse=True) and lefts[-1] <= 5
    assert "Traceback" not in err

    code, out, err = results["co2"]
    assert code == 0, err
    rows = _rows(out)
    assert rows["co2"][1] == "ppm" and 400 <= int(rows["co2"][0]) <= 5000
    assert rows["temperature"][1] == "°C" and rows["humidity"][1] == "%RH"
    assert "b2-room-hedgehog: waiting for the next measurement" in err.splitlines()

    code, out, err = results["meter"]
    assert code == 0, err
    document = json.loads(out)
    assert set(document) == {"device", "driver", "values", "duration_ms"}
    assert document["device"] == "b1-main-meter" and document["driver"] == "modbus"
    voltage = document["values"]["voltage_l1"]
    assert voltage["unit"] == "V" and voltage["quality"] == "good"
    assert 200 < voltage["value"] < 260
    assert isinstance(document["duration_ms"], int) and document["duration_ms"] >= 0


def test_a_real_failure_exits_1_and_json_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nid = "kg"\n[[devices]]\nid = "meter"\ndriver = "modbus"\nprofile = "sdm120"\n'
        f'timeout = 0.5\ntransport = {{ kind = "tcp", host = "127.0.0.1", port = {free_port()} }}\n'
    )
    assert main(["read", "--json", "--config", str(config), "meter"]) == EXIT_FAILURE
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["device"] == "meter" and document["error"]["kind"] == "timeout"
    assert document["error"]["message"] and "duration_ms" in document
    assert captured.err.startswith("error: meter: timeout: ")


class Scripted:
    """A driver whose polls follow a script: an exception to raise, or values to return;
    ``warming`` is its ``warming_up`` until the clock reaches ``warm_at``."""

    def __init__(self, clock: FakeClock, script: list[Exception | dict[str, Value]]) -> None:
        self.clock = clock
        self.script = script
        self.warm_at = 0.0
        self.opened = self.closed = 0

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        return {"pm25": MetricSpec(key="pm25", unit="µg/m³")}

    @property
    def warming_up(self) -> bool:
        return self.clock() < self.warm_at

    async def open(self) -> None:
        self.opened += 1

    async def poll(self) -> Mapping[str, Value]:
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step if not self.warming_up else {"pm25": None}

    async def close(self) -> None:
        self.closed += 1


def _run(driver: Scripted, clock: FakeClock, **kwargs: Any) -> Measurement:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return asyncio.run(measure(driver, clock=clock, sleep=sleep, **kwargs))


def test_measure_asks_again_after_not_ready_then_returns_the_values() -> None:
    clock = FakeClock()
    seen: list[tuple[str, float | None]] = []
    driver = Scripted(clock, [DeviceNotReady("no data", retry_after=0.5)] * 3 + [{"pm25": 4}])
    found = _run(driver, clock, progress=lambda what, left: seen.append((what, left)))
    assert found.values == {"pm25": 4} and found.count == 1
    assert found.seconds == pytest.approx(1.5)
    assert seen == [("waiting for the next measurement", None)] * 3
    assert (driver.opened, driver.closed) == (1, 1)


def test_measure_counts_the_warm_up_down_and_waits_it_out() -> None:
    clock = FakeClock()
    driver = Scripted(clock, [{"pm25": 9}])
    driver.warm_at = 3.0
    seen: list[float | None] = []
    found = _run(driver, clock, warmup_s=3.0, progress=lambda what, left: seen.append(left))
    assert found.values == {"pm25": 9} and not found.withheld
    assert seen == [3.0, 2.0, 1.0]
    # Without waiting: the withheld values, said to be withheld.
    clock2 = FakeClock()
    early = Scripted(clock2, [{"pm25": 9}])
    early.warm_at = 30.0
    found = _run(early, clock2, warmup_s=30.0, wait_warmup=False)
    assert found.values == {"pm25": None} and found.withheld
    assert found.count == 0


def test_measure_gives_up_at_its_bound_and_closes_on_every_path() -> None:
    clock = FakeClock()
    never = Scripted(clock, [DeviceNotReady("no new measurement yet", retry_after=1.0)])
    with pytest.raises(MeasureTimeout, match=r"no measurement within 10 s \(no new measurement"):
        _run(never, clock, bound=10.0)
    assert clock() <= 10.0 and never.closed == 1
    clock = FakeClock()
    warming = Scripted(clock, [{"pm25": 1}])
    warming.warm_at = 30.0
    with pytest.raises(MeasureTimeout, match="still warming up, 30 s left: longer than the 5 s"):
        _run(warming, clock, bound=5.0, warmup_s=30.0)
    assert clock() == 0.0 and warming.closed == 1  # failed at once, without waiting in vain
    broken = Scripted(FakeClock(), [DecodeError("checksum")])
    with pytest.raises(DecodeError):
        _run(broken, FakeClock())
    assert broken.closed == 1


def test_progress_is_a_countdown_on_a_terminal_and_a_line_per_5_s_otherwise() -> None:
    clock = FakeClock()
    log = io.StringIO()
    line = ProgressLine("pm", log, tty=False, clock=clock)
    for left in range(30, 0, -1):
        line("warming up", float(left))
        clock.advance(1.0)
    line.done()
    assert log.getvalue().splitlines() == [
        f"pm: warming up, {left} s left" for left in (30, 25, 20, 15, 10, 5)
    ]
    term = io.StringIO()
    line = ProgressLine("pm", term, tty=True, clock=clock)
    line("warming up", 10.0)
    line("warming up", 9.0)
    line.done()
    assert term.getvalue() == "\rpm: warming up, 10 s left\rpm: warming up, 9 s left \n"
