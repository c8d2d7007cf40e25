"""``python -m simulators --config FILE``: serve a configuration's devices until interrupted.

Reads the gateway's TOML on its own (simulators import nothing from the gateway core), binds every
Modbus TCP endpoint on its configured loopback port and serves every ``tcp://`` I2C bus, so that a
gateway in another process can be killed and restarted while the devices keep running. Devices on
real hardware addresses (``/dev/i2c-N``, non-loopback hosts) are refused with a clear message.
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

from simulators.site import CHIP_MODELS, I2CBusSpec, ModbusServerSpec, SimulatedSite, SiteSpec

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
    for index, device in enumerate(data.get("devices", [])):
        if not device.get("enabled", True):
            continue
        where = f"devices[{index}] ({device.get('id', '?')})"
        driver = device.get("driver")
        if driver == "modbus":
            transport = device.get("transport", {})
            host, port = transport.get("host", ""), int(transport.get("port", 502))
            if transport.get("kind") != "tcp" or not _loopback(host):
                raise SpecError(f"{where}: only Modbus TCP on a loopback host can be simulated")
            units = modbus.setdefault((host, port), {})
            units[int(device.get("unit_id", 1))] = (device["id"], device["profile"])
        elif driver in CHIP_MODELS:
            bus = str(device.get("bus", "/dev/i2c-1"))
            if not bus.startswith("tcp://"):
                raise SpecError(f"{where}: bus {bus!r} is hardware; use tcp://127.0.0.1:PORT")
            i2c.setdefault(bus, {})[int(device.get("address", 0x62))] = (device["id"], driver)
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
    )


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
