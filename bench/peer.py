"""Canary Gateway side by side with ThingsBoard IoT Gateway (issue 10, acceptance 1).

The same work for both, on one machine, in alternating runs (A B A B): ``--devices`` simulated
Modbus TCP devices (default 20, one endpoint each) of 10 values (a u32 counter at holding
register 0 and 9 float32 at 2, 4, ..., 18, high word first), polled every 1 s, publishing to one
local Mosquitto. Each gateway is measured from /proc over a window after a warm-up:

- CPU-s per 1000 values: utime + stime of the gateway process over the window, divided by the
  values that reached the broker in the window;
- VmRSS at the end of the window and VmHWM (peak);
- MQTT payload bytes per value: telemetry payload bytes / values, counted by a subscriber
  (Canary: ``P/S/telemetry/+``; ThingsBoard: ``v1/gateway/telemetry``; descriptions, status and
  connect messages are not counted for either);
- read -> broker latency p50/p95: the simulator's counter register holds the milliseconds since
  the bench's epoch at the moment it answered the read, so arrival at the subscriber minus that
  is the time from the device's answer to the broker's delivery, measured the same way for both.

The peer is installed from PyPI into its own venv under ``bench/.work/`` on first use (it needs
pymodbus 3.9.2, pyserial and pyserial-asyncio pre-installed, or it pip-installs them at run
time); it publishes nothing until its ``getSessionLimits`` RPC is answered, which `_RpcStub` does.
Its configuration: ``v1/gateway/telemetry``, one ``timeseries`` entry per value, pollPeriod 1000,
memory storage, logs at WARNING.

    .venv/bin/python bench/peer.py                # 20 s warm-up, 60 s windows, A B A B
    .venv/bin/python bench/peer.py --quick        # 5 s warm-up, 15 s windows, A B
    .venv/bin/python bench/peer.py --payload v1   # Canary with payload v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import mosquitto  # noqa: E402

WORK = ROOT / "bench" / ".work"
PEER_VENV = WORK / "peer-venv"
PEER_PACKAGES = ["pymodbus==3.9.2", "pyserial", "pyserial-asyncio", "thingsboard-gateway==3.8.5"]
GATEWAY = str(Path(sys.executable).with_name("gateway"))
METRICS = ["c"] + [f"v{i}" for i in range(1, 10)]
TICK = os.sysconf("SC_CLK_TCK")


# --- the simulated devices ----------------------------------------------------------------------


class MeterFarm:
    """``count`` Modbus TCP servers (FC 3 and 4, registers 0..19) on an event loop in a thread.

    Register image per read: 0-1 the u32 milliseconds since ``epoch`` (the latency probe), then
    9 float32 that wander around 230 (a different float32 on every read, as a meter's would).
    """

    def __init__(self, count: int, epoch: float) -> None:
        self._count = count
        #: The bound ports (ephemeral: picking free ports first races with other processes).
        self.ports: list[int] = []
        self.epoch = epoch
        self.requests = 0
        #: Arrival times (time.monotonic) of the requests per port, while ``recording``.
        self.arrivals: dict[int, list[float]] = {}
        self.recording = False
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meter-farm", daemon=True)
        self._rng = random.Random(1)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the simulated meters did not start")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        for _ in range(self._count):
            server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0)
            )
            port = server.sockets[0].getsockname()[1]
            self.ports.append(port)
            self.arrivals[port] = []
        self._ready.set()
        self._loop.run_forever()

    def _image(self) -> bytes:
        now = int((time.time() - self.epoch) * 1000) & 0xFFFFFFFF
        floats = [230.0 + self._rng.uniform(-5.0, 5.0) for _ in range(9)]
        return struct.pack(">I9f", now, *floats)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("sockname")[1]
        try:
            while True:
                header = await reader.readexactly(7)
                tid, pid, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                if self.recording:
                    self.arrivals[port].append(time.monotonic())
                function = pdu[0]
                if function in (3, 4) and len(pdu) == 5:
                    address, count = struct.unpack(">HH", pdu[1:5])
                    image = self._image()
                    if address + count <= len(image) // 2 and 1 <= count <= 125:
                        data = image[2 * address : 2 * (address + count)]
                        body = bytes((function, len(data))) + data
                    else:
                        body = bytes((function | 0x80, 2))  # illegal data address
                else:
                    body = bytes((function | 0x80, 1))  # illegal function
                writer.write(struct.pack(">HHHB", tid, pid, len(body) + 1, unit) + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


# --- what reaches the broker --------------------------------------------------------------------


@dataclass
class Window:
    """What the subscriber counted while a window was open."""

    values: int = 0
    payload_bytes: int = 0
    messages: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class Subscriber:
    """Counts telemetry of both gateways and answers ThingsBoard's session-limits RPC."""

    def __init__(self, port: int, epoch: float) -> None:
        self.epoch = epoch
        self.window: Window | None = None
        self.total_messages = 0
        self.rpc_answered = 0
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [
                ("bench/+/telemetry/+", 0),
                ("v1/gateway/telemetry", 0),
                ("v1/devices/me/rpc/request/+", 1),
            ]
        )
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def open_window(self) -> None:
        with self._lock:
            self.window = Window()

    def close_window(self) -> Window:
        with self._lock:
            window, self.window = self.window, None
        assert window is not None
        return window

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        arrival = time.time()
        if msg.topic.startswith("v1/devices/me/rpc/request/"):
            # _RpcStub: ThingsBoard's gateway waits for this answer before it publishes anything.
            request_id = msg.topic.rsplit("/", 1)[1]
            limits = {
                "maxPayloadSize": 65536,
                "maxInflightMessages": 100,
                "rateLimits": {},
                "gatewayRateLimits": {},
            }
            client.publish(f"v1/devices/me/rpc/response/{request_id}", json.dumps(limits), qos=1)
            self.rpc_answered += 1
            return
        polls = _polls(msg.topic, json.loads(msg.payload))
        with self._lock:
            self.total_messages += 1
            window = self.window
            if window is None:
                return
            window.messages += 1
            window.payload_bytes += len(msg.payload)
            for values in polls:
                window.values += len(values)
                counter = values.get("c")
                if isinstance(counter, int | float):
                    window.latencies_ms.append((arrival - self.epoch) * 1000 - float(counter))


