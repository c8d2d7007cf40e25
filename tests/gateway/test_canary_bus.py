"""One canary = an SCD4x and a PMSA003I on ONE I2C bus, polled by ONE `BusPoller` task.

The real Adafruit drivers read both simulated chips through one `SimI2CBus`; faults injected into
one chip are counted against that device only, and no fault ever produces a wrong number. Time is
simulated: ``asyncio.sleep`` advances the fake clock that the poller, the drivers and the chips
share, so minutes of polling take milliseconds.
"""

from __future__ import annotations

import asyncio
import random
import types
from collections.abc import Callable, Iterator, Sequence

import adafruit_pm25.i2c
import adafruit_scd4x
import pytest

import gateway.scheduler
from drivers.sensors.pmsa003i import Pmsa003iDriver
from drivers.sensors.scd4x import Scd4xDriver
from gateway.config import parse_config
from gateway.model import Quality, Reading
from gateway.registry import BusRegistry, build_driver
from gateway.scheduler import BusPoller, DeviceState, SequenceCounter
from gateway.simulate import site_spec
from simulators import pmsa003i, scd4x
from simulators.i2c import SimI2CBus
from simulators.particles import PmSample
from tests.fakeclock import FakeClock

START = 50_000.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    clock = FakeClock(START)
    real_sleep = asyncio.sleep

    async def sleep(delay: float, result: object = None) -> object:
        clock.advance(delay)
        return await real_sleep(0, result)

    monkeypatch.setattr(gateway.scheduler.asyncio, "sleep", sleep)
    monkeypatch.setattr(adafruit_scd4x, "time", types.SimpleNamespace(sleep=clock.advance))
    monkeypatch.setattr(adafruit_pm25.i2c, "time", types.SimpleNamespace(sleep=clock.advance))
    yield clock


class Collector:
    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self._changed = asyncio.Condition()

    async def sink(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(predicate)

    def values(self, device: str, metric: str) -> list[object]:
        return [r.value for r in self.readings if r.device == device and r.metric == metric]


def test_both_chips_on_one_bus_one_task_with_per_device_error_counters(clock: FakeClock) -> None:
    co2_chip = scd4x.Scd4xChip(clock=clock, environment=lambda t: (500.0, 21.0, 40.0))
    pm_chip = pmsa003i.Pmsa003iChip(
        clock=clock, environment=lambda t: PmSample(pm1=10.0, pm25=42.0, pm10=60.0)
    )
    bus = SimI2CBus()
    bus.attach(scd4x.ADDRESS, co2_chip)
    bus.attach(pmsa003i.ADDRESS, pm_chip)
    co2 = DeviceState(id="room-co2", driver=Scd4xDriver(bus=bus), interval=5.0, guard=60.0)
    pm = DeviceState(
        id="room-pm",
        driver=Pmsa003iDriver(bus=bus, clock=clock, stuck_polls=4),  # the datasheet's 30 s
        interval=5.0,
        guard=60.0,
    )
    out = Collector()

    async def scenario() -> None:
        poller = BusPoller(
            name="bus i2c:canary",
            devices=[co2, pm],
            sink=out.sink,
            sequence=SequenceCounter(0),
            monotonic=clock,
            rng=random.Random(1),
        )
        task = asyncio.create_task(poller.run(), name="bus i2c:canary")
        try:
            await out.wait_for(lambda: 42 in out.values("room-pm", "pm25") and co2.polls >= 3)
            co2_chip.fault_crc = 1  # CRC failure on the SCD4x
            pm_chip.fault_checksum = 1  # checksum failure on the PMSA003I
            await out.wait_for(lambda: co2.errors["decode"] == 1 and pm.errors["decode"] == 1)
            polls = pm.polls
            await out.wait_for(lambda: pm.available and pm.polls > polls)
            pm_chip.fault_nack = 1  # NACK: the scheduler reopens, the warm-up starts again
            pm_chip.power_on()  # (as after a brown-out: the chip's fan restarts too)
            await out.wait_for(lambda: pm.errors["timeout"] == 1)
            await out.wait_for(lambda: pm.available and out.values("room-pm", "pm25")[-1] == 42)
            pm_chip.stuck = True
            await out.wait_for(lambda: pm.errors["stuck"] >= 1)
            pm_chip.stuck = False
            await out.wait_for(lambda: pm.available and co2.available and co2.polls >= 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert dict(co2.errors) == {"decode": 1}
    assert set(pm.errors) == {"decode", "timeout", "stuck"} and pm.errors["timeout"] == 1
    # Never a wrong number: every value is the true one or no value at all.
    assert set(out.values("room-co2", "co2")) == {500}
    pm25 = out.values("room-pm", "pm25")
    assert set(pm25) == {None, 42}
    assert pm25.count(None) >= 12  # two warm-ups (open, reopen after the NACK) of 30 s each
    assert pm.no_values["pm25"] == pm25.count(None), "every warm-up reading is counted"
    assert all((r.quality is Quality.NO_VALUE) == (r.value is None) for r in out.readings)
    assert co2_chip.mode is scd4x.Mode.IDLE  # cancellation closed the SCD4x driver


def test_config_puts_both_chips_on_one_bus_task_and_one_simulated_bus() -> None:
    config = parse_config(
        {
            "site": {"id": "kg"},
            "devices": [
                {"id": "a-co2", "driver": "scd4x", "bus": "tcp://127.0.0.1:17101"},
                {"id": "a-pm", "driver": "pmsa003i", "bus": "tcp://127.0.0.1:17101"},
                {"id": "b-pm", "driver": "pmsa003i", "bus": "tcp://127.0.0.1:17102"},
            ],
        },
        source="test",
    )
    a_co2, a_pm, b_pm = config.devices
    assert a_co2.bus_key() == a_pm.bus_key() != b_pm.bus_key()
    spec = site_spec(config)
    assert {b.name: dict(b.chips) for b in spec.i2c} == {
        "tcp://127.0.0.1:17101": {0x62: ("a-co2", "scd4x"), 0x12: ("a-pm", "pmsa003i")},
        "tcp://127.0.0.1:17102": {0x12: ("b-pm", "pmsa003i")},
    }
    shared = SimI2CBus()
    buses = BusRegistry(buses={"tcp://127.0.0.1:17101": shared})
    drivers = [build_driver(d, buses) for d in (a_co2, a_pm)]
    assert isinstance(drivers[0], Scd4xDriver) and isinstance(drivers[1], Pmsa003iDriver)
    assert all(d._bus is shared for d in drivers)  # type: ignore[attr-defined]
