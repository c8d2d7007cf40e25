"""The real chain of a chaos run, and the hands that break it.

    python -m simulators ─> gateway run ─[proxy gw]─> Mosquitto <─[proxy bridge]─ gateway bridge
                                                          │                              │
                                                      capture                    [proxy store]
                                                   (direct, no proxy)                    │
                                                                                VictoriaMetrics

Every process is a real child process: Mosquitto with the settings docs/mqtt.md requires
(persistence, ``autosave_interval 60``, ``max_queued_messages 0``, ``max_inflight_messages
100``), VictoriaMetrics with store-side deduplication (issue 16, item 3), the simulated demo site
(`python -m simulators`, so devices stay up while the gateway dies), the gateway and the bridge.
The gateway and the bridge are started again by the test only after the test killed them, never
to unstick them; whatever else goes wrong must heal by itself.

Every action is recorded as an `Event` with its wall-clock time: the checker needs to know when
each gateway incarnation lived and when it was frozen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import BridgeConfig
from tests.chaos.capture import Capture
from tests.chaos.proxy import FaultProxy, ProxyHost
from tests.chaos.schedule import LINKS, NETWORK_KINDS, SECOND_BRIDGE, Fault
from tests.chaos.storetap import StoreTap
from tests.servers import (
    RUNNING,
    ServerProcess,
    find_binary,
    free_port,
    port_open,
    victoria_metrics,
    vm_export,
    wait_until,
)
from tests.system.harness import DEMO_DEVICES, GATEWAY, Process, site_config

SITE = "kg-sunflower"
PREFIX = "canary"
#: VictoriaMetrics keeps one sample per series and millisecond: a re-sent reading is stored once.
DEDUP_FLAG = "-dedup.minScrapeInterval=1ms"


@dataclass(frozen=True)
class Event:
    """Something the test did, at wall-clock time ``t`` (``time.time()``)."""

    t: float
    what: str
    detail: str = ""


def broker(workdir: Path) -> ServerProcess:
    """Mosquitto configured as docs/mqtt.md "Broker settings that keep the promise" requires.

    Run as root (the suite may be), Mosquitto would drop to user ``mosquitto`` and could not write
    its persistence file under the test's 0700 directories; ``user root`` keeps it able to, and
    `Chain` checks that the file is written.
    """
    binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {workdir}/",
        "autosave_interval 60",
        "max_queued_messages 0",
        "max_inflight_messages 1000",
        # The stdout log is block-buffered and loses its tail on a SIGKILL; a log file does not.
        f"log_dest file {workdir}/broker.log",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    return ServerProcess(
        "mosquitto", [binary, "-c", str(conf)], port, workdir, lambda s: port_open(s.port)
    )


def store(workdir: Path) -> ServerProcess:
    """VictoriaMetrics as tests/servers.py starts it, with deduplication on (see `DEDUP_FLAG`)."""
    server = victoria_metrics(workdir)
    if not any(arg.startswith("-dedup.minScrapeInterval") for arg in server.argv):
        server.argv.append(DEDUP_FLAG)
    return server


def share_group_accepted() -> bool:
    """Whether this version of the bridge still has ``[bridge] share_group`` (issue 16, item 4)."""
    return "share_group" in BridgeConfig.model_fields


@dataclass
class Chain:
    """Starts the chain in ``workdir``, applies faults, brings it to a clean end. Use `open`."""

    workdir: Path
    commit_interval: float = 2.0
    #: Poll interval of every device but the SCD4x canaries (whose chip measures every 5 s).
    poll_interval: float = 2.0
    #: ``None`` (the supported topology, docs/mqtt.md): one bridge on a plain persistent
    #: subscription, no second bridge; a group name tries `$share` (refused by the bridge).
    share_group: str | None = None
    say: Callable[[str], None] = print
    events: list[Event] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mosquitto: ServerProcess = field(init=False)
    victoria: ServerProcess = field(init=False)
    proxies: dict[str, FaultProxy] = field(init=False, default_factory=dict)
    capture: Capture = field(init=False)
    gateway: Process = field(init=False)
    bridge: Process = field(init=False)
    second: Process | None = field(init=False, default=None)
    #: What the store acknowledged, seen on the bridge -> store link.
    store_tap: StoreTap = field(init=False, default_factory=StoreTap)
    gateway_config: Path = field(init=False)
    buffer_path: Path = field(init=False)
    _host: ProxyHost = field(init=False, default_factory=ProxyHost)
    _count: dict[str, int] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _processes: list[Process] = field(init=False, default_factory=list)

    # --- bring-up --------------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def open(cls, workdir: Path, **kwargs: Any) -> Iterator[Chain]:
        """A started chain; everything it started is stopped on the way out, whatever happened."""
        chain = cls(workdir, **kwargs)
        try:
            chain._start()
            yield chain
        finally:
            chain._teardown()

    def record(self, what: str, detail: str = "") -> Event:
        event = Event(time.time(), what, detail)
        with self._lock:
            self.events.append(event)
        return event

    def _start(self) -> None:
        for name in ("mosquitto", "vm", "gateway", "bridge", "second-bridge"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        self._host.start()
        self.mosquitto = broker(self.workdir / "mosquitto")
        self.victoria = store(self.workdir / "vm")
        self.mosquitto.start()
        self.victoria.start()
        self.proxies = {
            "gateway": self._host.add("gateway", self.mosquitto.port),
            "bridge": self._host.add("bridge", self.mosquitto.port),
            "store": self._host.add("store", self.victoria.port),
        }
        self.proxies["store"].tap = self.store_tap
        if self.share_group is not None and not share_group_accepted():
            self.notes.append("[bridge] share_group is gone: one bridge, no second bridge")
            self.share_group = None
        modbus, i2c = (free_port(), free_port()), (free_port(), free_port())
        self.gateway_config = site_config(
            self.workdir / "gateway",
            broker=self.proxies["gateway"].port,
            tsdb=self.proxies["store"].port,
            modbus_ports=modbus,
            i2c_ports=i2c,
            buffer=f"commit_interval = {self.commit_interval}",
        )
        self.gateway_config.write_text(
            with_interval(self.gateway_config.read_text(), self.poll_interval)
        )
        self.buffer_path = self.workdir / "gateway" / "buffer.sqlite3"
        ready = self.workdir / "simulators.ready"
        sims = self._spawn(
            "simulators",
            [
                sys.executable,
                "-m",
                "simulators",
                "--config",
                str(self.gateway_config),
                "--ready-file",
                str(ready),
            ],
        )
        self.capture = Capture(self.mosquitto.port, "chaos-capture", f"{PREFIX}/#").start()
        wait_until(ready.exists, timeout=30, what=f"the simulators\n{sims.output()[-2000:]}")
        self.bridge = self._start_bridge("bridge")
        if not self._subscribed(self.bridge) and self.share_group is not None:
            self.notes.append(
                "the bridge refused share_group; one bridge, no second bridge:\n"
                + self.bridge.output()[-1500:]
            )
            self.share_group = None
            self.bridge = self._start_bridge("bridge")
        if not self._subscribed(self.bridge):
            raise AssertionError(f"the bridge did not subscribe:\n{self.bridge.output()[-3000:]}")
        # The commissioning step docs/mqtt.md asks for: save the broker once the bridge's session
        # exists, so that a broker crash before its first autosave cannot forget the session.
        assert self.mosquitto.proc is not None, "the broker is not running"
        self.mosquitto.proc.send_signal(signal.SIGUSR1)
        wait_until(self.persistence_written, timeout=10, what="the broker to save its sessions")
        self.gateway = self._start_gateway()

    def _subscribed(self, bridge: Process) -> bool:
        """Wait for the bridge's first SUBACK (its persistent session exists from then on)."""
        wait_until(
            lambda: "subscribed to" in bridge.output() or bridge.proc.poll() is not None,
            timeout=30,
            what="the bridge to subscribe",
        )
        return "subscribed to" in bridge.output()

    def _spawn(self, name: str, argv: list[str]) -> Process:
        process = Process(name, argv, self.workdir)
        self._processes.append(process)
        return process

    def _name(self, base: str) -> str:
        self._count[base] = self._count.get(base, 0) + 1
        return f"{base}-{self._count[base]}"

    def _bridge_config(self, role: str) -> Path:
        folder = self.workdir / role
        path = site_config(
            folder, broker=self.proxies["bridge"].port, tsdb=self.proxies["store"].port
        )
        assert "\n[bridge]" not in path.read_text(), "gateway/demo.toml has a [bridge] now"
        extra = f'\n[bridge]\nclient_id = "chaos-{role}"\n'
        if self.share_group is not None:
            extra += f'share_group = "{self.share_group}"\n'
        path.write_text(path.read_text() + extra)
        return path

    def _start_bridge(self, role: str) -> Process:
        config = self._bridge_config(role)
        process = self._spawn(self._name(role), [GATEWAY, "bridge", "--config", str(config)])
        self.record(f"{role}_start", process.name)
        return process

    def _start_gateway(self) -> Process:
        process = self._spawn(
            self._name("gateway"), [GATEWAY, "run", "--config", str(self.gateway_config)]
        )
        self.record("gateway_start", process.name)
        return process

    def _teardown(self) -> None:
        for process in self._processes:
            if process.proc.poll() is None:
                with contextlib.suppress(OSError):
                    process.proc.send_signal(signal.SIGCONT)
            process.stop(signal.SIGKILL)
        with contextlib.suppress(AttributeError):
            self.capture.stop()
        self._host.stop()
        for server in (getattr(self, "mosquitto", None), getattr(self, "victoria", None)):
            if server is not None:
                server.stop()
        leaked = [p for p in RUNNING if p.poll() is None]
        assert not leaked, f"the chain left processes running: {[p.args for p in leaked]}"

    # --- faults ----------------------------------------------------------------------------------

    def run(self, schedule: list[Fault]) -> None:
        """Apply ``schedule`` (times from now); one thread per track, so tracks overlap in time."""
        start = time.monotonic()
        self.record("faults_start")
        tracks: dict[str, list[Fault]] = {}
        for fault in schedule:
            if fault.kind == SECOND_BRIDGE:
                track = "second"
            elif fault.kind in NETWORK_KINDS:
                track = f"net-{fault.link}"
            else:
                track = "process"
            tracks.setdefault(track, []).append(fault)
        if self.share_group is None:
            tracks.pop("second", None)
        with ThreadPoolExecutor(len(tracks), thread_name_prefix="chaos-track") as pool:
            futures = [pool.submit(self._track, start, faults) for faults in tracks.values()]
            for future in futures:
                future.result()
        self.record("faults_end")

    def _track(self, start: float, faults: list[Fault]) -> None:
        for fault in faults:
            _sleep_until(start + fault.at)
            self._apply(fault)

    def _apply(self, fault: Fault) -> None:
        self.record("fault", fault.describe())
        self.say(f"  applying {fault.describe()}")
        kind = fault.kind
        if kind in NETWORK_KINDS:
            assert fault.link is not None
            proxy = self.proxies[fault.link]
            if kind == "drop":
                proxy.drop()
            elif kind == "blackhole":
                proxy.blackhole()
                time.sleep(fault.duration)
                proxy.end_blackhole(reset=fault.reset)
            else:
                proxy.add_latency(fault.latency)
                time.sleep(fault.duration)
                proxy.add_latency(-fault.latency)
            return
        if kind == SECOND_BRIDGE:
            self.second = self._start_bridge("second-bridge")
            time.sleep(fault.duration)
            self.record("second-bridge_leave", self.second.name)
            code = self.second.stop()
            self.record("second-bridge_stopped", f"exit {code}")
            return
        getattr(self, f"_{kind}")(fault)

    def _gateway_kill(self, fault: Fault) -> None:
        self._kill_gateway()
        time.sleep(fault.duration)
        self.gateway = self._start_gateway()

    def _kill_gateway(self) -> None:
        self.record("gateway_kill", self.gateway.name)
        self.gateway.stop(signal.SIGKILL)

    def _gateway_kill_offline(self, fault: Fault) -> None:
        proxy = self.proxies["gateway"]
        held, down = fault.steps
        proxy.blackhole()
        time.sleep(held)
        self._kill_gateway()
        time.sleep(down)
        self.gateway = self._start_gateway()
        proxy.end_blackhole(reset=True)

    def _gateway_pause(self, fault: Fault) -> None:
        self.gateway.proc.send_signal(signal.SIGSTOP)
        self.record("gateway_sigstop", self.gateway.name)
        time.sleep(fault.duration)
        self.gateway.proc.send_signal(signal.SIGCONT)
        self.record("gateway_sigcont", self.gateway.name)

    def _broker_restart(self, fault: Fault) -> None:
        self.record("broker_stop")
        self.mosquitto.stop()
        time.sleep(fault.duration)
        self.mosquitto.start()
        self.record("broker_start")

    def _broker_kill(self, fault: Fault) -> None:
        self.record("broker_kill")
        self.mosquitto.stop(signal.SIGKILL)
        time.sleep(fault.duration)
        self.mosquitto.start()
        self.record("broker_start")

    def _bridge_kill(self, fault: Fault) -> None:
        self.record("bridge_kill", self.bridge.name)
        self.bridge.stop(signal.SIGKILL)
        time.sleep(fault.duration)
        self.bridge = self._start_bridge("bridge")

    def _store_kill(self, fault: Fault) -> None:
        self.record("store_kill")
        self.victoria.stop(signal.SIGKILL)
        time.sleep(fault.duration)
        self.victoria.start()
        self.record("store_start")

    def _broker_restart_bridge_away(self, fault: Fault) -> None:
        away, down, back = fault.steps
        self.record("bridge_leave", self.bridge.name)
        code = self.bridge.stop()
        self.record("bridge_stopped", f"exit {code}")
        time.sleep(away)
        self._broker_restart(Fault(fault.at, "broker_restart", down))
        time.sleep(back)
        self.bridge = self._start_bridge("bridge")

    # --- the end: recovery by itself, then a clean stop ------------------------------------------

    def settle(self, *, deadline: float = 120.0) -> dict[str, float]:
        """After the faults: prove every process recovered by itself, then stop the gateway cleanly
        and wait until the store has taken what the broker carried.

        Returns the seconds each stage took. Raises `AssertionError` when a process did not recover
        within ``deadline`` (that is a failure of the chain, not of the test's patience).
        """
        for name, proxy in self.proxies.items():
            assert proxy.mode == "pass" and proxy.latency == 0, f"proxy {name} still faulty"
        for process in (self.gateway, self.bridge):
            assert process.proc.poll() is None, f"{process.name} died:\n{process.output()[-3000:]}"
        end = time.time()
        ts_end = end * 1000
        took: dict[str, float] = {}

        def live_on_broker() -> bool:
            return {
                r["device"] for r in self.capture.readings() if _ms(r["ts"]) > ts_end
            } >= DEMO_DEVICES

        wait_until(
            live_on_broker,
            timeout=deadline,
            what=f"fresh readings of every device on the broker\n{self.gateway.output()[-3000:]}",
            step=0.2,
        )
        took["gateway_live"] = time.time() - end

        def live_in_store() -> bool:
            rows = vm_export(self.victoria.port, '{__name__=~".+_seq"}')
            return {
                row["metric"]["device"] for row in rows if max(row["timestamps"]) > ts_end
            } >= DEMO_DEVICES

        wait_until(
            live_in_store,
            timeout=deadline,
            what=f"fresh readings of every device in the store\n{self.bridge.output()[-3000:]}",
            step=0.5,
        )
        took["bridge_live"] = time.time() - end
        self.record("gateway_stop", self.gateway.name)
        code = self.gateway.stop()
        self.record("gateway_stopped", f"exit {code}")
        assert code == 0, f"the gateway's clean stop exited {code}\n{self.gateway.output()[-3000:]}"
        left = buffered(self.buffer_path)
        assert left == 0, f"a clean stop with the broker up left {left} readings buffered"

        def offline_status() -> bool:
            return any(
                m.topic == f"{PREFIX}/{SITE}/status"
                and m.received >= end
                and m.json().get("state") == "offline"
                and "devices" in m.json()
                for m in self.capture.messages()
            )

        wait_until(offline_status, timeout=30, what="the gateway's final offline status")

        def store_complete() -> bool:
            published = {r["seq"] for r in self.capture.readings()}
            rows = vm_export(self.victoria.port, '{__name__=~".+_seq"}')
            return {int(v) for row in rows for v in row["values"]} >= published

        try:
            wait_until(
                store_complete, timeout=30, what="the store to hold every published seq", step=1
            )
        except AssertionError as exc:
            self.notes.append(str(exc).splitlines()[0])
        took["store_complete"] = time.time() - end
        self.record("bridge_stop", self.bridge.name)
        code = self.bridge.stop()
        self.record("bridge_stopped", f"exit {code}")
        assert code == 0, f"the bridge's clean stop exited {code}\n{self.bridge.output()[-3000:]}"
        self.capture.stop()
        return took

    def persistence_written(self) -> bool:
        """Mosquitto has written its persistence file (at an autosave or a clean stop)."""
        return (self.mosquitto.workdir / "mosquitto.db").exists()

    def logs(self) -> dict[str, str]:
        """Every child process's output by name, the broker's log included."""
        out = {p.name: p.output() for p in self._processes}
        broker_log = self.mosquitto.workdir / "broker.log"
        if broker_log.exists():
            out["broker"] = broker_log.read_text(errors="replace")
        return out