def _polls(topic: str, body: Any) -> list[dict[str, Any]]:
    """The value maps of one telemetry message of either gateway."""
    if topic == "v1/gateway/telemetry":  # {"device": [{"ts": ..., "values": {...}}, ...], ...}
        return [entry["values"] for entries in body.values() for entry in entries]
    if body.get("v") == 2:
        return [p["values"] for p in body.get("polls") or [body]]
    by_ts: dict[str, dict[str, Any]] = {}
    for r in body["readings"]:
        by_ts.setdefault(r["ts"], {})[r["metric"]] = r["value"]
    return list(by_ts.values())


# --- the two gateways ---------------------------------------------------------------------------


def canary_config(
    work: Path, broker: int, ports: list[int], payload: str, interval: float = 1
) -> Path:
    points = '  { key = "c", register = "holding", address = 0, type = "uint32" },\n' + "".join(
        f'  {{ key = "v{i}", register = "holding", address = {2 * i}, type = "float32" }},\n'
        for i in range(1, 10)
    )
    devices = "".join(
        f"""
[[devices]]
id = "meter-{n:02d}"
driver = "modbus"
unit_id = 1
interval = {interval}
transport = {{ kind = "tcp", host = "127.0.0.1", port = {port} }}
points = [
{points}]
"""
        for n, port in enumerate(ports)
    )
    path = work / "canary.toml"
    path.write_text(
        f"""[site]
id = "site-1"
[mqtt]
host = "127.0.0.1"
port = {broker}
topic_prefix = "bench"
payload = "{payload}"
[buffer]
path = "{work / "canary-buffer.sqlite3"}"
{devices}"""
    )
    return path


