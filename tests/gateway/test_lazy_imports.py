"""The daemon imports only what its configuration uses (issue 10: RSS on a Pi Zero).

A child process (fresh interpreter, nothing imported by the test runner) runs the real daemon on
a configuration until every bus task started, polled or failed its first attempt, then reports
which heavy packages it imported: for Modbus TCP devices only, none of Pillow, gpiozero, the
Adafruit/Blinka stack, pyserial or influxdb-client. The same check with an I2C canary device
proves that the check sees an import when there is one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.servers import free_port

CHILD = r"""
import asyncio, json, sys
from gateway.app import run_gateway
from gateway.config import load_config

async def main():
    stop = asyncio.Event()
    def started(runtime):
        async def all_started():
            await asyncio.gather(*(p.started.wait() for p in runtime.pollers))
            stop.set()
        asyncio.get_running_loop().create_task(all_started())
    await run_gateway(load_config(sys.argv[1]), stop=stop, started=started)

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""

HEAVY = ("PIL", "gpiozero", "adafruit", "busio", "board", "serial", "influxdb_client")


def config(tmp_path: Path, devices: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[site]
id = "kg"
[mqtt]
host = "127.0.0.1"
port = {free_port()}
[buffer]
path = "{tmp_path / "buffer.sqlite3"}"
{devices}
"""
    )
    return path


def heavy_imports(tmp_path: Path, devices: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(config(tmp_path, devices))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    return {h for h in HEAVY for m in modules if m == h or m.startswith((h + ".", h + "_"))}


def test_a_modbus_tcp_site_imports_no_display_i2c_serial_or_store_client(tmp_path: Path) -> None:
    devices = "".join(
        f"""
[[devices]]
id = "meter-{n}"
driver = "modbus"
profile = "sdm630"
unit_id = 1
interval = 1
transport = {{ kind = "tcp", host = "127.0.0.1", port = {free_port()} }}
"""
        for n in range(3)
    )
    assert heavy_imports(tmp_path, devices) == set()


def test_an_i2c_device_does_import_its_driver_stack(tmp_path: Path) -> None:
    devices = f"""
[[devices]]
id = "room-1"
driver = "scd4x"
bus = "tcp://127.0.0.1:{free_port()}"
interval = 5
"""
    found = heavy_imports(tmp_path, devices)
    assert "adafruit" in found
    assert not found & {"PIL", "gpiozero", "influxdb_client", "serial"}
