"""Driver name -> how to build the driver from its (validated) configuration.

An explicit dict, no import-time registration: adding a device type means adding its config model
in `gateway.config` and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.base import Driver
from drivers.modbus.driver import ModbusTcpDriver
from drivers.modbus.profiles import load_profile
from drivers.sensors.i2c_bus import I2CBus, open_i2c_bus
from drivers.sensors.scd4x import Scd4xDriver
from gateway.config import ModbusDevice, Scd4xDevice


@dataclass
class BusRegistry:
    """Shares one bus object per I2C bus spec among the chips on it; simulations pre-seed ``buses``."""

    buses: dict[str, Any] = field(default_factory=dict)

    def i2c(self, spec: str) -> I2CBus:
        """The bus object for ``spec``, opened on first use."""
        if spec not in self.buses:
            self.buses[spec] = open_i2c_bus(spec)
        bus: I2CBus = self.buses[spec]
        return bus


def _modbus(device: ModbusDevice, buses: BusRegistry) -> Driver:
    return ModbusTcpDriver(
        host=device.transport.host,
        port=device.transport.port,
        unit_id=device.unit_id,
        profile=load_profile(device.profile),
        timeout=device.timeout,
    )


def _scd4x(device: Scd4xDevice, buses: BusRegistry) -> Driver:
    return Scd4xDriver(
        bus=buses.i2c(device.bus), address=device.address, low_power=device.low_power
    )


DRIVERS: dict[str, Callable[[Any, BusRegistry], Driver]] = {
    "modbus": _modbus,
    "scd4x": _scd4x,
}


def build_driver(device: ModbusDevice | Scd4xDevice, buses: BusRegistry) -> Driver:
    """The driver for ``device``."""
    return DRIVERS[device.driver](device, buses)
