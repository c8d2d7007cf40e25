"""Local status benchmark (issue 8): what a snapshot and a scrape of the demo site cost.

Runs the real daemon in this process (`gateway.app.run_gateway`, the simulated demo site, 11
devices, ~150 metrics) against a real Mosquitto on a free loopback port, with the status socket
in a temporary directory, and prints:

1. the size of the ``/status`` JSON and of the ``/metrics`` text (bytes, samples);
2. the time of one request over the unix socket, client side (connect, request, whole answer),
   for ``/status``, ``/metrics`` and ``/healthz`` (p50/p99/max over ``--requests``), and the time
   of building one snapshot and rendering it in the event loop (what a request costs the daemon);
3. the hot path: nanoseconds per reading that the latest-value table adds to a poll.

    .venv/bin/python bench/local_status.py [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import timeit
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.app import GatewayRuntime, run_gateway  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.local import client, metrics  # noqa: E402
from gateway.local.latest import LatestValues  # noqa: E402
from gateway.local.snapshot import take_snapshot  # noqa: E402
from gateway.model import Reading  # noqa: E402
from tests.servers import mosquitto  # noqa: E402


def spread(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )


async def measure(runtime: GatewayRuntime, sock: Path, requests: int) -> None:
    status = (await asyncio.to_thread(client.fetch, sock, "/status"))[1]
    scrape = (await asyncio.to_thread(client.fetch, sock, "/metrics"))[1]
    samples = sum(1 for line in scrape.decode().splitlines() if line and not line.startswith("#"))
    values = sum(len(d.values) for d in client.parse(status).devices)
    print(
        f"/status  {len(status):>7} bytes of JSON ({len(runtime.pollers)} buses, {values} values)"
    )
    print(f"/metrics {len(scrape):>7} bytes, {samples} samples")
    for route in ("/status", "/metrics", "/healthz"):
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            await asyncio.to_thread(client.fetch, sock, route)
            times.append(time.perf_counter() - start)
        print(f"GET {route:<9} over the socket: {spread(times)}")
    build, render = [], []
    for _ in range(requests):
        start = time.perf_counter()
        snapshot = await take_snapshot(runtime)
        middle = time.perf_counter()
        metrics.render(snapshot)
        build.append(middle - start)
        render.append(time.perf_counter() - middle)
        await asyncio.sleep(0.01)
    print(f"in the loop: snapshot {spread(build)}; metrics text {spread(render)}")


def hot_path() -> None:
    latest = LatestValues()
    ts = datetime.now(UTC)
    poll = [
        Reading(device="inverter", metric=f"m{i}", value=1.0, unit="W", ts=ts, seq=i)
        for i in range(75)
    ]
    runs = 20000
    seconds = timeit.timeit(lambda: latest.observe(poll), number=runs)
    print(f"hot path: {seconds / runs / len(poll) * 1e9:.0f} ns per reading (LatestValues.observe)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="canary-local-") as name:
        tmp = Path(name)
        (tmp / "mosquitto").mkdir()
        broker = mosquitto(tmp / "mosquitto")
        broker.start()
        try:
            text = (ROOT / "gateway" / "demo.toml").read_text()
            text = text.replace("port = 1883", f"port = {broker.port}")
            text = text.replace("/tmp/canary-gateway-demo", str(tmp))
            text += f'\n[clock]\nsync = "none"\n\n[local]\nsocket = "{tmp / "gw.sock"}"\n'
            (tmp / "gateway.toml").write_text(text)
            config = load_config(tmp / "gateway.toml")

            async def scenario() -> None:
                stop = asyncio.Event()
                runtimes: list[GatewayRuntime] = []
                task = asyncio.create_task(
                    run_gateway(config, stop=stop, simulate=True, started=runtimes.append)
                )
                await asyncio.sleep(12)  # a benchmark, not a test: let every device poll twice
                await measure(runtimes[0], tmp / "gw.sock", args.requests)
                stop.set()
                await task

            asyncio.run(scenario())
        finally:
            broker.stop()
    hot_path()


if __name__ == "__main__":
    main()
