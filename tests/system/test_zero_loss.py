"""Issue 5: zero readings lost, proven by fault injection against real Mosquitto and VictoriaMetrics.

Each test runs the gateway (and the bridge) as separate processes against the simulated demo site,
injects one fault, ends with a clean stop, and then proves the count from the time-series store or
from a persistent test subscriber: every sequence number 1..N that the buffer handed out.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.buffer import SqliteBuffer
from gateway.model import Reading, utc_ms
from tests.servers import ServerProcess, free_port, wait_until
from tests.system.harness import GATEWAY, Process, buffer_state, site_config, stored
from tests.system.mqtt_capture import MqttCapture, unexplained

pytestmark = pytest.mark.system


def meta(path: Path) -> dict[str, int]:
    """The buffer's counters, read while the gateway runs (WAL allows a concurrent reader);
    all 0 until the gateway has created the file."""
    counters = {"last_seq": 0, "dropped": 0}
    if path.exists():
        # OperationalError: the gateway is creating the schema right now.
        with (
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db,
            contextlib.suppress(sqlite3.OperationalError),
        ):
            counters.update(db.execute("SELECT key, value FROM meta").fetchall())
    return counters


def store_seqs(tsdb: ServerProcess) -> list[float]:
    return sorted(stored(tsdb.port, "seq").values())


def start_bridge(tmp_path: Path, config: Path, name: str = "bridge") -> Process:
    bridge = Process(name, [GATEWAY, "bridge", "--config", str(config)], tmp_path)
    wait_until(lambda: "subscribed to" in bridge.output(), timeout=20, what=f"{name} to subscribe")
    return bridge


def stop_gateway_and_wait_for_store(
    gateway: Process, tmp_path: Path, tsdb: ServerProcess, *, wait: bool = True
) -> int:
    """Clean stop (drains the buffer), then (``wait``) wait until the store holds every sequence
    number up to the last one handed out."""
    assert gateway.stop() == 0, gateway.output()[-3000:]
    last_seq, pending = buffer_state(tmp_path / "buffer.sqlite3")
    assert pending == 0, gateway.output()[-3000:]
    if wait:
        wait_until(
            lambda: len(store_seqs(tsdb)) >= last_seq,
            timeout=60,
            what=f"{last_seq} readings in the store",
            step=0.5,
        )
    return last_seq


def test_broker_outage_leaves_no_gap(
    tmp_path: Path, broker: ServerProcess, tsdb: ServerProcess, processes: list[Process]
) -> None:
    config = site_config(
        tmp_path, broker=broker.port, tsdb=tsdb.port, buffer="commit_interval = 0.5"
    )
    processes.append(start_bridge(tmp_path, config))
    gateway = Process("gateway", [GATEWAY, "run", "--simulate", "--config", str(config)], tmp_path)
    processes.append(gateway)
    db = tmp_path / "buffer.sqlite3"
    # With the broker up, live readings are delivered from memory and hardly touch the file.
    wait_until(lambda: len(store_seqs(tsdb)) > 50, timeout=60, what="first polls in the store")

    broker.stop()  # Mosquitto saves the bridge's session on the way down
    at_stop = max(store_seqs(tsdb))
    wait_until(
        lambda: meta(db)["last_seq"] > at_stop + 100, timeout=60, what="polling during the outage"
    )
    broker.start()

    last_seq = stop_gateway_and_wait_for_store(gateway, tmp_path, tsdb)
    assert last_seq > at_stop + 100
    assert store_seqs(tsdb) == [float(s) for s in range(1, last_seq + 1)]


def test_store_down_then_bridge_killed_leaves_no_gap(
    tmp_path: Path, broker: ServerProcess, tsdb: ServerProcess, processes: list[Process]
) -> None:
    config = site_config(
        tmp_path, broker=broker.port, tsdb=tsdb.port, buffer="commit_interval = 0.5"
    )
    bridge = start_bridge(tmp_path, config)
    processes.append(bridge)
    gateway = Process("gateway", [GATEWAY, "run", "--simulate", "--config", str(config)], tmp_path)
    processes.append(gateway)
    wait_until(lambda: len(store_seqs(tsdb)) > 30, timeout=60, what="first points in the store")

    tsdb.stop()
    wait_until(
        lambda: "not accepting writes" in bridge.output(), timeout=30, what="the bridge to notice"
    )
    time.sleep(3)  # messages pile up unacknowledged in the bridge and in its broker session
    bridge.stop(signal.SIGKILL)
    tsdb.start()
    processes.append(start_bridge(tmp_path, config, "bridge-2"))

    last_seq = stop_gateway_and_wait_for_store(gateway, tmp_path, tsdb)
    assert store_seqs(tsdb) == [float(s) for s in range(1, last_seq + 1)]


def test_buffer_cap_drops_exactly_the_oldest_undelivered_and_polling_goes_on(
    tmp_path: Path, broker: ServerProcess, processes: list[Process]
) -> None:
    cap = 150
    config = site_config(
        tmp_path,
        broker=broker.port,
        tsdb=1,
        buffer=f"commit_interval = 0.2\nmax_readings = {cap}",
    )
    capture = MqttCapture(broker.port, "canary/kg-sunflower/#", client_id="cap-capture").start()
    capture.stop()
    broker.stop()  # the gateway starts into an outage; the capture's session waits in Mosquitto
    gateway = Process("gateway", [GATEWAY, "run", "--simulate", "--config", str(config)], tmp_path)
    processes.append(gateway)
    db = tmp_path / "buffer.sqlite3"
    wait_until(lambda: meta(db)["dropped"] > 50, timeout=90, what="drops")
    polled_before = meta(db)["last_seq"]
    wait_until(
        lambda: meta(db)["last_seq"] > polled_before + 40, timeout=30, what="polling after drops"
    )

    broker.start()
    capture = MqttCapture(broker.port, "canary/kg-sunflower/#", client_id="cap-capture").start()
    try:
        wait_until(
            lambda: buffer_state(db)[1] == 0,
            timeout=60,
            what="the buffer to drain after the outage",
        )
        assert gateway.stop() == 0, gateway.output()[-3000:]
        counters = meta(db)
        last_seq, dropped = counters["last_seq"], counters["dropped"]
        seqs = set(range(1, last_seq + 1))
        wait_until(
            lambda: len(received(capture)) >= last_seq - dropped,
            timeout=20,
            what="everything not dropped on the broker",
        )
    finally:
        capture.stop()

    missing = sorted(seqs - received(capture))
    # Exactly the documented readings: the oldest undelivered ones. The gateway started into the
    # outage, so nothing was in flight: the drops are exactly 1..dropped.
    assert dropped > 0
    assert missing == list(range(1, dropped + 1))
    # The counter is on the status topic.
    statuses = [m.json() for m in capture.snapshot() if m.topic == "canary/kg-sunflower/status"]
    reported = [s["buffer"]["dropped"] for s in statuses if "buffer" in s]
    assert reported and max(reported) == dropped
    assert "buffer full: dropped" in gateway.output()
    # The alarm fired: an event, and the retained state counts exactly the dropped readings.
    alarms = [
        m.json()
        for m in capture.snapshot()
        if m.topic == "canary/kg-sunflower/alarms/gateway/buffer_dropped"
    ]
    events = [
        m.json()
        for m in capture.snapshot()
        if m.topic == "canary/kg-sunflower/events" and m.json()["alarm"] == "buffer_dropped"
    ]
    assert alarms and alarms[-1]["state"] == "active" and alarms[-1]["value"] == dropped
    assert events and events[0]["state"] == "active"


def received(capture: MqttCapture) -> set[int]:
    return {r["seq"] for r in capture.readings()}


def prefill(path: Path, count: int) -> None:
    """A backlog of ``count`` readings, as if the gateway had been offline, stamped in the past."""
    start = utc_ms(datetime.now(UTC) - timedelta(days=1))
    buffer = SqliteBuffer(path)
    buffer.append(
        [
            Reading(
                device="b1-main-meter",
                metric="backfill",
                value=float(seq),
                unit="W",
                ts=start + timedelta(seconds=seq),
                seq=seq,
            )
            for seq in range(1, count + 1)
        ]
    )
    buffer.close()


def test_sigkill_while_the_backlog_drains_loses_nothing(
    tmp_path: Path, broker: ServerProcess, tsdb: ServerProcess, processes: list[Process]
) -> None:
    """SIGKILL the gateway 20 times at random moments while 30,000 buffered readings drain."""
    kills, backlog, max_inflight, batch = 20, 30_000, 10, 500
    config = site_config(
        tmp_path,
        broker=broker.port,
        tsdb=tsdb.port,
        modbus_ports=(free_port(), free_port()),
        i2c_ports=(free_port(), free_port()),
        buffer="commit_interval = 0.2",
        mqtt=f"max_inflight = {max_inflight}\nbacklog_rate = 1500",
    )
    db = tmp_path / "buffer.sqlite3"
    prefill(db, backlog)
    ready = tmp_path / "simulators.ready"
    sims = Process(
        "simulators",
        [sys.executable, "-m", "simulators", "--config", str(config), "--ready-file", str(ready)],
        tmp_path,
    )
    processes.append(sims)
    wait_until(ready.exists, timeout=20, what="the simulators")
    processes.append(start_bridge(tmp_path, config))
    capture = MqttCapture(broker.port, "canary/kg-sunflower/#", client_id="kill-capture")
    capture.start()
    rng = random.Random(2)
    try:
        for kill in range(kills):
            gateway = Process(
                f"gateway-{kill}", [GATEWAY, "run", "--config", str(config)], tmp_path
            )
            processes.append(gateway)
            wait_until(
                lambda g=gateway: "connected to MQTT broker" in g.output(),  # type: ignore[misc]
                timeout=30,
                what=f"gateway {kill} to connect",
            )
            time.sleep(rng.uniform(0.05, 0.6))
            gateway.stop(signal.SIGKILL)
        assert buffer_state(db)[1] > 0, "the backlog must still be draining at the last kill"
        final = Process("gateway-final", [GATEWAY, "run", "--config", str(config)], tmp_path)
        processes.append(final)
        wait_until(lambda: buffer_state(db)[1] == 0, timeout=120, what="the backlog to drain")
        last_seq = stop_gateway_and_wait_for_store(final, tmp_path, tsdb, wait=False)
        wait_until(
            lambda: not unexplained(received(capture), last_seq, capture.declared_gaps()),
            timeout=30,
            what="every reading on the broker",
        )
    finally:
        capture.stop()

    seqs = [r["seq"] for r in capture.readings()]
    # Each kill declared the numbers it may have used as a gap; nothing is missing outside them,
    # and the whole prefilled backlog (never in a gap: it was stored before the first start) is there.
    gaps = capture.declared_gaps()
    assert len(gaps) == kills
    assert not unexplained(set(seqs), last_seq, gaps), "a gap nobody declared"
    assert set(range(1, backlog + 1)) <= set(seqs)
    duplicates = len(seqs) - len(set(seqs))
    window = max_inflight * batch
    print(f"{kills} kills: {duplicates} duplicate readings (bound {kills} x {window})")
    assert duplicates <= kills * window
    # Harmless in the store: every reading once, duplicates collapsed onto the same point.
    wait_until(
        lambda: len(store_seqs(tsdb)) >= len(set(seqs)), timeout=60, what="the store", step=0.5
    )
    assert store_seqs(tsdb) == sorted(float(s) for s in set(seqs))
