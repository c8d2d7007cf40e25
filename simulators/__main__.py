"""``python -m simulators --config FILE``: serve a configuration's devices until interrupted.

Reads the gateway's TOML on its own (simulators import nothing from the gateway core), binds every
Modbus TCP endpoint on its configured loopback port and serves every ``tcp://`` I2C bus, so that a
gateway in another process can be killed and restarted while the devices keep running. A Modbus RTU
line is served on a PTY pair, with a symlink at the configured port (which must be under /tmp/)
pointing to the PTY's slave side; the symlink is removed on exit. Devices on real hardware
addresses (``/dev/i2c-N``, ``/dev/tty*``, non-loopback hosts) are refused with a clear message.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

from simulators.site import (
    CHIP_ADDRESSES,
    CHIP_MODELS,
    I2CBusSpec,
    ModbusServerSpec,
    RtuLineSpec,
    SimulatedSite,
    SiteSpec,
)

log = logging.getLogger("simulators")


class SpecError(ValueError):
    """The configuration cannot be simulated; the message says which device and why."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def spec_from_toml(data: dict[str, Any]) -> SiteSpec:
    """The simulators for the enabled devices of a gateway configuration (as parsed TOML)."""
    modbus: dict[tuple[str, int], dict[int, tuple[str, str]]] = {}
    i2c: dict[str, dict[int, tuple[str, str]]] = {}
    rtu: dict[str, tuple[int, dict[int, tuple[str, str]]]] = {}
    for index, device in enumerate(data.get("devices", [])):
        if not device.get("enabled", True):
            continue
        where = f"devices[{index}] ({device.get('id', '?')})"
        driver = device.get("driver")
        if driver == "modbus" and device.get("transport", {}).get("kind") == "rtu":
            _add_rtu_unit(rtu, device, where)
        elif driver in ("modbus", "sunspec"):
            transport = device.get("transport", {})
            host, port = transport.get("host", ""), int(transport.get("port", 502))
            if transport.get("kind") != "tcp" or not _loopback(host):
                raise SpecError(f"{where}: only Modbus TCP on a loopback host can be simulated")
            units = modbus.setdefault((host, port), {})
            if driver == "modbus" and "profile" not in device:
                raise SpecError(f"{where}: a user-declared point table cannot be simulated")
            model = device["profile"] if driver == "modbus" else "sunspec"
            units[int(device.get("unit_id", 1))] = (device["id"], model)
        elif driver in CHIP_MODELS:
            bus = str(device.get("bus", "/dev/i2c-1"))
            if not bus.startswith("tcp://"):
                raise SpecError(f"{where}: bus {bus!r} is hardware; use tcp://127.0.0.1:PORT")
            address = int(device.get("address", CHIP_ADDRESSES[driver]))
            i2c.setdefault(bus, {})[address] = (device["id"], driver)
        else:
            raise SpecError(f"{where}: no simulator for driver {driver!r}")
    buses = []
    for name, chips in i2c.items():
        host, _, port = name.removeprefix("tcp://").rpartition(":")
        if not _loopback(host):
            raise SpecError(f"I2C bus {name}: simulated buses are served on loopback only")
        buses.append(I2CBusSpec(name=name, chips=chips, serve=(host, int(port))))
    return SiteSpec(
        modbus=tuple(ModbusServerSpec(host=h, port=p, units=u) for (h, p), u in modbus.items()),
        i2c=tuple(buses),
        rtu=tuple(
            RtuLineSpec(port=port, baudrate=baud, units=units, link=True)
            for port, (baud, units) in rtu.items()
        ),
    )


def _add_rtu_unit(
    rtu: dict[str, tuple[int, dict[int, tuple[str, str]]]], device: dict[str, Any], where: str
) -> None:
    """An RTU device: its line is served on a PTY, symlinked at the configured port, which must
    therefore be under /tmp (a simulator never touches /dev)."""
    transport = device["transport"]
    port = str(transport.get("port", ""))
    if not port.startswith("/tmp/"):
        raise SpecError(
            f"{where}: serial port {port!r} is hardware; a simulated line needs a path under "
            "/tmp/ (a symlink to the simulator's PTY is made there)"
        )
    if "profile" not in device:
        raise SpecError(f"{where}: a user-declared point table cannot be simulated")
    baud, units = rtu.setdefault(port, (int(transport.get("baudrate", 9600)), {}))
    if int(transport.get("baudrate", 9600)) != baud:
        raise SpecError(f"{where}: devices on {port} disagree on the baud rate")
    units[int(device.get("unit_id", 1))] = (device["id"], device["profile"])


async def _serve(spec: SiteSpec, ready_file: Path | None) -> None:
    site = SimulatedSite(spec)
    await site.start(ephemeral=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving %d simulated devices; Ctrl-C to stop", len(site.models))
    if ready_file is not None:
        await asyncio.to_thread(ready_file.write_text, "ready\n")
    try:
        await stop.wait()
    finally:
        await site.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit code 2 for a configuration that cannot be simulated."""
    parser = argparse.ArgumentParser(
        prog="python -m simulators", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, help="written once every simulator listens")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    logging.getLogger("pymodbus").setLevel(logging.WARNING)
    try:
        spec = spec_from_toml(tomllib.loads(args.config.read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError, SpecError, KeyError, ValueError) as exc:
        print(f"simulators: {args.config}: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(spec, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