def peer_config(work: Path, broker: int, ports: list[int]) -> Path:
    """ThingsBoard IoT Gateway's config directory: its shipped defaults, with our broker, memory
    storage, WARNING logs and one Modbus connector of one slave per device."""
    shipped = PEER_VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    shipped = shipped / "site-packages" / "thingsboard_gateway" / "config"
    config = work / "peer-config"
    shutil.rmtree(config, ignore_errors=True)
    shutil.copytree(shipped, config)
    gateway = json.loads((config / "tb_gateway.json").read_text())
    gateway["thingsboard"].update(
        host="127.0.0.1",
        port=broker,
        remoteConfiguration=False,
        security={"type": "accessToken", "accessToken": "bench"},
    )
    gateway["thingsboard"]["statistics"]["enable"] = False
    gateway["storage"] = {"type": "memory", "read_records_count": 100, "max_records_count": 100000}
    gateway["connectors"] = [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}]
    (config / "tb_gateway.json").write_text(json.dumps(gateway, indent=2))
    timeseries = [
        {"tag": "c", "type": "32uint", "functionCode": 3, "objectsCount": 2, "address": 0}
    ]
    timeseries += [
        {"tag": f"v{i}", "type": "32float", "functionCode": 3, "objectsCount": 2, "address": 2 * i}
        for i in range(1, 10)
    ]
    slaves = [
        {
            "host": "127.0.0.1",
            "port": port,
            "type": "tcp",
            "method": "socket",
            "timeout": 35,
            "byteOrder": "BIG",
            "wordOrder": "BIG",
            "retries": 3,
            "unitId": 1,
            "deviceName": f"meter-{n:02d}",
            "deviceType": "meter",
            "pollPeriod": 1000,
            "sendDataOnlyOnChange": False,
            "connectAttemptTimeMs": 5000,
            "connectAttemptCount": 5,
            "waitAfterFailedAttemptsMs": 300000,
            "attributes": [],
            "timeseries": timeseries,
            "attributeUpdates": [],
            "rpc": [],
        }
        for n, port in enumerate(ports)
    ]
    (config / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}, indent=2))
    logs = json.loads((config / "logs.json").read_text())
    for logger in logs.get("loggers", {}).values():
        logger["level"] = "WARNING"
    if "root" in logs:
        logs["root"]["level"] = "WARNING"
    (config / "logs.json").write_text(json.dumps(logs, indent=2))
    return config


