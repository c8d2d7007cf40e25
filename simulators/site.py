"""A whole simulated site: every Modbus TCP server and I2C bus a configuration needs, started together.

Two entry points build a `SiteSpec`: the gateway's ``run --simulate`` (from its typed configuration,
on ephemeral loopback ports) and ``python -m simulators --config FILE`` (from the raw TOML, on the
configured ports, so a gateway in another process can be killed and restarted against it).

Each simulated device gets a seed derived from its id, so two runs of the same site serve the same
pattern of values and two meters of one site do not move in lockstep.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from simulators.i2c import SimI2CBus
from simulators.i2c_server import I2CBusServer
from simulators.meters import METER_MODELS
from simulators.modbus_rtu import ModbusRtuSimulator
from simulators.modbus_tcp import ModbusTcpSimulator
from simulators.pmsa003i import Pmsa003iChip
from simulators.scd4x import Scd4xChip
from simulators.sunspec import SunSpecInverter

log = logging.getLogger(__name__)

#: Chip models by the gateway's driver name.
CHIP_MODELS: dict[str, type[Scd4xChip] | type[Pmsa003iChip]] = {
    "scd4x": Scd4xChip,
    "pmsa003i": Pmsa003iChip,
}
#: Modbus device models by simulator name: the meter models by profile name, and "sunspec" for
#: the roof's PV inverter (a ``driver = "sunspec"`` device).
MODBUS_MODELS = {**METER_MODELS, "sunspec": SunSpecInverter}
#: Each chip model's fixed I2C address, the default when a configuration gives none.
CHIP_ADDRESSES = {"scd4x": 0x62, "pmsa003i": 0x12}


def seed_for(device_id: str) -> int:
    """A stable per-device seed."""
    return zlib.crc32(device_id.encode())


@dataclass(frozen=True)
class ModbusServerSpec:
    """One simulated Modbus TCP endpoint; ``units`` maps unit id -> (device id, model name)."""

    host: str
    port: int
    units: Mapping[int, tuple[str, str]]


@dataclass(frozen=True)
class I2CBusSpec:
    """One simulated I2C bus; ``chips`` maps address -> (device id, chip model name).

    ``serve`` is the (host, port) to expose the bus on for other processes, or None for a bus used
    only in this process.
    """

    name: str
    chips: Mapping[int, tuple[str, str]]
    serve: tuple[str, int] | None = None


@dataclass(frozen=True)
class RtuLineSpec:
    """One simulated RS-485 line on a PTY pair; ``units`` maps unit id -> (device id, model name).

    ``port`` is the configured serial port. With ``link`` (``python -m simulators``), a symlink is
    made at ``port`` pointing to the PTY, so a gateway in another process opens the configured
    path unchanged; otherwise the caller reads the PTY path from `SimulatedSite.rtu_paths`.
    """

    port: str
    baudrate: int | None
    units: Mapping[int, tuple[str, str]]
    link: bool = False
    turnaround: float = 0.010


@dataclass(frozen=True)
class SiteSpec:
    """Everything to simulate."""

    modbus: tuple[ModbusServerSpec, ...] = ()
    i2c: tuple[I2CBusSpec, ...] = ()
    rtu: tuple[RtuLineSpec, ...] = ()


@dataclass
class SimulatedSite:
    """Starts and stops the simulators of a `SiteSpec`; exposes where they ended up."""

    spec: SiteSpec
    #: (configured host, configured port) -> the port actually bound on 127.0.0.1.
    modbus_ports: dict[tuple[str, int], int] = field(default_factory=dict)
    #: bus name -> the in-process bus object.
    i2c_buses: dict[str, SimI2CBus] = field(default_factory=dict)
    #: bus name -> the port it is served on, for buses with ``serve``.
    i2c_ports: dict[str, int] = field(default_factory=dict)
    #: device id -> its model object (meter or chip), for tests and fault injection.
    models: dict[str, object] = field(default_factory=dict)
    #: configured serial port -> the PTY slave path the gateway opens.
    rtu_paths: dict[str, str] = field(default_factory=dict)
    #: configured serial port -> its line simulator, for fault injection.
    rtu_lines: dict[str, ModbusRtuSimulator] = field(default_factory=dict)
    _links: list[str] = field(default_factory=list)
    _modbus_servers: list[ModbusTcpSimulator] = field(default_factory=list)
    _i2c_servers: list[I2CBusServer] = field(default_factory=list)

    async def start(self, *, ephemeral: bool) -> None:
        """Start everything. With ``ephemeral``, Modbus servers bind free loopback ports instead of
        the configured ones (see `modbus_ports`)."""
        try:
            for server_spec in self.spec.modbus:
                await self._start_modbus(server_spec, ephemeral=ephemeral)
            for bus_spec in self.spec.i2c:
                await self._start_i2c(bus_spec)
            for line_spec in self.spec.rtu:
                await self._start_rtu(line_spec)
        except BaseException:
            await self.stop()
            raise

    async def _start_modbus(self, spec: ModbusServerSpec, *, ephemeral: bool) -> None:
        devices = {}
        for unit, (device_id, model_name) in spec.units.items():
            model = MODBUS_MODELS[model_name](seed=seed_for(device_id))
            self.models[device_id] = model
            devices[unit] = model
        server = ModbusTcpSimulator(
            host="127.0.0.1" if ephemeral else spec.host,
            port=0 if ephemeral else spec.port,
            devices=devices,
        )
        await server.start()
        self._modbus_servers.append(server)
        self.modbus_ports[(spec.host, spec.port)] = server.port
        log.info(
            "simulated Modbus TCP %s:%d (units %s) on port %d",
            spec.host,
            spec.port,
            sorted(spec.units),
            server.port,
        )

    async def _start_rtu(self, spec: RtuLineSpec) -> None:
        devices = {}
        for unit, (device_id, model_name) in spec.units.items():
            model = MODBUS_MODELS[model_name](seed=seed_for(device_id))
            self.models[device_id] = model
            devices[unit] = model
        line = ModbusRtuSimulator(
            devices=devices, baudrate=spec.baudrate, turnaround=spec.turnaround
        )
        await line.start()
        self.rtu_lines[spec.port] = line
        self.rtu_paths[spec.port] = line.path
        if spec.link:
            _replace_symlink(spec.port, line.path)
            self._links.append(spec.port)
        log.info(
            "simulated Modbus RTU line %s (units %s, %s baud) on %s",
            spec.port,
            sorted(spec.units),
            spec.baudrate,
            line.path,
        )

    async def _start_i2c(self, spec: I2CBusSpec) -> None:
        bus = SimI2CBus()
        for address, (device_id, chip_name) in spec.chips.items():
            chip = CHIP_MODELS[chip_name](seed=seed_for(device_id))
            self.models[device_id] = chip
            bus.attach(address, chip)
        self.i2c_buses[spec.name] = bus
        if spec.serve is not None:
            host, port = spec.serve
            server = I2CBusServer(bus=bus, host=host, port=port)
            await server.start()
            self._i2c_servers.append(server)
            self.i2c_ports[spec.name] = server.port
        log.info(
            "simulated I2C bus %s with chips at %s",
            spec.name,
            ", ".join(f"0x{a:02x}" for a in sorted(spec.chips)),
        )

    async def stop(self) -> None:
        """Stop whatever was started; safe to call twice."""
        for i2c_server in self._i2c_servers:
            await i2c_server.stop()
        for modbus_server in self._modbus_servers:
            await modbus_server.stop()
        self._i2c_servers.clear()
        self._modbus_servers.clear()
        for line in self.rtu_lines.values():
            await line.stop()
        self.rtu_lines.clear()
        _remove_symlinks(self._links)
        self._links.clear()


def _remove_symlinks(paths: list[str]) -> None:
    for path in paths:
        if os.path.islink(path):
            os.unlink(path)


def _replace_symlink(path: str, target: str) -> None:
    """Point the symlink ``path`` at ``target``; never replaces anything but a symlink."""
    if os.path.lexists(path) and not os.path.islink(path):
        raise FileExistsError(f"{path} exists and is not a symlink; refusing to replace it")
    if os.path.islink(path):
        os.unlink(path)
    os.symlink(target, path)
