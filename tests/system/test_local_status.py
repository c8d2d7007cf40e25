"""Issue 8, acceptance 6: a technician on site sees what the gateway is doing, uplink or not.

The simulated demo site (gateway/demo.toml, every device from its in-process simulator) runs in
this process against a real Mosquitto, with its status socket in tmp_path and the optional HTTP
endpoint on a free loopback port. `gateway status` runs as a separate process, as a technician
would run it; ``/metrics`` is parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import __version__
from gateway.app import GatewayRuntime, run_gateway
from gateway.config import GatewayConfig, load_config
from gateway.local import client
from gateway.model import Quality
from tests.servers import ServerProcess, free_port

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "gateway" / "demo.toml"


def demo_config(tmp_path: Path, *, broker: int, http: str = "") -> tuple[Path, GatewayConfig]:
    """gateway/demo.toml with its state in tmp_path, the PM sensors without their 30 s warm-up
    (so that every device has values within a few polls), and the clock trusted."""
    text = DEMO.read_text()
    for old, new, count in (
        ("port = 1883", f"port = {broker}", 1),
        ("/tmp/canary-gateway-demo/buffer.sqlite3", str(tmp_path / "buffer.sqlite3"), 1),
        ("/tmp/canary-gateway-demo/panels", str(tmp_path), 2),
        ("warmup_s = 30", "warmup_s = 0", 2),
    ):
        assert text.count(old) == count, f"gateway/demo.toml changed: {old!r}"
        text = text.replace(old, new)
    text += f"""
[clock]
sync = "none"

[local]
socket = "{tmp_path / "gateway.sock"}"
http = "{http}"
"""
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path, load_config(path)


def every_device_has_values(runtime: GatewayRuntime) -> bool:
    """Every polled device answered at least twice and has a good value of some metric, and the
    broker acknowledged something."""
    states = [s for p in runtime.pollers for s in p.devices]
    return runtime.publisher.link.last_puback is not None and all(
        s.polls >= 2 and any(r.quality is Quality.GOOD for r in runtime.latest.of(s.id))
        for s in states
    )


def run_site(
    config: GatewayConfig, body: Callable[[GatewayRuntime], Awaitable[None]]
) -> GatewayRuntime:
    """Run the simulated site until every device has values, then ``body``, then stop it."""

    async def scenario() -> GatewayRuntime:
        stop = asyncio.Event()
        runtimes: list[GatewayRuntime] = []
        task = asyncio.create_task(
            run_gateway(config, stop=stop, simulate=True, started=runtimes.append)
        )
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while not (runtimes and every_device_has_values(runtimes[0])):
                assert not task.done(), task
                assert asyncio.get_running_loop().time() < deadline, "devices never had values"
                await asyncio.sleep(0.05)
            await body(runtimes[0])
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task
        return runtimes[0]

    return asyncio.run(scenario())


def gateway_status(*args: str) -> subprocess.CompletedProcess[str]:
    """`gateway status ARGS` in a separate process, as a technician runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_gateway_status_shows_every_demo_device_with_values(
    tmp_path: Path, broker: ServerProcess
) -> None:
    path, config = demo_config(tmp_path, broker=broker.port)
    ids = [d.id for d in config.enabled_devices()]
    socket_path = tmp_path / "gateway.sock"
    seen: dict[str, Any] = {}

    async def look(runtime: GatewayRuntime) -> None:
        seen["mode"] = stat.S_IMODE(os.stat(socket_path).st_mode)
        seen["table"] = await asyncio.to_thread(gateway_status, "--config", str(path))
        seen["json"] = await asyncio.to_thread(gateway_status, "--config", str(path), "--json")

    run_site(config, look)

    assert seen["mode"] == 0o660
    assert not socket_path.exists(), "a clean stop removes the socket"
    table = seen["table"]
    assert table.returncode == 0, table.stderr
    out = table.stdout.splitlines()
    assert out[0].startswith("site     kg-sunflower")
    assert "health: ok" in out[1] and __version__ in out[1]
    assert out[2].startswith(f"broker   127.0.0.1:{broker.port} connected for "), out[2]
    assert "last PUBACK" in out[2]
    assert out[3] == "clock    synchronised"
    assert out[4].startswith("buffer   ") and "0 dropped" in out[4]
    assert out[5] == "alarms   none"

    snapshot = client.parse(seen["json"].stdout.encode())
    assert seen["json"].returncode == 0
    assert [d.id for d in snapshot.devices] == ids
    by_id = {d.id: d for d in snapshot.devices}
    for device_id in ids:
        (line,) = [row for row in out if row.startswith(device_id + " ")]
        device = by_id[device_id]
        assert device.driver in line and device.available and device.polls >= 2
        # The device's first metric with a numeric value, shown with its unit.
        first = next(v for v in device.values if isinstance(v.value, int | float))
        unit = "" if first.unit in ("", "1") else " " + re.escape(first.unit)
        assert re.search(rf"\b{first.metric} -?[\d.]+(e[+-]?\d+)?{unit}", line), (first, line)
        assert not device.last_error and device.consecutive_failures == 0
    assert snapshot.broker.connected and snapshot.broker.last_puback_age_s is not None
    assert snapshot.health.ok and snapshot.health.problems == []


