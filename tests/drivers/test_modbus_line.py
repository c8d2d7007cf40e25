"""`ModbusLine` against a hostile peer written for the test (`tests.hostile_rtu`), on PTY pairs.

Issue 15: late answers and duplicates are never taken for a new answer (sync reads, the wire
time lower bound), the deadline allows for a long answer's wire time, a frame is judged
truncated only after its missing bytes' wire time, and the RS-485 adapter options (echo, RTS
direction control) work on a real pyserial port. Every value returned is traced back to the
request it answered (`tests.hostile_rtu.trace`).
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from drivers.modbus.line import LineUnit, ModbusLine, RtsControl, SerialSettings
from drivers.modbus.planner import ReadRequest
from drivers.modbus.profiles import RegisterKind
from drivers.modbus.rtu import wire_time
from gateway.errors import DecodeError, DeviceRejected, DeviceTimeout
from tests.hostile_rtu import (
    Action,
    HostileLine,
    HostileUnit,
    RtsRecordingPort,
    Transceiver,
    recording_opener,
    registers,
    script,
)

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` with a hard deadline; fail if it leaves tasks behind."""

    async def guarded() -> T:
        async with asyncio.timeout(20):
            result = await main
        leftovers = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftovers, f"leaked tasks: {leftovers}"
        return result

    return asyncio.run(guarded())


async def read(
    line: ModbusLine, count: int = 2, *, unit: int = 1, wait: float = 0.3, address: int = 0
) -> tuple[int, ...]:
    return await line.read_registers(
        unit_id=unit, function=4, address=address, count=count, response_timeout=wait
    )


def shapes(peer: HostileLine) -> list[tuple[int, int, str]]:
    """(address, count, action) of every request the peer understood."""
    return [(s.address, s.count, s.action) for s in peer.log]


# --- stale answers ---------------------------------------------------------------------------


def test_a_late_answer_is_recognised_by_the_sync_read_and_never_taken() -> None:
    """The field case of issue 15 scaled down: the answer comes 0.6 s after a request that timed
    out at 0.3 s, and the same request is sent again at once."""
    peer = HostileLine(units={1: HostileUnit(script=[Action("late", 0.6)])})

    async def main() -> tuple[int, ...]:
        async with peer:
            line = ModbusLine(settings=SerialSettings(port=peer.path, baudrate=9600))
            await line.open()
            try:
                with pytest.raises(DeviceTimeout):
                    await read(line)
                values = await read(line)
            finally:
                await line.close()
            assert line.faults(1) == {"timeout": 1, "stale": 1}
            assert line.counters()["sync_reads"] == 1
            assert line.counters()["stale_frames"] == 1
            return values

    values = run(main())
    # The real request (serial 3) followed a sync read of another size (serial 2), which the
    # unit answered only after its late answer to serial 1.
    assert shapes(peer) == [(0, 2, "late"), (0, 1, "ok"), (0, 2, "ok")]
    assert list(values) == registers(3, 0, 2)


def test_each_sync_read_differs_from_every_answer_still_expected() -> None:
    """A one-register read times out, so does its sync read (two registers): the next sync read
    takes three, and the real read follows it."""
    peer = HostileLine(units={1: HostileUnit(script=script(["drop", "drop"]))})

    async def main() -> tuple[int, ...]:
        async with peer:
            line = ModbusLine(settings=SerialSettings(port=peer.path, baudrate=19200))
            await line.open()
            try:
                for _ in range(2):
                    with pytest.raises(DeviceTimeout):
                        await read(line, 1, wait=0.1)
                values = await read(line, 1, wait=0.1)
            finally:
                await line.close()
            assert line.faults(1) == {"timeout": 2}
            assert line.counters()["sync_reads"] == 2
            return values

    values = run(main())
    assert shapes(peer) == [(0, 1, "drop"), (0, 2, "drop"), (0, 3, "ok"), (0, 1, "ok")]
    assert list(values) == registers(4, 0, 1)


