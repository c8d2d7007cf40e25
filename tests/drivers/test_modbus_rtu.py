"""Modbus RTU: framing, the shared line and the baud-timed simulator, over real PTY pairs.

Every transaction here crosses a kernel PTY as bytes: the gateway side is pyserial on the slave
path, exactly as on /dev/ttyUSB0; the simulator answers on the master side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.framer import FramerRTU

from drivers.modbus.engine import ModbusDriver
from drivers.modbus.line import LineUnit, ModbusLine, SerialSettings
from drivers.modbus.profiles import Profile, load_profile, profile_from_table
from drivers.modbus.rtu import (
    Expected,
    Verdict,
    crc16,
    parse_read_answer,
    read_request,
    t35,
    transaction_limit,
    with_crc,
)
from gateway.errors import DecodeError, DeviceBusy, DeviceError, DeviceRejected, DeviceTimeout
from gateway.model import Value
from simulators.meters import Sdm630Meter
from simulators.modbus_rtu import Fault, ModbusRtuSimulator, crc16_modbus

T = TypeVar("T")
#: Monday 2024-01-15 03:00 CET: a fixed moment, so every answer carries the same values.
NIGHT = 1_705_284_000.0
DEADLINE_S = 15.0


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` with a hard deadline; fail if it leaves tasks behind."""

    async def guarded() -> T:
        async with asyncio.timeout(DEADLINE_S):
            result = await main
        for _ in range(3):
            await asyncio.sleep(0)
        leftovers = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftovers, f"leaked tasks: {leftovers}"
        return result

    return asyncio.run(guarded())


def meters(*units: int) -> dict[int, Sdm630Meter]:
    return {u: Sdm630Meter(seed=u, clock=lambda: NIGHT) for u in units}


def voltage_profile() -> Profile:
    """One float32 at input 0: one two-register read per poll."""
    return profile_from_table(
        "voltage",
        {"points": {"voltage_l1": {"register": "input", "address": 0, "type": "float32"}}},
    )


def driver(line: ModbusLine, unit: int, profile: Profile, timeout: float = 0.5) -> ModbusDriver:
    reader = LineUnit(line=line, unit_id=unit, response_timeout=timeout)
    return ModbusDriver(reader=reader, profile=profile, name=f"unit{unit}")


# --- framing -------------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_crc_agrees_with_pymodbus_and_with_the_simulators_own(data: bytes) -> None:
    ours = crc16(data)
    # pymodbus returns the CRC byte-swapped (as the two bytes appear on the wire, big-endian).
    assert ours.to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(2, "big")
    assert crc16_modbus(data) == ours


def test_crc_of_a_datasheet_frame() -> None:
    # Modbus over serial line V1.02, 6.2.2: read input register 8 of unit 1 -> "01 04 00 08 00 01 B0 08"
    assert read_request(1, 4, 8, 1).hex(" ") == "01 04 00 08 00 01 b0 08"


def test_inter_frame_gap_follows_the_baud_rate() -> None:
    assert t35(9600) == pytest.approx(3.5 * 11 / 9600)  # ≈ 4.01 ms
    assert t35(19200) == pytest.approx(3.5 * 11 / 19200)
    assert t35(38400) == t35(115200) == 0.00175
    # 125 registers at 9600 baud: ≈ 0.27 s on the wire (BRIEF field facts) + gaps + turnaround.
    assert transaction_limit(125, 9600, 0.0) == pytest.approx(263 * 11 / 9600 + 2 * 0.004010, 1e-3)


def test_parser_skips_a_late_answer_from_another_unit() -> None:
    late = with_crc(bytes([7, 4, 4, 1, 2, 3, 4]))
    ours = with_crc(bytes([1, 4, 4, 0, 10, 0, 20]))
    parsed = parse_read_answer(late + ours, unit_id=1, function=4, count=2)
    assert parsed.verdict is Verdict.OK
    assert parsed.registers == (10, 20)
    assert parsed.strays == 1
    # Alone, a valid answer from a unit with no reason to speak fails the unit asked (issue 15);
    # while unit 7's earlier request of that shape may still be answered, it is a late answer.
    assert parse_read_answer(late, unit_id=1, function=4, count=2).verdict is Verdict.WRONG_UNIT
    waiting = Expected(late={(7, 4, 4): float("inf")})
    parsed = parse_read_answer(late, unit_id=1, function=4, count=2, expected=waiting)
    assert (parsed.verdict, parsed.stale) == (Verdict.PENDING, (7,))
    parsed = parse_read_answer(ours[:-1], unit_id=1, function=4, count=2)
    assert (parsed.verdict, parsed.missing) == (Verdict.PENDING, 1)
    broken = ours[:-1] + bytes([ours[-1] ^ 1])
    assert parse_read_answer(broken, unit_id=1, function=4, count=2).verdict is Verdict.CRC


# --- engine over a PTY -----------------------------------------------------------------------------


def test_several_units_on_one_line_return_exactly_what_the_models_served() -> None:
    models = meters(1, 2, 3)
    profile = load_profile("sdm630")

    async def main() -> dict[int, Mapping[str, Value]]:
        async with ModbusRtuSimulator(devices=models, baudrate=115200, turnaround=0.001) as sim:
            line = ModbusLine(settings=SerialSettings(port=sim.path, baudrate=115200))
            drivers = {u: driver(line, u, profile) for u in models}
            decoded = {}
            for d in drivers.values():
                await d.open()
            try:
                for unit, d in drivers.items():
                    decoded[unit] = await d.poll()
                    assert sim.request_count(unit) == len(d.plan)
            finally:
                for d in drivers.values():
                    await d.close()
            assert line.stray_frames == line.discarded_bytes == 0
            return decoded

    decoded = run(main())
    for unit, model in models.items():
        assert decoded[unit] == model.values()
    assert decoded[1] != decoded[2]


