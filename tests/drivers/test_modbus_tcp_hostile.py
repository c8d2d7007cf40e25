"""Modbus TCP against a hostile device: no wrong value ever returned, every fault in its class.

The peer is `tests.drivers.hostile_tcp.HostileTcpServer`, written for these tests from the
Modbus TCP specifications (not the shipped simulator, not pymodbus). Every value it serves
encodes the serial number of the request it answers, so each value a driver returns is traced
back to its frame (`assert_traced`): it must come from the frame that was the valid, on-time
answer to a request of *that* poll, from the right unit, function and address. A stale answer, a
replay, a duplicate or an answer for the other table would all show up as a wrong value.

Pinned here, through the real stack (`gateway.registry.build_driver` -> `ModbusTcpDriver` ->
`ModbusTcpRegisters`, and `gateway.scheduler.BusPoller`):

- each fault of `hostile_tcp.FAULTS` fails exactly the poll it hits (or none, when the right
  answer still came) with its documented error, is counted exactly once under its own class in
  `faults()`, drops the connection only when the stream lost sync or the device closed it, and
  logs nothing at WARNING and no traceback from the transport;
- a healthy unit behind the same endpoint as a hostile one is polled on its grid, with no fault;
- two units behind a gateway that accepts a single connection share one connection;
- a refused endpoint is not retried in a tight loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from drivers.base import Driver
from drivers.modbus.driver import ModbusTcpDriver
from drivers.modbus.profiles import RegisterKind, load_profile
from drivers.modbus.sunspec.driver import SunSpecTcpDriver
from drivers.modbus.tcp_client import ModbusExceptionAnswer, ModbusTcpRegisters
from gateway.config import ModbusDevice, SunSpecDevice
from gateway.errors import DecodeError, DeviceBusy, DeviceError, DeviceTimeout
from gateway.model import MetricSpec, Reading, Value
from gateway.registry import BusRegistry, build_driver
from gateway.scheduler import BusPoller, DeviceState, SequenceCounter
from tests.drivers.hostile_tcp import FAULTS, HostileTcpServer, trace

T = TypeVar("T")

#: Per-request timeout of the drivers under test, in seconds.
TIMEOUT = 0.3
#: Hard limit on one test's event loop, in seconds.
DEADLINE_S = 30.0
PROFILE = load_profile("sdm630")

#: Fault -> (the error the poll it hits raises, or None if the poll succeeds; the faults counted).
EXPECTED: dict[str, tuple[type[DeviceError] | None, Counter[str]]] = {
    "ok": (None, Counter()),
    "wrong_function": (DecodeError, Counter(wrong_function=1)),
    "tid0_replay": (DecodeError, Counter(wrong_tid=1)),
    "foreign_tid": (DecodeError, Counter(wrong_tid=1)),
    # The poll times out; the answer, when it comes, is recognised as stale and discarded.
    "late": (DeviceTimeout, Counter(timeout=1, stale=1)),
    # The first copy answers the poll, the second is stale.
    "duplicate": (None, Counter(stale=1)),
    "byte_count_vs_length": (DecodeError, Counter(byte_count=1)),
    "short_answer": (DecodeError, Counter(byte_count=1)),
    "huge_length": (DecodeError, Counter(length=1)),
    "short_length": (DecodeError, Counter(length=1)),
    "protocol": (DecodeError, Counter(garbage=1)),
    "rst": (DecodeError, Counter(truncated=1)),
    "fin_mid_frame": (DecodeError, Counter(truncated=1)),
    "fin": (DeviceTimeout, Counter(timeout=1)),
    "silent": (DeviceTimeout, Counter(timeout=1)),
    "one_byte": (None, Counter()),
    "noise_before": (DecodeError, Counter(garbage=1)),
    # The answer is good; the noise after it costs the connection, not the poll.
    "noise_after": (None, Counter(garbage=1)),
    "wrong_unit": (DecodeError, Counter(wrong_unit=1)),
    **{
        f"exception-{code:#04x}": (
            DeviceBusy if code == 0x06 else ModbusExceptionAnswer,
            Counter({f"exception-{code:#04x}": 1}),
        )
        for code in range(0x01, 0x0C)
    },
}
#: Faults after which the client must make a new connection (stream sync lost, or closed).
RECONNECTING = {
    "byte_count_vs_length",
    "huge_length",
    "short_length",
    "protocol",
    "rst",
    "fin_mid_frame",
    "fin",
    "noise_before",
    "noise_after",
}


def test_the_expectations_cover_every_fault_the_server_injects() -> None:
    assert set(EXPECTED) == set(FAULTS)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` in a fresh loop with a hard deadline; fail if it leaves tasks behind."""

    async def guarded() -> T:
        async with asyncio.timeout(DEADLINE_S):
            result = await main
        for _ in range(5):
            await asyncio.sleep(0)  # let close callbacks run
        leftovers = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftovers, f"leaked tasks: {leftovers}"
        return result

    return asyncio.run(guarded())


