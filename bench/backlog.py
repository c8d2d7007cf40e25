"""Backlog benchmark (issue 5): drain 1,000,000 buffered readings while polling stays on time.

Runs the real daemon in this process (`gateway.app.run_gateway`, the simulated demo site) against a
real Mosquitto started on a free loopback port, and prints:

1. Normal polling, per durability setting (synchronous FULL and NORMAL): bytes written to disk per
   reading (this process's ``/proc/self/io`` write_bytes) against the MQTT payload bytes per
   reading, CPU-seconds per 1000 readings, and the read -> broker latency (p50/p99: from the
   poll's timestamp to the moment a subscriber on the same machine received the reading).
2. Backlog: the buffer is filled with 1,000,000 readings, then the gateway starts; the drain rate
   to Mosquitto (readings/s, at the configured ``backlog_rate`` and unlimited), the poll lateness
   (p50/p99/max, seconds after each poll's due time) while it drains, CPU-seconds per 1000 readings
   and the peak RSS.

Goals (issue 16): live read -> broker latency p50 <= 10 ms and p99 <= 50 ms; disk bytes per
reading in steady state <= 1x the payload; 1 M readings drain in <= 60 s with p99 lateness
< 100 ms.

    .venv/bin/python bench/backlog.py [--readings 1000000] [--normal-seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.app import GatewayRuntime, run_gateway  # noqa: E402
from gateway.buffer import SqliteBuffer  # noqa: E402
from gateway.config import GatewayConfig, load_config  # noqa: E402
from gateway.model import Reading, Value, utc_ms  # noqa: E402
from gateway.scheduler import DeviceState  # noqa: E402
from tests.servers import mosquitto  # noqa: E402


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class TimedDriver:
    """Wraps a driver to record how late each poll starts against its due time."""

    def __init__(self, state: DeviceState, lateness: list[float]) -> None:
        self._inner = state.driver
        self._state = state
        self._lateness = lateness
        self.metrics = self._inner.metrics

    async def open(self) -> None:
        await self._inner.open()

    async def close(self) -> None:
        await self._inner.close()

    async def poll(self) -> Mapping[str, Value]:
        self._lateness.append(time.monotonic() - self._state.next_due)
        return await self._inner.poll()


@dataclass
class Run:
    runtime: list[GatewayRuntime] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)

    def started(self, runtime: GatewayRuntime) -> None:
        self.runtime.append(runtime)
        for poller in runtime.pollers:
            for state in poller.devices:
                state.driver = TimedDriver(state, self.lateness)  # type: ignore[assignment]


def site(base: GatewayConfig, port: int, path: Path, **overrides: Any) -> GatewayConfig:
    mqtt = base.mqtt.model_copy(update={"port": port, **overrides.pop("mqtt", {})})
    buf = base.buffer.model_copy(update={"path": path, **overrides.pop("buffer", {})})
    return base.model_copy(update={"mqtt": mqtt, "buffer": buf})


class Latency:
    """A subscriber on the broker recording, per reading, arrival time minus the poll's ts."""

    def __init__(self, port: int, topic: str) -> None:
        self.samples: list[float] = []
        self.recording = False
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-latency")
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        arrived = time.time()
        if not self.recording:
            return
        for r in json.loads(msg.payload)["readings"]:
            ts = datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
            self.samples.append(arrived - ts)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


async def normal_polling(config: GatewayConfig, seconds: float) -> dict[str, float]:
    run, stop = Run(), asyncio.Event()
    latency = Latency(config.mqtt.port, f"{config.mqtt.topic_prefix}/+/telemetry/+")
    task = asyncio.create_task(run_gateway(config, stop=stop, simulate=True, started=run.started))
    await asyncio.sleep(8)  # warm-up: connections, first polls, first checkpoint
    runtime = run.runtime[0]
    stats = runtime.publisher.stats
    w0, c0, s0 = write_bytes(), cpu_seconds(), runtime.sequence.last
    b0, r0 = stats.payload_bytes, stats.readings_sent
    latency.recording = True
    await asyncio.sleep(seconds)
    latency.recording = False
    w1, c1, s1 = write_bytes(), cpu_seconds(), runtime.sequence.last
    b1, r1 = stats.payload_bytes, stats.readings_sent
    stop.set()
    await task
    latency.stop()
    readings = s1 - s0
    payload = (b1 - b0) / max(1, r1 - r0)
    lat = sorted(latency.samples)
    return {
        "readings": readings,
        "disk_bytes_per_reading": (w1 - w0) / readings,
        "payload_bytes_per_reading": payload,
        "ratio": (w1 - w0) / readings / payload,
        "cpu_s_per_1000": (c1 - c0) / readings * 1000,
        "written": runtime.buffer.written,
        "latency_p50_ms": statistics.median(lat) * 1000,
        "latency_p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
    }