def test_pymodbus_serial_client_reads_the_simulator() -> None:
    """An independent RTU master (pymodbus + pyserial) agrees with the simulator's framing."""
    models = meters(5)

    async def main() -> list[int]:
        async with ModbusRtuSimulator(devices=models, baudrate=19200, turnaround=0.002) as sim:
            client = AsyncModbusSerialClient(
                sim.path, baudrate=19200, timeout=1, retries=0, reconnect_delay=0
            )
            assert await client.connect()
            try:
                response = await client.read_input_registers(0, count=6, device_id=5)
            finally:
                client.close()
            assert not response.isError()
            return list(response.registers)

    registers = run(main())
    assert registers == list(models[5].registers("input")[:6])


@pytest.mark.parametrize(
    ("fault", "error", "detail"),
    [
        (Fault("drop"), DeviceTimeout, {"timeout": 1}),
        # The late answer arrives during unit 2's transaction: skipped there, counted as stale.
        (Fault("delay", delay=0.25), DeviceTimeout, {"timeout": 1, "stale": 1}),
        (Fault("crc"), DecodeError, {"crc": 1}),
        (Fault("truncate"), DecodeError, {"truncated": 1}),
        (Fault("garbage"), DecodeError, {"garbage": 1}),
        (Fault("exception", code=0x06), DeviceBusy, {"exception-0x06": 1}),
        (Fault("exception", code=0x02), DeviceRejected, {"exception-0x02": 1}),
        (Fault("exception", code=0x0B), DeviceRejected, {"exception-0x0b": 1}),
    ],
    ids=lambda v: v.label if isinstance(v, Fault) else None,
)
def test_each_fault_is_one_error_of_its_class_and_the_next_unit_is_unharmed(
    fault: Fault, error: type[DeviceError], detail: dict[str, int]
) -> None:
    models = meters(1, 2)
    profile = voltage_profile()

    async def main() -> None:
        async with ModbusRtuSimulator(devices=models, baudrate=115200, turnaround=0.0) as sim:
            line = ModbusLine(settings=SerialSettings(port=sim.path, baudrate=115200))
            faulty, healthy = driver(line, 1, profile, 0.15), driver(line, 2, profile, 0.15)
            await faulty.open()
            await healthy.open()
            try:
                sim.schedule(1, [fault])
                with pytest.raises(error):
                    await faulty.poll()
                # The very next transaction on the line, to another unit, is clean.
                assert await healthy.poll() == {"voltage_l1": models[2].values()["voltage_l1"]}
                assert await faulty.poll() == {"voltage_l1": models[1].values()["voltage_l1"]}
            finally:
                await faulty.close()
                await healthy.close()
            assert sim.injected(1) == {fault.label: 1}
            assert line.faults(1) == detail
            assert line.faults(2) == {}

    run(main())


def test_an_unopenable_port_is_a_timeout() -> None:
    async def main() -> None:
        line = ModbusLine(settings=SerialSettings(port="/nonexistent/ttyUSB9"))
        with pytest.raises(DeviceTimeout, match="cannot open"):
            await driver(line, 1, voltage_profile()).open()

    run(main())


def test_a_lost_line_is_a_timeout_not_a_crash() -> None:
    models = meters(1)

    async def main() -> None:
        # Timed like the line: an answer sooner than the wire allows is no answer (issue 15).
        sim = ModbusRtuSimulator(devices=models, baudrate=115200, turnaround=0.0)
        await sim.start()
        line = ModbusLine(settings=SerialSettings(port=sim.path, baudrate=115200))
        d = driver(line, 1, voltage_profile(), timeout=0.2)
        await d.open()
        try:
            assert await d.poll()
            await sim.stop()  # the adapter is unplugged
            with pytest.raises(DeviceTimeout):
                await d.poll()
        finally:
            await d.close()
            await sim.stop()

    run(main())


# --- timing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("baudrate", [9600, 19200])
def test_simulator_never_answers_faster_than_the_wire(baudrate: int) -> None:
    """Eight 80-register reads take at least 8 x T and not much more (the bench measures it)."""
    models = meters(1)
    turnaround = 0.005
    reads = 8

    async def main() -> float:
        async with ModbusRtuSimulator(
            devices=models, baudrate=baudrate, turnaround=turnaround
        ) as sim:
            line = ModbusLine(settings=SerialSettings(port=sim.path, baudrate=baudrate))
            await line.open()
            try:
                start = time.monotonic()
                for _ in range(reads):
                    await line.read_registers(
                        unit_id=1, function=4, address=0, count=80, response_timeout=1.0
                    )
                return time.monotonic() - start
            finally:
                await line.close()

    elapsed = run(main())
    limit = reads * transaction_limit(80, baudrate, turnaround)
    # The first request starts without a preceding gap: one t3.5 less than the limit counts.
    assert elapsed >= limit - t35(baudrate) - 0.001
    assert elapsed < limit * 1.5
