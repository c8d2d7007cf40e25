"""`BusRegistry.modbus_line`: the RS-485 adapter settings of the configuration reach the line."""

from __future__ import annotations

from gateway.config import RtuOverTcpTransport, RtuTransport
from gateway.registry import BusRegistry


def test_every_rtu_setting_reaches_the_one_line_of_its_port() -> None:
    buses = BusRegistry()
    transport = RtuTransport.model_validate(
        {
            "kind": "rtu",
            "port": "/dev/ttyUSB0",
            "baudrate": 19200,
            "parity": "E",
            "pause": 0.05,
            "echo": True,
            "rts": "software",
            "rts_invert": True,
        }
    )
    line = buses.modbus_line(transport)
    assert buses.modbus_line(transport) is line
    s = line.settings
    assert (s.port, s.baudrate, s.parity, s.echo, s.rts, s.rts_invert) == (
        "/dev/ttyUSB0",
        19200,
        "E",
        True,
        "software",
        True,
    )
    assert line.pause == 0.05


def test_adapter_settings_default_to_an_auto_direction_adapter_without_echo() -> None:
    transport = RtuTransport.model_validate({"kind": "rtu", "port": "/dev/ttyUSB1"})
    s = BusRegistry().modbus_line(transport).settings
    assert (s.echo, s.rts, s.rts_invert) == (False, "none", False)
    over_tcp = RtuOverTcpTransport.model_validate(
        {"kind": "rtu-over-tcp", "host": "10.0.0.5", "port": 4001}
    )
    s = BusRegistry().modbus_line(over_tcp).settings
    assert (s.port, s.baudrate, s.echo, s.rts) == ("socket://10.0.0.5:4001", None, False, "none")