async def until(condition: Callable[[], bool], *, within: float = 3.0) -> None:
    """Wait until ``condition()`` holds; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while True:
        if condition():
            return
        assert loop.time() < give_up, "condition not met in time"
        await asyncio.sleep(0.01)  # poll interval while waiting on the condition


# --- tracing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    """One successful poll: the serials the server handed out during it, and what it returned."""

    started: float
    first_serial: int
    end_serial: int
    values: Mapping[str, Value]


@dataclass
class Traced:
    """A `Driver` around the real one that records each successful poll for `assert_traced`."""

    inner: Driver
    server: HostileTcpServer
    polls: list[Poll] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        return self.inner.metrics

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def poll(self) -> Mapping[str, Value]:
        started, first = time.monotonic(), self.server.next_serial
        try:
            values = await self.inner.poll()
        finally:
            self.changed.set()
        self.polls.append(Poll(started, first, self.server.next_serial, values))
        return values


def assert_traced(server: HostileTcpServer, unit_id: int, polls: Sequence[Poll]) -> None:
    """Every value of every poll came from the valid answer to a request of that poll, sent to
    ``unit_id`` for that value's table and address."""
    points = {p.key: p for p in PROFILE.points}
    wrong = []
    for poll in polls:
        assert set(poll.values) == set(points)
        for key, value in poll.values.items():
            assert isinstance(value, float), (key, value)
            serial, address, holding = trace(value)
            served = server.served.get(serial)
            point = points[key]
            ok = (
                poll.first_serial <= serial < poll.end_serial
                and served is not None
                and served.valid
                and served.unit_id == unit_id
                and served.function == (3 if point.kind is RegisterKind.HOLDING else 4)
                and holding == (point.kind is RegisterKind.HOLDING)
                and address == point.address
                and served.address <= address < served.address + served.count
            )
            if not ok:
                wrong.append((key, value, serial, served, poll))
    assert not wrong, f"values not traceable to their poll's own answer: {wrong}"


def assert_quiet(caplog: pytest.LogCaptureFixture, *, allowed_warnings: int = 0) -> None:
    """No traceback anywhere; warnings only from the scheduler (one per failure episode)."""
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.name == "gateway.scheduler" for r in loud), [r.getMessage() for r in loud]
    assert len(loud) == allowed_warnings, [r.getMessage() for r in loud]


def _device(
    server: HostileTcpServer, name: str, unit_id: int, *, interval: float = 10.0
) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "id": name,
            "driver": "modbus",
            "profile": "sdm630",
            "unit_id": unit_id,
            "interval": interval,
            "timeout": TIMEOUT,
            "transport": {"kind": "tcp", "host": server.host, "port": server.port},
        }
    )


def _registers_of(driver: Driver) -> ModbusTcpRegisters:
    assert isinstance(driver, ModbusTcpDriver)
    return driver.unit.registers


# --- one fault at a time, through the driver -------------------------------------------------