def fill(path: Path, count: int) -> None:
    start = utc_ms(datetime.now(UTC) - timedelta(days=2))
    buffer = SqliteBuffer(path)
    chunk = 50_000
    for first in range(1, count + 1, chunk):
        buffer.append(
            [
                Reading(
                    device=f"backlog-{seq % 20}",
                    metric="power",
                    value=float(seq),
                    unit="W",
                    ts=start + timedelta(milliseconds=seq * 100),
                    seq=seq,
                )
                for seq in range(first, min(first + chunk, count + 1))
            ]
        )
    buffer.close()


async def drain(config: GatewayConfig, count: int) -> dict[str, float]:
    run, stop = Run(), asyncio.Event()
    c0, t0 = cpu_seconds(), time.monotonic()
    task = asyncio.create_task(run_gateway(config, stop=stop, simulate=True, started=run.started))
    while not run.runtime:  # noqa: ASYNC110 - set synchronously by run_gateway's start-up
        await asyncio.sleep(0.01)
    runtime = run.runtime[0]
    while runtime.publisher.stats.readings_acked < count:  # noqa: ASYNC110 - a counter, no event
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds() - c0
    lateness = sorted(run.lateness)
    stop.set()
    await task
    return {
        "seconds": elapsed,
        "readings_per_s": count / elapsed,
        "polls": len(lateness),
        "p50_ms": statistics.median(lateness) * 1000,
        "p99_ms": lateness[int(len(lateness) * 0.99) - 1] * 1000,
        "max_ms": lateness[-1] * 1000,
        "cpu_s_per_1000": cpu / count * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--normal-seconds", type=float, default=40.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = load_config(ROOT / "gateway" / "demo.toml")
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "mosquitto").mkdir()
        broker = mosquitto(tmp / "mosquitto")
        broker.start()
        try:
            print(f"== normal polling, demo site ({args.normal_seconds:.0f} s per setting)")
            print(
                "sync    readings  disk B/reading  payload B/reading  ratio  CPU s/1000"
                "  written  latency p50/p99 ms"
            )
            for sync in ("FULL", "NORMAL"):
                config = site(
                    base, broker.port, tmp / f"normal-{sync}.sqlite3", buffer={"synchronous": sync}
                )
                r = await normal_polling(config, args.normal_seconds)
                print(
                    f"{sync:<7} {r['readings']:>8.0f} {r['disk_bytes_per_reading']:>15.0f} "
                    f"{r['payload_bytes_per_reading']:>18.0f} {r['ratio']:>6.1f} "
                    f"{r['cpu_s_per_1000']:>11.3f} {r['written']:>8.0f} "
                    f"{r['latency_p50_ms']:>9.1f} /{r['latency_p99_ms']:>6.1f}"
                )

            filled = tmp / "filled.sqlite3"
            t0 = time.monotonic()
            fill(filled, args.readings)
            print(
                f"\n== backlog of {args.readings:,} readings (filled in "
                f"{time.monotonic() - t0:.1f} s), demo site polling meanwhile"
            )
            print("backlog_rate  drain s  readings/s  polls  lateness p50/p99/max ms  CPU s/1000")
            for rate in (base.mqtt.backlog_rate, 0):
                path = tmp / f"drain-{rate}.sqlite3"
                shutil.copy(filled, path)
                config = site(base, broker.port, path, mqtt={"backlog_rate": rate})
                r = await drain(config, args.readings)
                print(
                    f"{rate or 'unlimited':>12} {r['seconds']:>8.1f} {r['readings_per_s']:>11.0f} "
                    f"{r['polls']:>6.0f} {r['p50_ms']:>9.1f} /{r['p99_ms']:>6.1f} /"
                    f"{r['max_ms']:>6.1f} {r['cpu_s_per_1000']:>12.3f}"
                )
                path.unlink()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"\npeak RSS of the whole run: {peak:.0f} MiB")
        finally:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
