"""``gateway run --simulate``: simulators for every configured device, in this process.

The configuration is rewritten only where it addresses hardware: Modbus TCP endpoints point at the
simulators' ephemeral loopback ports, and I2C buses resolve to in-process simulated buses. Drivers,
scheduler, buffer and MQTT run exactly as on a real site.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.config import GatewayConfig, ModbusDevice, Scd4xDevice
from gateway.registry import BusRegistry
from simulators.site import I2CBusSpec, ModbusServerSpec, SimulatedSite, SiteSpec


def site_spec(config: GatewayConfig) -> SiteSpec:
    """What to simulate for ``config``'s enabled devices."""
    modbus: dict[tuple[str, int], dict[int, tuple[str, str]]] = {}
    i2c: dict[str, dict[int, tuple[str, str]]] = {}
    for device in config.enabled_devices():
        if isinstance(device, ModbusDevice):
            key = (device.transport.host, device.transport.port)
            modbus.setdefault(key, {})[device.unit_id] = (device.id, device.profile)
        elif isinstance(device, Scd4xDevice):
            i2c.setdefault(device.bus, {})[device.address] = (device.id, device.driver)
    return SiteSpec(
        modbus=tuple(ModbusServerSpec(host=h, port=p, units=u) for (h, p), u in modbus.items()),
        i2c=tuple(I2CBusSpec(name=name, chips=chips) for name, chips in i2c.items()),
    )


@asynccontextmanager
async def simulated(
    config: GatewayConfig,
) -> AsyncIterator[tuple[GatewayConfig, BusRegistry, SimulatedSite]]:
    """Start the simulators; yield the redirected config, the buses to use, and the site."""
    site = SimulatedSite(site_spec(config))
    await site.start(ephemeral=True)
    try:
        devices: list[ModbusDevice | Scd4xDevice] = []
        for device in config.devices:
            if isinstance(device, ModbusDevice) and device.enabled:
                port = site.modbus_ports[(device.transport.host, device.transport.port)]
                transport = device.transport.model_copy(update={"host": "127.0.0.1", "port": port})
                devices.append(device.model_copy(update={"transport": transport}))
            else:
                devices.append(device)
        yield (
            config.model_copy(update={"devices": devices}),
            BusRegistry(buses=dict(site.i2c_buses)),
            site,
        )
    finally:
        await site.stop()