@pytest.mark.parametrize("fault", sorted(EXPECTED))
def test_each_fault_fails_only_its_own_poll_and_is_counted_once(
    fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    error, counted = EXPECTED[fault]

    async def main() -> tuple[Traced, HostileTcpServer, ModbusTcpRegisters]:
        async with HostileTcpServer(units=[1]) as server:
            inner = build_driver(_device(server, "meter", 1), BusRegistry())
            driver = Traced(inner, server)
            # Poll 1 reads cleanly (and is what tid0_replay replays); poll 2 meets the fault in
            # its first read; polls 3 and 4 must be clean again, whatever the fault left behind.
            server.script(1, "ok", "ok", fault)
            await driver.open()
            try:
                await driver.poll()
                if error is None:
                    await driver.poll()
                else:
                    with pytest.raises(error) as caught:
                        await driver.poll()
                    assert caught.value.fault == next(iter(counted - Counter(stale=1)))
                await driver.poll()
                await driver.poll()
            finally:
                await driver.close()
            return driver, server, _registers_of(inner)

    driver, server, registers = run(main())
    assert len(driver.polls) == (4 if error is None else 3)
    assert_traced(server, 1, driver.polls)
    assert registers.faults(1) == counted
    counters = registers.counters()
    assert counters["reconnects"] == (1 if fault in RECONNECTING else 0), counters
    assert not registers.connected
    assert_quiet(caplog)


def test_every_exception_code_reaches_the_caller_with_its_code() -> None:
    async def main() -> dict[int, int | None]:
        codes: dict[int, int | None] = {}
        async with (
            HostileTcpServer(units=[1]) as server,
            ModbusTcpRegisters(host=server.host, port=server.port, timeout=TIMEOUT) as registers,
        ):
            for code in range(0x01, 0x0C):
                server.script(1, f"exception-{code:#04x}")
                expected = DeviceBusy if code == 0x06 else ModbusExceptionAnswer
                with pytest.raises(expected) as caught:
                    await registers.read(RegisterKind.INPUT, 0, 2, unit_id=1)
                assert caught.value.fault == f"exception-{code:#04x}"
                codes[code] = getattr(caught.value, "code", 0x06)
            # A unit the gateway does not know: 0x0B, as commissioning relies on.
            with pytest.raises(ModbusExceptionAnswer) as caught:
                await registers.read(RegisterKind.INPUT, 0, 2, unit_id=9)
            assert caught.value.code == 0x0B
        return codes

    assert run(main()) == {code: code for code in range(0x01, 0x0C)}


def test_a_silent_device_times_out_on_the_same_connection_until_it_answers() -> None:
    async def main() -> tuple[list[str], dict[str, int], Counter[str]]:
        outcomes = []
        async with (
            HostileTcpServer(units=[1]) as server,
            ModbusTcpRegisters(host=server.host, port=server.port, timeout=TIMEOUT) as registers,
        ):
            server.script(1, "silent", "silent", "ok")
            for _ in range(3):
                try:
                    words = await registers.read(RegisterKind.INPUT, 0, 2, unit_id=1)
                    outcomes.append(f"{len(words)} words")
                except DeviceTimeout as exc:
                    outcomes.append(exc.fault)
            return outcomes, registers.counters(), registers.faults(1)

    outcomes, counters, faults = run(main())
    assert outcomes == ["timeout", "timeout", "2 words"]
    # Kept across the timeouts: a late answer would carry a finished tid and be discarded.
    assert counters["connects"] == 1
    assert counters["transactions"] == 3
    assert faults == Counter(timeout=2)


def test_a_device_that_hung_up_while_idle_is_reconnected_without_a_fault() -> None:
    async def main() -> tuple[dict[str, int], Counter[str]]:
        async with (
            HostileTcpServer(units=[1]) as server,
            ModbusTcpRegisters(host=server.host, port=server.port, timeout=TIMEOUT) as registers,
        ):
            await registers.read(RegisterKind.INPUT, 0, 2, unit_id=1)
            server.hang_up()
            await until(lambda: not registers.connected)  # the FIN has arrived
            assert len(await registers.read(RegisterKind.INPUT, 0, 2, unit_id=1)) == 2
            return registers.counters(), registers.faults(1)

    counters, faults = run(main())
    assert (counters["connects"], counters["reconnects"]) == (2, 1)
    assert faults == Counter()


def test_a_refused_endpoint_is_not_retried_in_a_tight_loop() -> None:
    async def main() -> tuple[list[str], dict[str, int], Counter[str]]:
        async with HostileTcpServer(units=[1]) as server:
            port = server.port
        # The port is closed now: connections are refused.
        registers = ModbusTcpRegisters(host="127.0.0.1", port=port, timeout=TIMEOUT)
        messages = []
        for _ in range(5):
            with pytest.raises(DeviceTimeout) as caught:
                await registers.read(RegisterKind.INPUT, 0, 2, unit_id=1)
            messages.append(str(caught.value))
        assert registers.counters()["connect_failures"] == 1  # one attempt, four held off
        # After the hold-off the endpoint is tried again (waited for as a condition).
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 5.0
        while registers.counters()["connect_failures"] < 2 and loop.time() < give_up:
            with pytest.raises(DeviceTimeout):
                await registers.read(RegisterKind.INPUT, 0, 2, unit_id=1)
            await asyncio.sleep(0.05)  # poll interval while waiting on the condition
        await registers.close()
        return messages, registers.counters(), registers.faults(1)

    messages, counters, faults = run(main())
    assert all("refused" in m for m in messages), messages
    assert "not retried" in messages[1]
    assert counters["connect_failures"] == 2
    assert counters["connects"] == 0
    assert faults["timeout"] >= 6  # every failed read is counted, held off or not


# --- two units behind one endpoint, through the scheduler ------------------------------------


class NoJitter(random.Random):
    """Backoff without jitter: a failed device is retried after exactly its interval."""

    def uniform(self, a: float, b: float) -> float:
        return a


@dataclass
class Bus:
    """A `BusPoller` over drivers built by the registry, and what it published."""

    server: HostileTcpServer
    registry: BusRegistry
    traced: dict[str, Traced]
    states: dict[str, DeviceState]
    readings: list[Reading] = field(default_factory=list)

    @classmethod
    def build(cls, server: HostileTcpServer, devices: Sequence[ModbusDevice]) -> Bus:
        registry = BusRegistry()
        traced = {d.id: Traced(build_driver(d, registry), server) for d in devices}
        states = {
            d.id: DeviceState(id=d.id, driver=traced[d.id], interval=d.interval, guard=10.0)
            for d in devices
        }
        return cls(server, registry, traced, states)

    async def sink(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)

    async def run_until(self, done: Callable[[], bool], *, within: float) -> None:
        poller = BusPoller(
            name="bus",
            devices=list(self.states.values()),
            sink=self.sink,
            sequence=SequenceCounter(0),
            rng=NoJitter(),
        )
        task = asyncio.create_task(poller.run(), name="bus")
        try:
            async with asyncio.timeout(within):
                while not done():
                    events = [t.changed for t in self.traced.values()]
                    for event in events:
                        event.clear()
                    waiters = [asyncio.ensure_future(e.wait()) for e in events]
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for waiter in waiters:
                            waiter.cancel()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    def assert_published_what_was_traced(self) -> None:
        """The scheduler published exactly the values the traced polls returned."""
        polled = Counter(
            (device, key, value)
            for device, traced in self.traced.items()
            for poll in traced.polls
            for key, value in poll.values.items()
        )
        published = Counter((r.device, r.metric, r.value) for r in self.readings)
        assert published == polled

    def assert_on_grid(self, device: str) -> None:
        """No grid slot of ``device`` was skipped (the scheduler skips a slot it is late for)."""
        interval = self.states[device].interval
        starts = [p.started for p in self.traced[device].polls]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps, "no polls"
        assert max(gaps) < 1.5 * interval, [round(g, 3) for g in gaps]


def test_a_hostile_unit_never_spoils_its_healthy_neighbour_on_one_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    failing = [f for f, (error, _) in EXPECTED.items() if error is not None]
    harmless = [f for f, (error, _) in EXPECTED.items() if error is None and f != "ok"]
    expected_faults: Counter[str] = Counter()
    for fault in (*failing, *harmless):
        expected_faults += EXPECTED[fault][1]
    expected_errors = Counter(EXPECTED[f][0].kind for f in failing)  # type: ignore[union-attr]

    async def main() -> Bus:
        async with HostileTcpServer(units=[1, 2]) as server:
            hostile = _device(server, "hostile", 1, interval=0.1)
            healthy = _device(server, "healthy", 2, interval=0.6)
            bus = Bus.build(server, [hostile, healthy])
            server.script(1, "ok", "ok")
            for fault in failing:
                server.script(1, fault, "ok", "ok")  # the failed poll, then a clean one
            for fault in harmless:
                server.script(1, fault, "ok")  # a poll that succeeds despite the fault
            await bus.run_until(
                lambda: server.pending(1) == 0 and len(bus.traced["healthy"].polls) >= 4,
                within=25.0,
            )
            return bus

    bus = run(main())
    registers = bus.registry.modbus_tcp(bus.server.host, bus.server.port, TIMEOUT)
    assert registers is _registers_of(bus.traced["healthy"].inner)  # one shared connection
    assert_traced(bus.server, 1, bus.traced["hostile"].polls)
    assert_traced(bus.server, 2, bus.traced["healthy"].polls)
    bus.assert_published_what_was_traced()
    assert registers.faults(1) == expected_faults
    assert registers.faults(2) == Counter()
    assert bus.states["hostile"].errors == expected_errors
    assert bus.states["healthy"].errors == Counter()
    bus.assert_on_grid("healthy")
    assert len(bus.traced["hostile"].polls) == 1 + len(failing) + len(harmless)
    # One warning per failure episode (each failed poll is followed by a clean one).
    assert_quiet(caplog, allowed_warnings=len(failing))


def test_two_units_behind_a_single_client_gateway_share_one_connection() -> None:
    async def main() -> Bus:
        async with HostileTcpServer(units=[1, 2], max_clients=1) as server:
            devices = [_device(server, f"meter{u}", u, interval=0.2) for u in (1, 2)]
            bus = Bus.build(server, devices)
            await bus.run_until(
                lambda: all(len(t.polls) >= 10 for t in bus.traced.values()), within=10.0
            )
            return bus

    bus = run(main())
    assert (bus.server.accepted, bus.server.turned_away) == (1, 0)
    for unit_id, name in ((1, "meter1"), (2, "meter2")):
        assert bus.states[name].errors == Counter()
        assert_traced(bus.server, unit_id, bus.traced[name].polls)
        bus.assert_on_grid(name)
    bus.assert_published_what_was_traced()


def test_the_single_client_gateway_really_turns_a_second_connection_away() -> None:
    # The control for the test above: one connection per device (the old registry) fails.
    async def main() -> tuple[list[str], HostileTcpServer]:
        outcomes = []
        async with HostileTcpServer(units=[1, 2], max_clients=1) as server:
            drivers = [
                ModbusTcpDriver(
                    host=server.host, port=server.port, unit_id=u, profile=PROFILE, timeout=TIMEOUT
                )
                for u in (1, 2)
            ]
            try:
                for driver in drivers:
                    try:
                        await driver.poll()
                        outcomes.append("ok")
                    except DeviceTimeout as exc:
                        outcomes.append(exc.fault)
            finally:
                for driver in drivers:
                    await driver.close()
            return outcomes, server

    outcomes, server = run(main())
    assert outcomes == ["ok", "timeout"]
    assert (server.accepted, server.turned_away) == (1, 1)


def test_closing_one_unit_keeps_the_connection_of_its_neighbour() -> None:
    async def main() -> None:
        async with HostileTcpServer(units=[1, 2]) as server:
            registry = BusRegistry()
            first = build_driver(_device(server, "a", 1), registry)
            second = build_driver(_device(server, "b", 2), registry)
            registers = _registers_of(first)
            assert _registers_of(second) is registers
            await first.open()
            await second.open()
            await first.close()
            await first.close()  # a second close must not release the neighbour's reference
            assert registers.connected
            assert len(await second.poll()) == len(PROFILE.points)
            await second.close()
            assert not registers.connected
            assert server.accepted == 1

    run(main())


def test_every_device_on_one_endpoint_shares_its_connection_and_bus_task() -> None:
    endpoint = {"kind": "tcp", "host": "10.0.0.9", "port": 502}
    meter = ModbusDevice.model_validate(
        {
            "id": "m",
            "driver": "modbus",
            "profile": "sdm630",
            "unit_id": 1,
            "timeout": 0.5,
            "transport": endpoint,
        }
    )
    slow = ModbusDevice.model_validate(
        {
            "id": "s",
            "driver": "modbus",
            "profile": "sdm630",
            "unit_id": 2,
            "timeout": 3.0,
            "transport": endpoint,
        }
    )
    inverter = SunSpecDevice.model_validate(
        {"id": "pv", "driver": "sunspec", "unit_id": 3, "transport": endpoint}
    )
    registry = BusRegistry()
    drivers = [build_driver(d, registry) for d in (meter, slow, inverter)]
    assert isinstance(drivers[2], SunSpecTcpDriver)
    shared = _registers_of(drivers[0])
    assert _registers_of(drivers[1]) is shared
    assert drivers[2]._registers is shared
    assert len({d.bus_key() for d in (meter, slow, inverter)}) == 1  # polled in turn
    # Each unit keeps its own request timeout on the shared connection.
    units = [d.unit for d in drivers[:2] if isinstance(d, ModbusTcpDriver)]
    assert [u.response_timeout for u in units] == [0.5, 3.0]


def test_units_on_different_endpoints_get_different_connections() -> None:
    registry = BusRegistry()
    a = registry.modbus_tcp("10.0.0.1", 502, 1.0)
    assert registry.modbus_tcp("10.0.0.1", 502, 2.0) is a
    assert registry.modbus_tcp("10.0.0.1", 503, 1.0) is not a
    assert registry.modbus_tcp("10.0.0.2", 502, 1.0) is not a