def test_metrics_parse_and_hold_a_sample_per_demo_device(
    tmp_path: Path, broker: ServerProcess
) -> None:
    parser = pytest.importorskip("prometheus_client.parser", reason="the metrics extra")
    port = free_port()
    _path, config = demo_config(tmp_path, broker=broker.port, http=f"127.0.0.1:{port}")
    ids = {d.id for d in config.enabled_devices()}
    bodies: dict[str, str] = {}

    async def scrape(runtime: GatewayRuntime) -> None:
        def get(route: str) -> tuple[int, str, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=10) as answer:
                return answer.status, answer.headers["Content-Type"], answer.read().decode()

        status, content_type, bodies["http"] = await asyncio.to_thread(get, "/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=")
        code, body = await asyncio.to_thread(client.fetch, tmp_path / "gateway.sock", "/metrics")
        assert code == 200
        bodies["socket"] = body.decode()
        assert await asyncio.to_thread(get, "/healthz") == (
            200,
            "text/plain; charset=utf-8",
            "ok\n",
        )

    run_site(config, scrape)

    for where, text in bodies.items():
        families = {f.name: f for f in parser.text_string_to_metric_families(text)}
        expected = {
            "canary_build_info",
            "canary_uptime_seconds",
            "canary_healthy",
            "canary_device_up",
            "canary_device_polls",
            "canary_device_errors",
            "canary_device_faults",
            "canary_device_consecutive_failures",
            "canary_device_last_poll_age_seconds",
            "canary_value",
            "canary_bus_progress_age_seconds",
            "canary_line_events",
            "canary_buffer_pending_readings",
            "canary_buffer_unwritten_readings",
            "canary_buffer_dropped_readings",
            "canary_broker_connected",
            "canary_broker_last_puback_age_seconds",
            "canary_clock_synced",
            "canary_alarm_active",
        }
        assert expected <= set(families), (where, expected - set(families))
        (build,) = families["canary_build_info"].samples
        assert build.name == "canary_build_info" and build.value == 1
        assert build.labels == {"version": __version__, "site": "kg-sunflower"}
        assert families["canary_healthy"].samples[0].value == 1
        assert families["canary_broker_connected"].samples[0].value == 1
        polls = {s.labels["device"]: s for s in families["canary_device_polls"].samples}
        assert set(polls) == ids and all(s.value >= 2 for s in polls.values())
        assert {s.name for s in polls.values()} == {"canary_device_polls_total"}
        up = {s.labels["device"]: s.value for s in families["canary_device_up"].samples}
        assert up == dict.fromkeys(ids, 1.0)
        values = families["canary_value"].samples
        assert {s.labels["device"] for s in values} == ids, "a canary_value per demo device"
        co2 = [s for s in values if s.labels["metric"] == "co2"]
        assert {s.labels["unit"] for s in co2} == {"ppm"} and len(co2) == 2
        assert all(300 < s.value < 5000 for s in co2)
