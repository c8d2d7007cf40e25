"""``gateway scan --serial`` against the baud-timed RTU simulator on a real PTY pair.

Acceptance 5 (serial part): the scan finds every simulated device on the line with its unit id
and baud rate, finds nothing at a baud rate nobody uses, and prints a snippet that is itself a
valid configuration. A PTY carries bytes whatever the speed, so the simulator models a baud
mismatch honestly: it reads the speed pyserial set on the PTY (termios) and ignores requests
sent at another rate, as a real unit hearing only framing errors would.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest

from drivers.modbus.line import LineRegisters, ModbusLine, SerialSettings
from drivers.modbus.profiles import RegisterKind
from gateway import cli
from gateway.commission import Found, parse_bauds, serial_snippet
from gateway.config import ModbusDevice, RtuTransport, parse_config
from gateway.errors import DeviceTimeout
from simulators.meters import ModbusDeviceModel, Sdm120Meter, Sdm630Meter, Tuf2000mWaterMeter
from simulators.modbus_rtu import ModbusRtuSimulator
from tests.gateway.test_commission import served_in_thread

#: A weekday noon in June: meters and water busy, deterministic values.
NOON = 1_718_021_600.0
LINE_BAUD = 19200


def line_devices() -> dict[int, ModbusDeviceModel]:
    clock = lambda: NOON  # noqa: E731 - a fixed instant
    return {
        1: Sdm630Meter(seed=1, clock=clock),
        5: Sdm120Meter(seed=5, clock=clock),
        9: Tuf2000mWaterMeter(seed=9, clock=clock),
    }


@contextmanager
def rtu_line_thread(
    devices: Mapping[int, ModbusDeviceModel], baudrate: int
) -> Iterator[ModbusRtuSimulator]:
    """Serve ``devices`` as one RS-485 line on a PTY from a background thread."""
    simulator = ModbusRtuSimulator(devices=devices, baudrate=baudrate, turnaround=0.005)
    with served_in_thread(simulator):
        yield simulator


def test_gateway_scan_serial_finds_every_unit_at_its_baud_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with rtu_line_thread(line_devices(), LINE_BAUD) as sim:
        started = time.monotonic()
        code = cli.main(["scan", "--serial", sim.path, "--bauds", "9600,19200", "--units", "1-10"])
        elapsed = time.monotonic() - started
        # Nothing was understood at 9600: every request then was noise to the units.
        assert sim.wrong_speed_requests >= 10
        assert sim.bad_requests == 0
    out, err = capsys.readouterr()
    assert code == 0, err
    # Progress: every unit at every baud rate, in order.
    assert err.count(f"scan {sim.path} @ 9600: unit") == 10
    assert err.count(f"scan {sim.path} @ 19200: unit") == 10
    assert f"scan {sim.path} @ 9600: unit   1 (1/10): no answer" in err
    assert f"scan {sim.path} @ 19200: unit   1 (1/10): sdm630" in err
    assert f"scan {sim.path} @ 19200: unit   5 (5/10): sdm120" in err
    assert f"scan {sim.path} @ 19200: unit   9 (9/10): tuf2000m" in err
    assert f"scan {sim.path} @ 19200: unit  10 (10/10): no answer" in err
    # The snippet is a valid configuration: three devices on one line at the found baud rate.
    config = parse_config(tomllib.loads('[site]\nid = "kg"\n' + out), source="scan output")
    devices = [d for d in config.devices if isinstance(d, ModbusDevice)]
    assert {d.unit_id: (d.id, d.profile) for d in devices} == {
        1: ("unit-1-sdm630", "sdm630"),
        5: ("unit-5-sdm120", "sdm120"),
        9: ("unit-9-tuf2000m", "tuf2000m"),
    }
    transports = [d.transport for d in devices]
    assert all(isinstance(t, RtuTransport) for t in transports)
    assert {(t.port, t.baudrate, t.parity) for t in transports} == {  # type: ignore[union-attr]
        (sim.path, LINE_BAUD, "N")
    }
    # 13 silent probes of 0.15 s plus the three identifications.
    assert elapsed < 15, f"scan took {elapsed:.1f} s"


def test_simulator_answers_only_a_master_at_its_baud_rate() -> None:
    async def read_at(sim: ModbusRtuSimulator, baud: int) -> list[int]:
        line = ModbusLine(settings=SerialSettings(port=sim.path, baudrate=baud))
        await line.open()
        try:
            reader = LineRegisters(line=line, response_timeout=0.2)
            return await reader.read(RegisterKind.INPUT, 0, 2, unit_id=1)
        finally:
            await line.close()

    async def main() -> None:
        async with ModbusRtuSimulator(devices=line_devices(), baudrate=LINE_BAUD) as sim:
            with pytest.raises(DeviceTimeout, match="no answer"):
                await read_at(sim, 9600)
            assert sim.wrong_speed_requests == 1
            assert sim.request_count(1) == 0
            assert len(await read_at(sim, LINE_BAUD)) == 2
            assert sim.request_count(1) == 1
            with pytest.raises(DeviceTimeout):
                await read_at(sim, 38400)
            assert sim.wrong_speed_requests == 2

    asyncio.run(main())


def test_long_answers_get_their_wire_time_on_top_of_the_probe_timeout() -> None:
    # The TUF-2000M probe reads 118 registers: 241 bytes, 138 ms on the wire at 19200 baud,
    # almost the whole probe timeout. The reader allows for it, so the unit is not lost.
    async def main() -> None:
        async with ModbusRtuSimulator(devices=line_devices(), baudrate=LINE_BAUD) as sim:
            line = ModbusLine(settings=SerialSettings(port=sim.path, baudrate=LINE_BAUD))
            await line.open()
            try:
                reader = LineRegisters(line=line, response_timeout=0.05)
                words = await reader.read(RegisterKind.HOLDING, 0, 118, unit_id=9)
            finally:
                await line.close()
            assert len(words) == 118

    asyncio.run(main())


def test_serial_snippet_keeps_one_baud_rate_live() -> None:
    found = {
        9600: [Found(unit_id=3, driver="modbus", profile="sdm120", note="x")],
        4800: [Found(unit_id=7, driver="sunspec", models=(1, 103))],
        19200: [
            Found(unit_id=1, driver="modbus", profile="sdm630", note="x"),
            Found(unit_id=2, driver="modbus", profile="sdm72", note="x"),
        ],
    }
    text = serial_snippet("/dev/ttyUSB0", "E", found)
    config = parse_config(tomllib.loads('[site]\nid = "kg"\n' + text), source="snippet")
    assert [(d.id, d.transport.baudrate) for d in config.devices] == [  # type: ignore[union-attr]
        ("unit-1-sdm630", 19200),
        ("unit-2-sdm72", 19200),
    ]
    assert "# At 9600 baud, not 19200: move these devices to 19200 baud first." in text
    assert '# profile = "sdm120"' in text
    # The sunspec driver is TCP only: a SunSpec unit on a serial line is one to declare.
    assert "unit 7 is SunSpec (models 1, 103), which the gateway reads over TCP only" in text


def test_parse_bauds() -> None:
    assert parse_bauds("9600, 19200,9600") == [9600, 19200]
    with pytest.raises(ValueError, match="among 1200"):
        parse_bauds("9600,14400")
    with pytest.raises(ValueError, match="'fast'"):
        parse_bauds("fast")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--serial", "/dev/ttyUSB0", "--bauds", "9601"], "error: --bauds: baud rates must be"),
        (["--serial", "ttyUSB0"], "error: --serial: expected an absolute path"),
        (["--serial", "/dev/ttyUSB0", "--timeout", "0"], "error: --timeout"),
    ],
)
def test_gateway_scan_serial_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["scan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_gateway_scan_serial_on_a_missing_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["scan", "--serial", "/dev/nonexistent-rs485", "--bauds", "9600"]) == 1
    assert "cannot open the port" in capsys.readouterr().err