def with_interval(config: str, interval: float) -> str:
    """The demo site with every device but the SCD4x polled every ``interval`` seconds: more polls
    per commit window, so that every kill has something to lose and the grid check has teeth."""
    head, *blocks = config.split("[[devices]]")
    out = [head]
    for block in blocks:
        if 'driver = "scd4x"' not in block:
            assert "\ninterval = 5\n" in block, "gateway/demo.toml changed its intervals"
            out.append(block.replace("\ninterval = 5\n", f"\ninterval = {interval}\n"))
        else:
            out.append(block)
    return "[[devices]]".join(out)


def buffered(path: Path) -> int:
    """Readings in the gateway's durable buffer now (read-only; WAL allows it while it runs)."""
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            return int(db.execute("SELECT count(*) FROM readings").fetchone()[0])
    except sqlite3.OperationalError:
        return -1  # being created or migrated right now: ask again


def _sleep_until(moment: float) -> None:
    """Wait for a fault's scheduled time (the schedule itself, not a wait for a condition)."""
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _ms(iso: str) -> float:
    from datetime import datetime  # noqa: PLC0415 - only here

    return datetime.fromisoformat(iso).timestamp() * 1000


__all__ = ["LINKS", "Chain", "Event", "broker", "buffered", "share_group_accepted", "store"]