def test_an_exception_to_the_sync_read_fails_that_poll_only() -> None:
    peer = HostileLine(units={1: HostileUnit(script=[Action("drop"), Action("exception", 2)])})

    async def main() -> tuple[int, ...]:
        async with peer:
            line = ModbusLine(settings=SerialSettings(port=peer.path, baudrate=19200))
            await line.open()
            try:
                with pytest.raises(DeviceTimeout):
                    await read(line, 1, wait=0.1)
                with pytest.raises(DeviceRejected) as rejected:
                    await read(line, 1, wait=0.1)
                assert rejected.value.code == 2
                values = await read(line, 1, wait=0.1)
            finally:
                await line.close()
            assert line.faults(1) == {"timeout": 1, "exception-0x02": 1}
            return values

    values = run(main())
    # The unit answered the sync read: the old request is done, the next read needs no sync.
    assert shapes(peer) == [(0, 1, "drop"), (0, 2, "exception-0x02"), (0, 1, "ok")]
    assert list(values) == registers(3, 0, 1)


def test_a_duplicate_arriving_during_the_next_identical_request_is_stale() -> None:
    """The unit sends its answer twice, t3.5 apart; the next identical request is already on the
    wire when the copy completes, sooner than an answer to it could: the copy is not its answer."""
    peer = HostileLine(units={1: HostileUnit(script=script(["duplicate"]))}, baudrate=2400)

    async def main() -> list[tuple[int, ...]]:
        async with peer:
            line = ModbusLine(settings=SerialSettings(port=peer.path, baudrate=2400))
            await line.open()
            try:
                got = [await read(line), await read(line)]
            finally:
                await line.close()
            assert line.faults(1) == {"stale": 1}
            assert line.counters()["noise_bytes"] == 0
            return got

    first, second = run(main())
    assert list(first) == registers(1, 0, 2)
    assert list(second) == registers(2, 0, 2)


def test_a_duplicate_during_another_units_transaction_is_stale_for_its_sender() -> None:
    peer = HostileLine(units={1: HostileUnit(script=script(["duplicate"])), 2: HostileUnit()})

    async def main() -> None:
        async with peer:
            line = ModbusLine(settings=SerialSettings(port=peer.path, baudrate=9600))
            await line.open()
            try:
                assert list(await read(line, unit=1)) == registers(1, 0, 2)
                assert list(await read(line, unit=2)) == registers(2, 0, 2)
            finally:
                await line.close()
            assert line.faults(1) == {"stale": 1}
            assert line.faults(2) == {}

    run(main())


def test_a_frame_from_a_unit_with_no_reason_to_speak_is_wrong_unit() -> None:
    peer = HostileLine(units={1: HostileUnit(script=[Action("other_unit", 2)]), 2: HostileUnit()})

    async def main() -> None:
        async with peer:
            line = ModbusLine(settings=SerialSettings(port=peer.path, baudrate=9600))
            await line.open()
            try:
                with pytest.raises(DecodeError) as error:
                    await read(line, unit=1)
                assert error.value.fault == "wrong_unit"
                assert list(await read(line, unit=2)) == registers(2, 0, 2)
            finally:
                await line.close()
            assert line.faults(1) == {"wrong_unit": 1}
            assert line.faults(2) == {}

    run(main())


# --- timing ----------------------------------------------------------------------------------


def test_the_deadline_allows_for_a_long_answers_wire_time() -> None:
    """125 registers at 9600 baud are 292 ms on the wire: a 0.1 s response timeout (the time to
    start answering) must not cut them off (issue 15: LineUnit ignored the answer's wire time)."""
    peer = HostileLine(units={1: HostileUnit()}, baudrate=9600)
    request = ReadRequest(kind=RegisterKind.INPUT, address=0, count=125, points=())

    async def main() -> tuple[int, ...]:
        async with peer:
            line = ModbusLine(settings=SerialSettings(port=peer.path, baudrate=9600))
            unit = LineUnit(line=line, unit_id=1, response_timeout=0.1)
            await unit.open()
            try:
                return await unit.read(request)
            finally:
                await unit.close()

    assert wire_time(255, 9600) > 0.29
    assert list(run(main())) == registers(1, 0, 125)


