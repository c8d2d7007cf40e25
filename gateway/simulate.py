"""``gateway run --simulate``: simulators for every configured device, in this process.

The configuration is rewritten only where it addresses hardware: Modbus TCP endpoints point at the
simulators' ephemeral loopback ports, Modbus RTU serial ports at the slave side of a PTY pair
served by a baud-timed line simulator, and I2C buses resolve to in-process simulated buses. Drivers,
scheduler, buffer and MQTT run exactly as on a real site.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.config import (
    GatewayConfig,
    ModbusDevice,
    Pmsa003iDevice,
    RtuOverTcpTransport,
    RtuTransport,
    Scd4xDevice,
    SunSpecDevice,
    TcpTransport,
)
from gateway.errors import ConfigError
from gateway.registry import BusRegistry
from simulators.site import I2CBusSpec, ModbusServerSpec, RtuLineSpec, SimulatedSite, SiteSpec


def site_spec(config: GatewayConfig) -> SiteSpec:
    """What to simulate for ``config``'s enabled devices."""
    modbus: dict[tuple[str, int], dict[int, tuple[str, str]]] = {}
    i2c: dict[str, dict[int, tuple[str, str]]] = {}
    rtu: dict[str, tuple[int, dict[int, tuple[str, str]]]] = {}
    for device in config.enabled_devices():
        if isinstance(device, ModbusDevice | SunSpecDevice):
            # A SunSpec device is served by the simulated inverter, a profile by its meter model.
            model = device.profile if isinstance(device, ModbusDevice) else "sunspec"
            if model is None:
                raise ConfigError(
                    f"device {device.id}: a user-declared point table cannot be simulated; "
                    "use a shipped profile or disable the device for --simulate"
                )
            transport = device.transport
            if isinstance(transport, RtuTransport):
                rtu.setdefault(transport.port, (transport.baudrate, {}))[1][device.unit_id] = (
                    device.id,
                    model,
                )
                continue
            if isinstance(transport, RtuOverTcpTransport):
                raise ConfigError(f"device {device.id}: rtu-over-tcp cannot be simulated yet")
            key = (transport.host, transport.port)
            modbus.setdefault(key, {})[device.unit_id] = (device.id, model)
        elif isinstance(device, Scd4xDevice | Pmsa003iDevice):
            i2c.setdefault(device.bus, {})[device.address] = (device.id, device.driver)
    return SiteSpec(
        modbus=tuple(ModbusServerSpec(host=h, port=p, units=u) for (h, p), u in modbus.items()),
        i2c=tuple(I2CBusSpec(name=name, chips=chips) for name, chips in i2c.items()),
        rtu=tuple(
            RtuLineSpec(port=port, baudrate=baud, units=units)
            for port, (baud, units) in rtu.items()
        ),
    )


def redirect(config: GatewayConfig, site: SimulatedSite) -> GatewayConfig:
    """``config`` with every enabled Modbus device pointed at ``site``'s simulators (I2C devices
    need no change: their bus names resolve to the site's simulated buses). Raises `ConfigError`
    for a device the site does not simulate (one added by a reload, say)."""
    devices: list[ModbusDevice | SunSpecDevice | Scd4xDevice | Pmsa003iDevice] = []
    for device in config.devices:
        if (
            isinstance(device, ModbusDevice)
            and device.enabled
            and isinstance(device.transport, RtuTransport)
        ):
            # The gateway opens the PTY slave exactly as it would open /dev/ttyUSB0.
            pty = site.rtu_paths.get(device.transport.port)
            if pty is None:
                raise ConfigError(
                    f"device {device.id}: no simulator serves {device.transport.port}"
                )
            serial_line = device.transport.model_copy(update={"port": pty})
            devices.append(device.model_copy(update={"transport": serial_line}))
        elif (
            isinstance(device, ModbusDevice | SunSpecDevice)
            and device.enabled
            and isinstance(device.transport, TcpTransport)
        ):
            port = site.modbus_ports.get((device.transport.host, device.transport.port))
            if port is None:
                raise ConfigError(
                    f"device {device.id}: no simulator serves "
                    f"{device.transport.host}:{device.transport.port}"
                )
            transport = device.transport.model_copy(update={"host": "127.0.0.1", "port": port})
            devices.append(device.model_copy(update={"transport": transport}))
        else:
            devices.append(device)
    return config.model_copy(update={"devices": devices})


@asynccontextmanager
async def simulated(
    config: GatewayConfig,
) -> AsyncIterator[tuple[GatewayConfig, BusRegistry, SimulatedSite]]:
    """Start the simulators; yield the redirected config, the buses to use, and the site."""
    site = SimulatedSite(site_spec(config))
    await site.start(ephemeral=True)
    try:
        yield redirect(config, site), BusRegistry(buses=dict(site.i2c_buses)), site
    finally:
        await site.stop()
