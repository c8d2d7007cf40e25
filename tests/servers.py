"""Real servers for tests: Mosquitto and VictoriaMetrics on free loopback ports.

Each is a child process in its own temporary directory, started with a deadline on readiness and
stopped (SIGTERM, then SIGKILL) by the fixture that made it. `stop`/`start` let fault tests take a
server away and bring it back on the same port with the same data directory.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Every process started here, so the leak check can tell a test that left one running.
RUNNING: set[subprocess.Popen[bytes]] = set()


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, step: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def find_binary(name: str, *candidates: str) -> str:
    for path in (shutil.which(name), *candidates):
        if path and os.access(path, os.X_OK):
            return path
    raise AssertionError(f"{name} is not installed; run scripts/test, which installs it")


@dataclass
class ServerProcess:
    """A child process bound to ``port``; ``argv`` is reused by `start` after a `stop`."""

    name: str
    argv: list[str]
    port: int
    workdir: Path
    ready: Callable[[ServerProcess], bool]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 20.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        RUNNING.add(self.proc)
        try:
            wait_until(
                lambda: self._alive() and self.ready(self),
                timeout=timeout,
                what=f"{self.name} to start",
            )
        except AssertionError:
            self.stop()
            raise AssertionError(
                f"{self.name} did not start:\n{self.log_path.read_text()[-2000:]}"
            ) from None

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_path.read_text()[-2000:]}"
            )
        return True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        RUNNING.discard(self.proc)
        self.proc = None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Identity of a file version (Mosquitto writes ``.new`` and renames: a new inode)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class MosquittoServer(ServerProcess):
    """Mosquitto whose persistence is checked, not assumed.

    A broker that silently runs without persistence (as root it drops to user ``mosquitto``,
    which cannot write a root-owned 0700 directory: "Permission denied") would let every
    "survives a broker restart" test pass for the wrong reason. So `start` makes Mosquitto save
    at once (SIGUSR1) and fails unless the file appears, and a clean `stop` fails unless
    Mosquitto rewrote it on the way down.
    """

    @property
    def persistence_file(self) -> Path:
        return self.workdir / "mosquitto.db"

    def start(self, timeout: float = 20.0) -> None:
        super().start(timeout)
        self.save()

    def save(self, timeout: float = 10.0) -> None:
        """Make Mosquitto write its persistence file now (SIGUSR1); fail unless it did."""
        assert self.proc is not None, "mosquitto is not running"
        before = _stamp(self.persistence_file)
        self.proc.send_signal(signal.SIGUSR1)
        try:
            wait_until(
                lambda: _stamp(self.persistence_file) not in (None, before),
                timeout=timeout,
                what=f"mosquitto to write {self.persistence_file}",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.log_path.read_text()[-2000:]}") from None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        running = self.proc is not None and self.proc.poll() is None
        before = _stamp(self.persistence_file)
        super().stop(sig)
        if running and sig == signal.SIGTERM:
            after = _stamp(self.persistence_file)
            assert after not in (None, before), (
                f"mosquitto did not save {self.persistence_file} at shutdown:\n"
                f"{self.log_path.read_text()[-2000:]}"
            )


def mosquitto(workdir: Path) -> MosquittoServer:
    """Mosquitto configured as docs/mqtt.md requires, anonymous access, on a free loopback port.

    ``user root``: started as root, Mosquitto would switch to user ``mosquitto`` and could not
    write its persistence directory (ignored when not started as root). ``log_dest file``: the
    log's tail survives a SIGKILL (its stdout is block-buffered).
    """
    binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "user root\n"
        "persistence true\n"
        f"persistence_location {workdir}/\n"
        "autosave_interval 60\n"
        "max_queued_messages 0\n"
        "max_inflight_messages 1000\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
    )
    return MosquittoServer(
        "mosquitto", [binary, "-c", str(conf)], port, workdir, lambda s: port_open(s.port)
    )


def victoria_metrics(workdir: Path, *, auth: tuple[str, str] | None = None) -> ServerProcess:
    """VictoriaMetrics as docs/mqtt.md deploys it, with query results visible at once (no latency
    offset, no cache); ``auth`` (user, password) turns on HTTP Basic authentication.

    ``-dedup.minScrapeInterval=1ms``: a re-sent reading (same series, same millisecond) is stored
    once. It keeps one sample per 1 ms interval of a series; distinct readings of one series are
    at least 0.1 s apart (the shortest poll interval), so none is merged away.
    """
    binary = find_binary("victoria-metrics", "/usr/bin/victoria-metrics")
    port = free_port()
    argv = [
        binary,
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-storageDataPath={workdir}/vm-data",
        "-search.latencyOffset=0s",
        "-search.disableCache",
        "-dedup.minScrapeInterval=1ms",
        "-loggerLevel=WARN",
        "-retentionPeriod=100y",
    ]
    if auth is not None:
        argv += [f"-httpAuth.username={auth[0]}", f"-httpAuth.password={auth[1]}"]

    def healthy(server: ServerProcess) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=1) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    return ServerProcess("victoria-metrics", argv, port, workdir, healthy)


def vm_export(
    port: int, match: str = '{__name__!=""}', *, auth: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """All samples matching ``match``, one dict per series (VictoriaMetrics /api/v1/export)."""
    headers = {}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"

    def get(path: str) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as r:
            return bytes(r.read())

    get("/internal/force_flush")
    # An explicit end: the default ("now") would hide samples stamped ahead of this machine's clock.
    query = urllib.parse.urlencode({"match[]": match, "start": "0", "end": "4102444800"})
    return [
        json.loads(line) for line in get(f"/api/v1/export?{query}").splitlines() if line.strip()
    ]