def ensure_peer() -> Path:
    """The peer's venv, created and installed from PyPI on first use."""
    python = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / ".installed"
    if not marker.exists() or marker.read_text() != " ".join(PEER_PACKAGES):
        print(f"installing {', '.join(PEER_PACKAGES)} into {PEER_VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
        marker.write_text(" ".join(PEER_PACKAGES))
    return python


# --- measuring ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class Result:
    name: str
    cpu_per_1000: float
    rss_mib: float
    hwm_mib: float
    bytes_per_value: float
    p50_ms: float
    p95_ms: float
    values: int


def measure(
    name: str,
    start: Callable[[], subprocess.Popen[bytes]],
    subscriber: Subscriber,
    *,
    warmup: float,
    window: float,
) -> Result:
    proc = start()
    try:
        time.sleep(warmup)  # a bench, not a test: the warm-up is a fixed time by definition
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} during the warm-up")
        cpu0 = cpu_seconds(proc.pid)
        subscriber.open_window()
        time.sleep(window)
        counted = subscriber.close_window()
        cpu1 = cpu_seconds(proc.pid)
        memory = memory_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if counted.values == 0:
        raise RuntimeError(f"{name} published no values in the window")
    latencies = sorted(counted.latencies_ms)
    return Result(
        name=name,
        cpu_per_1000=(cpu1 - cpu0) / counted.values * 1000,
        rss_mib=memory["VmRSS"] / 1024,
        hwm_mib=memory["VmHWM"] / 1024,
        bytes_per_value=counted.payload_bytes / counted.values,
        p50_ms=_quantile(latencies, 0.50),
        p95_ms=_quantile(latencies, 0.95),
        values=counted.values,
    )


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(results: list[Result]) -> None:
    ours = [r for r in results if r.name == "canary"]
    peer = [r for r in results if r.name == "thingsboard"]
    rows = [
        ("CPU-s per 1000 values", "cpu_per_1000", "{:.3f}"),
        ("VmRSS MiB", "rss_mib", "{:.1f}"),
        ("VmHWM MiB", "hwm_mib", "{:.1f}"),
        ("MQTT payload bytes per value", "bytes_per_value", "{:.1f}"),
        ("read -> broker latency p50 ms", "p50_ms", "{:.0f}"),
        ("read -> broker latency p95 ms", "p95_ms", "{:.0f}"),
    ]
    print()
    print("| | Canary Gateway | ThingsBoard IoT Gateway 3.8.5 | ratio |")
    print("|---|---:|---:|---:|")
    for label, attr, fmt in rows:
        a = [getattr(r, attr) for r in ours]
        b = [getattr(r, attr) for r in peer]
        if not a or not b:
            print(
                f"| {label} | {' / '.join(fmt.format(x) for x in a)} | "
                f"{' / '.join(fmt.format(x) for x in b)} | |"
            )
            continue
        ratio = statistics.median(a) / statistics.median(b) if statistics.median(b) else math.nan
        print(
            f"| {label} | {' / '.join(fmt.format(x) for x in a)} | "
            f"{' / '.join(fmt.format(x) for x in b)} | {ratio:.2f} |"
        )
    print(
        f"\nvalues counted per window: canary {[r.values for r in ours]}, peer {[r.values for r in peer]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--payload", choices=["v1", "v2"], default="v2")
    parser.add_argument("--quick", action="store_true", help="5 s warm-up, 15 s windows, A B")
    parser.add_argument("--rounds", type=int, default=None, help="A B pairs (default 2, quick 1)")
    parser.add_argument("--only", choices=["canary", "thingsboard"], help="measure one side only")
    args = parser.parse_args()
    warmup, window = (5.0, 15.0) if args.quick else (20.0, 60.0)
    rounds = args.rounds or (1 if args.quick else 2)
    WORK.mkdir(parents=True, exist_ok=True)
    python = ensure_peer()
    run_dir = WORK / "peer-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    broker = mosquitto(run_dir)
    broker.start()
    epoch = time.time()
    farm = MeterFarm(args.devices, epoch)
    farm.start()
    subscriber = Subscriber(broker.port, epoch)
    canary = canary_config(run_dir, broker.port, farm.ports, args.payload)
    peer = peer_config(run_dir, broker.port, farm.ports)
    logs = run_dir / "logs"
    logs.mkdir()

    def start_canary() -> subprocess.Popen[bytes]:
        for stale in run_dir.glob("canary-buffer.sqlite3*"):
            stale.unlink()
        out = (run_dir / "canary.log").open("ab")
        return subprocess.Popen([GATEWAY, "run", "--config", str(canary)], stdout=out, stderr=out)

    def start_peer() -> subprocess.Popen[bytes]:
        out = (run_dir / "peer.log").open("ab")
        env = {**os.environ, "TB_GW_CONFIG_DIR": str(peer)}
        return subprocess.Popen(
            [str(python), "-m", "thingsboard_gateway.tb_gateway"],
            stdout=out,
            stderr=out,
            env=env,
            cwd=run_dir,
        )

    results = []
    try:
        for n in range(rounds):
            for name, start in (("canary", start_canary), ("thingsboard", start_peer)):
                if args.only not in (None, name):
                    continue
                print(
                    f"round {n + 1}: {name} ({warmup:.0f} s warm-up, {window:.0f} s window)",
                    flush=True,
                )
                result = measure(name, start, subscriber, warmup=warmup, window=window)
                print(f"  {result}", flush=True)
                results.append(result)
    finally:
        subscriber.close()
        farm.stop()
        broker.stop()
    report(results)


if __name__ == "__main__":
    main()