@pytest.mark.parametrize(("pause", "fault"), [(0.0, None), (0.1, "truncated")])
def test_a_frame_is_truncated_only_after_its_missing_bytes_wire_time(
    pause: float, fault: str | None
) -> None:
    """At 2400 baud the second half of a 40-register answer takes 0.18 s to arrive: it is waited
    for; a 100 ms silence inside the frame on top is not (and its tail spoils nothing)."""
    peer = HostileLine(
        units={1: HostileUnit(script=script(["pause"])), 2: HostileUnit()},
        baudrate=2400,
        pause_inside=pause,
    )

    async def main() -> None:
        async with peer:
            line = ModbusLine(settings=SerialSettings(port=peer.path, baudrate=2400))
            await line.open()
            try:
                if fault is None:
                    assert list(await read(line, 40, wait=0.2)) == registers(1, 0, 40)
                else:
                    with pytest.raises(DecodeError) as error:
                        await read(line, 40, wait=0.2)
                    assert error.value.fault == fault
                # The neighbour's transaction right after is clean whatever the tail does.
                assert list(await read(line, unit=2)) == registers(2, 0, 2)
            finally:
                await line.close()
            assert line.faults(1) == ({} if fault is None else {fault: 1})
            assert line.faults(2) == {}

    run(main())


# --- RS-485 adapters: echo -------------------------------------------------------------------


def test_local_echo_is_read_back_and_checked_byte_for_byte() -> None:
    peer = HostileLine(units={1: HostileUnit()}, baudrate=9600, echo=True)

    async def main() -> None:
        async with peer:
            settings = SerialSettings(port=peer.path, baudrate=9600, echo=True)
            line = ModbusLine(settings=settings)
            await line.open()
            try:
                assert list(await read(line)) == registers(1, 0, 2)
                peer.corrupt_next_echo()  # a collision while we send
                with pytest.raises(DecodeError) as error:
                    await read(line)
                assert error.value.fault == "echo"
                values = await read(line)
            finally:
                await line.close()
            # The unit got the request intact and answered it: that answer is stale now, and
            # a sync read comes before the next request of its shape.
            assert line.faults(1) == {"echo": 1, "stale": 1}
            assert line.counters()["noise_bytes"] == 0  # the echo is ours, not noise
            assert list(values) == registers(4, 0, 2)

    run(main())
    assert shapes(peer) == [(0, 2, "ok"), (0, 2, "ok"), (0, 1, "ok"), (0, 2, "ok")]


def test_echo_expected_from_an_adapter_that_does_not_echo_is_an_echo_fault() -> None:
    peer = HostileLine(units={1: HostileUnit(script=[Action("exception", 2)])}, baudrate=9600)

    async def main() -> None:
        async with peer:
            settings = SerialSettings(port=peer.path, baudrate=9600, echo=True)
            line = ModbusLine(settings=settings)
            await line.open()
            try:
                with pytest.raises(DecodeError) as error:
                    await read(line, wait=0.1)
            finally:
                await line.close()
            assert error.value.fault == "echo"
            assert line.faults(1) == {"echo": 1}

    run(main())


# --- RS-485 adapters: RTS direction control --------------------------------------------------


@pytest.mark.parametrize("invert", [False, True])
def test_software_rts_drives_the_transceiver_around_each_request(invert: bool) -> None:
    """A MAX485 board with DE and /RE on RTS: the request reaches the bus only if RTS is at the
    transmit level for its whole wire time, the answer only if RTS is back before it starts.
    The PTY cannot carry RTS, so the port records it (`RtsRecordingPort`); everything else is
    the real line, pyserial and PTY."""
    model = Transceiver(tx_level=not invert)
    peer = HostileLine(units={1: HostileUnit()}, baudrate=9600, transceiver=model)

    async def main() -> list[tuple[int, ...]]:
        async with peer:
            settings = SerialSettings(
                port=peer.path, baudrate=9600, rts="software", rts_invert=invert
            )
            line = ModbusLine(settings=settings, opener=recording_opener(model))
            await line.open()
            try:
                return [await read(line) for _ in range(5)]
            finally:
                await line.close()

    got = run(main())
    assert [list(g) for g in got] == [registers(s, 0, 2) for s in range(1, 6)]
    assert (model.lost_requests, model.collisions) == (0, 0)
    # Every write: RTS at the transmit level before it, back to receive after its wire time.
    events = model.events
    writes = [i for i, (_, what, _) in enumerate(events) if what == "write"]
    assert len(writes) == 5
    on_wire = wire_time(8, 9600)
    for i in writes:
        before = [e for e in events[:i] if e[1] == "rts"][-1]
        after = next(e for e in events[i:] if e[1] == "rts")
        assert before[2] is (not invert)
        assert after[2] is invert
        assert after[0] >= events[i][0] + on_wire


