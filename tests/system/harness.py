"""Shared harness for system tests: child processes, the demo site's config with test ports, and
read-back from the buffer file and the time-series store."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from tests.servers import RUNNING, vm_export

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = str(Path(sys.executable).with_name("gateway"))
DEMO_DEVICES = {
    "b1-main-meter",
    "b1-aircon-meter",
    "b1-room-ladybird",
    "b1-room-ladybird-pm",
    "b2-main-meter",
    "b2-aircon-meter",
    "b2-room-hedgehog",
    "b2-room-hedgehog-pm",
    "b1-pv-inverter",
    "b1-water-meter",
    "b2-water-meter",
}


def site_config(
    tmp_path: Path,
    *,
    broker: int,
    tsdb: int,
    modbus_ports: tuple[int, int] = (15021, 15022),
    i2c_ports: tuple[int, int] = (17101, 17102),
    buffer: str = "",
    mqtt: str = "",
) -> Path:
    """gateway/demo.toml with this test's broker, store, buffer and device ports; ``buffer`` and
    ``mqtt`` are extra TOML lines for those sections."""
    text = (ROOT / "gateway" / "demo.toml").read_text()
    replacements = {
        "port = 1883": f"port = {broker}",
        "http://127.0.0.1:8428": f"http://127.0.0.1:{tsdb}",
        'path = "/tmp/canary-gateway-demo/buffer.sqlite3"': (
            f'path = "{tmp_path / "buffer.sqlite3"}"\n{buffer}'
        ),
        'topic_prefix = "canary"': f'topic_prefix = "canary"\n{mqtt}',
        "/tmp/canary-gateway-demo/panels": str(tmp_path / "panels"),
        "port = 15021": f"port = {modbus_ports[0]}",
        "port = 15022": f"port = {modbus_ports[1]}",
        "127.0.0.1:17101": f"127.0.0.1:{i2c_ports[0]}",
        "127.0.0.1:17102": f"127.0.0.1:{i2c_ports[1]}",
        # System tests check delivery, not values: skip the PM warm-up so that every device has
        # values within seconds (warm-up is covered by tests/drivers/test_pmsa003i_driver.py).
        "warmup_s = 30": "warmup_s = 0",
    }
    for old, new in replacements.items():
        assert old in text, f"gateway/demo.toml no longer contains {old!r}; update this test"
        text = text.replace(old, new)
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


class Process:
    """A gateway/bridge/simulator child process with its output in a log file."""

    def __init__(
        self, name: str, argv: list[str], tmp_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log = tmp_path / f"{name}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env
            )
        RUNNING.add(self.proc)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            RUNNING.discard(self.proc)
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def buffer_state(path: Path) -> tuple[int, int]:
    """(last sequence number, readings still buffered) read straight from the SQLite file."""
    with sqlite3.connect(path) as db:
        last = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0]
        pending = db.execute("SELECT count(*) FROM readings").fetchone()[0]
    return int(last), int(pending)


def stored(tsdb: int, suffix: str) -> dict[tuple[str, str, int], float]:
    """(device, metric, timestamp ms) -> value for every ``<metric>_<suffix>`` series in the store."""
    out: dict[tuple[str, str, int], float] = {}
    for row in vm_export(tsdb, f'{{__name__=~".+_{suffix}"}}'):
        metric = row["metric"]["__name__"].removesuffix(f"_{suffix}")
        for value, ts in zip(row["values"], row["timestamps"], strict=True):
            out[(row["metric"]["device"], metric, ts)] = value
    return out


def stored_series(tsdb: int, suffix: str) -> set[tuple[str, str, str]]:
    """(device, metric, unit) of every ``<metric>_<suffix>`` series in the store."""
    return {
        (
            row["metric"]["device"],
            row["metric"]["__name__"].removesuffix(f"_{suffix}"),
            row["metric"].get("unit", ""),
        )
        for row in vm_export(tsdb, f'{{__name__=~".+_{suffix}"}}')
    }


def stored_gaps(tsdb: int) -> set[tuple[int, int]]:
    """The declared gaps (first, last) the bridge stored (``gap_first`` / ``gap_last``)."""
    first = {
        (r["metric"]["site"], t): int(v)
        for r in vm_export(tsdb, '{__name__="gap_first"}')
        for v, t in zip(r["values"], r["timestamps"], strict=True)
    }
    last = {
        (r["metric"]["site"], t): int(v)
        for r in vm_export(tsdb, '{__name__="gap_last"}')
        for v, t in zip(r["values"], r["timestamps"], strict=True)
    }
    return {(first[key], last[key]) for key in first.keys() & last.keys()}


def ts_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)
