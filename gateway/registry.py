"""Driver name -> how to build the driver from its (validated) configuration.

An explicit dict, no import-time registration: adding a device type means adding its config model
in `gateway.config` and one entry here.

Each factory imports its driver when it is first called, not this module: a gateway imports only
what its configuration uses (the Adafruit/Blinka stack only with I2C devices, pyserial only with
an RS-485 line), which is most of its memory on a Pi Zero (docs/benchmarks.md).
"""

from __future__ import annotations

# Imports inside the factories below are on purpose (module docstring).
# ruff: noqa: PLC0415
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drivers.base import Driver
from gateway.config import (
    ModbusDevice,
    Pmsa003iDevice,
    RtuOverTcpTransport,
    RtuTransport,
    Scd4xDevice,
    SunSpecDevice,
    TcpTransport,
)
from gateway.deferred_i2c import DeferredI2C

if TYPE_CHECKING:
    from drivers.modbus.line import ModbusLine
    from drivers.modbus.tcp_client import ModbusTcpRegisters
    from drivers.sensors.i2c_bus import I2CBus


@dataclass
class BusRegistry:
    """Shares one bus object per physical bus among the devices on it: an I2C bus per bus spec,
    a `ModbusLine` per serial line, a `ModbusTcpRegisters` connection per Modbus TCP endpoint.
    Simulations pre-seed ``buses``."""

    buses: dict[str, Any] = field(default_factory=dict)

    def i2c(self, spec: str) -> I2CBus:
        """The bus object for ``spec``, opened on its first transaction (a missing bus is a
        failure of its devices, retried, not of the daemon: `gateway.deferred_i2c`)."""
        if spec not in self.buses:
            self.buses[spec] = DeferredI2C(spec)
        bus: I2CBus = self.buses[spec]
        return bus

    def modbus_line(self, transport: RtuTransport | RtuOverTcpTransport) -> ModbusLine:
        """The one `ModbusLine` of a serial line (keyed like the bus task), made on first use:
        every device on the line gets the same object, so they share its port, lock and gaps."""
        key = transport.line_key()
        if key not in self.buses:
            from drivers.modbus.line import ModbusLine, SerialSettings

            if isinstance(transport, RtuTransport):
                settings = SerialSettings(
                    port=transport.port,
                    baudrate=transport.baudrate,
                    parity=transport.parity,
                    stopbits=transport.stopbits,
                    bytesize=transport.bytesize,
                    echo=transport.echo,
                    rts=transport.rts,
                    rts_invert=transport.rts_invert,
                )
            else:
                url = f"socket://{transport.host}:{transport.port}"
                settings = SerialSettings(port=url, baudrate=None)
            self.buses[key] = ModbusLine(settings=settings, pause=transport.pause)
        line: ModbusLine = self.buses[key]
        return line

    def modbus_tcp(self, host: str, port: int, timeout: float) -> ModbusTcpRegisters:
        """The one connection to the Modbus TCP endpoint ``host``:``port``, made on first use:
        every unit behind it (profile and SunSpec devices alike) shares it, because many devices
        accept a single client and a TCP-to-RS-485 gateway serves one request at a time anyway.
        ``timeout`` bounds the connection attempt (the first device's value; each device passes
        its own request timeout on every read). Keyed like the bus task
        (`gateway.config.ModbusDevice.bus_key`), so the units are also polled in turn."""
        key = f"modbus-tcp://{host}:{port}"
        if key not in self.buses:
            from drivers.modbus.tcp_client import ModbusTcpRegisters

            self.buses[key] = ModbusTcpRegisters(host=host, port=port, timeout=timeout)
        registers: ModbusTcpRegisters = self.buses[key]
        return registers


def _modbus(device: ModbusDevice, buses: BusRegistry) -> Driver:
    from drivers.modbus.driver import ModbusTcpDriver
    from drivers.modbus.profiles import load_profile, profile_from_table

    profile = (
        load_profile(device.profile)
        if device.profile is not None
        else profile_from_table(device.id, device.point_table())
    )
    transport = device.transport
    if not isinstance(transport, TcpTransport):
        from drivers.modbus.engine import ModbusDriver
        from drivers.modbus.line import LineUnit

        reader = LineUnit(
            line=buses.modbus_line(transport),
            unit_id=device.unit_id,
            response_timeout=device.timeout,
        )
        return ModbusDriver(reader=reader, profile=profile, name=f"{device.id} ({reader!r})")
    return ModbusTcpDriver(
        registers=buses.modbus_tcp(transport.host, transport.port, device.timeout),
        unit_id=device.unit_id,
        profile=profile,
        timeout=device.timeout,
    )


def _sunspec(device: SunSpecDevice, buses: BusRegistry) -> Driver:
    from drivers.modbus.sunspec.driver import SunSpecTcpDriver

    transport = device.transport
    return SunSpecTcpDriver(
        registers=buses.modbus_tcp(transport.host, transport.port, device.timeout),
        unit_id=device.unit_id,
        timeout=device.timeout,
        models=device.models,
    )


def _scd4x(device: Scd4xDevice, buses: BusRegistry) -> Driver:
    from drivers.sensors.scd4x import Scd4xDriver
    from drivers.sensors.scd4x_settings import Scd4xSettings

    settings = Scd4xSettings(
        self_calibration=device.self_calibration,
        altitude_m=device.altitude_m,
        ambient_pressure_hpa=device.ambient_pressure_hpa,
        temperature_offset_c=device.temperature_offset_c,
    )
    return Scd4xDriver(
        bus=buses.i2c(device.bus),
        address=device.address,
        low_power=device.low_power,
        # Two measurement periods and a second: one missed measurement is not yet a fault.
        data_timeout=61.0 if device.low_power else 11.0,
        settings=settings,
        stuck_polls=device.stuck_polls,
    )


def _pmsa003i(device: Pmsa003iDevice, buses: BusRegistry) -> Driver:
    from drivers.sensors.pmsa003i import Pmsa003iDriver

    return Pmsa003iDriver(
        bus=buses.i2c(device.bus),
        address=device.address,
        warmup_s=device.warmup_s,
        stuck_polls=device.stuck_polls,
    )


DRIVERS: dict[str, Callable[[Any, BusRegistry], Driver]] = {
    "modbus": _modbus,
    "sunspec": _sunspec,
    "scd4x": _scd4x,
    "pmsa003i": _pmsa003i,
}


def build_driver(
    device: ModbusDevice | SunSpecDevice | Scd4xDevice | Pmsa003iDevice, buses: BusRegistry
) -> Driver:
    """The driver for ``device``."""
    return DRIVERS[device.driver](device, buses)