def test_without_direction_control_the_same_transceiver_loses_every_answer() -> None:
    """The control case: pyserial leaves RTS asserted, the board keeps driving the bus, and the
    unit's answers collide with it. This is what the software test above proves it avoids."""
    model = Transceiver()
    peer = HostileLine(units={1: HostileUnit()}, baudrate=9600, transceiver=model)

    async def main() -> None:
        async with peer:
            settings = SerialSettings(port=peer.path, baudrate=9600, rts="none")
            line = ModbusLine(settings=settings, opener=recording_opener(model))
            await line.open()
            try:
                with pytest.raises(DeviceTimeout):
                    await read(line, wait=0.1)
            finally:
                await line.close()

    run(main())
    assert model.collisions == 1


@pytest.mark.parametrize("echo", [False, True])
def test_kernel_rts_hands_the_rs485_settings_to_the_serial_driver(echo: bool) -> None:
    model = Transceiver()
    ports: list[RtsRecordingPort] = []
    peer = HostileLine(units={1: HostileUnit()}, baudrate=9600)

    async def main() -> None:
        async with peer:
            settings = SerialSettings(port=peer.path, baudrate=9600, rts="kernel", echo=echo)
            line = ModbusLine(settings=settings, opener=recording_opener(model, ports))
            await line.open()
            await line.close()

    run(main())
    (applied,) = ports[0].rs485_applied
    assert (applied.rts_level_for_tx, applied.rts_level_for_rx) == (True, False)
    assert applied.loopback is echo  # the driver's "receive during transmit" is the echo


@pytest.mark.parametrize("rts", ["kernel", "software"])
def test_rts_control_on_a_port_without_it_fails_to_open_with_the_reason(rts: RtsControl) -> None:
    """A PTY has no RTS line and no TIOCSRS485: the line says so instead of sending blind."""
    peer = HostileLine(units={1: HostileUnit()})

    async def main() -> None:
        async with peer:
            line = ModbusLine(settings=SerialSettings(port=peer.path, rts=rts))
            with pytest.raises(DeviceTimeout, match=f"rts = '{rts}' is not supported"):
                await line.open()

    run(main())


def test_the_recorded_register_encoding_traces_values() -> None:
    """The peer's encoding itself: a float32 point decodes to serial * 1000 + address."""
    words = registers(17, 342, 2)
    (value,) = struct.unpack(">f", struct.pack(">HH", *words))
    assert value == 17_342.0


# --- RTU over TCP ----------------------------------------------------------------------------


async def tcp_converter(serial_path: str) -> asyncio.Server:
    """A transparent serial-to-Ethernet converter: one TCP client's bytes to the serial line
    (the peer's PTY) and back, unchanged, as they come."""
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fd = os.open(serial_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        loop.add_reader(fd, lambda: writer.write(os.read(fd, 4096)))
        try:
            while data := await reader.read(4096):
                os.write(fd, data)
        finally:
            loop.remove_reader(fd)
            os.close(fd)
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_rtu_over_tcp_gets_the_same_validation_and_sync_reads() -> None:
    """Through a converter the line has no baud rate (no gap, no wire-time bound), but a late
    answer is still told from the real one by the sync read, and noise is still skipped."""
    peer = HostileLine(
        units={
            1: HostileUnit(script=[Action("late", 0.5), Action("noise")], plan=frozenset({(0, 2)})),
            2: HostileUnit(),
        }
    )

    async def main() -> list[tuple[int, ...]]:
        async with peer:
            server = await tcp_converter(peer.path)
            port = server.sockets[0].getsockname()[1]
            line = ModbusLine(
                settings=SerialSettings(port=f"socket://127.0.0.1:{port}", baudrate=None)
            )
            await line.open()
            try:
                with pytest.raises(DeviceTimeout):
                    await read(line)
                got = [await read(line), await read(line, unit=2), await read(line)]
            finally:
                await line.close()
                server.close()
                await server.wait_closed()
            assert line.faults(1) == {"timeout": 1, "stale": 1}
            assert line.faults(2) == {}
            counters = line.counters()
            assert counters["noise_bytes"] + counters["discarded_bytes"] >= peer.noise_bytes > 0
            return got

    got = run(main())
    # 1 late, 2 the sync read, 3 the real read (its answer followed by noise), 4 unit 2, 5 unit 1.
    assert shapes(peer)[:3] == [(0, 2, "late"), (0, 1, "ok"), (0, 2, "noise")]
    assert [list(g) for g in got] == [registers(3, 0, 2), registers(4, 0, 2), registers(5, 0, 2)]
