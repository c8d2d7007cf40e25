"""Issue 8, acceptance 5: SIGHUP reloads the configuration without losing or renumbering a reading.

`gateway run --simulate` runs the demo site as a child process with a systemd stand-in on
``NOTIFY_SOCKET``, while its broker is down, so every reading waits in the buffer. Then:

1. a file that does not validate: one log line, no traceback, the daemon runs on unchanged;
2. a file where only ``b1-water-meter``'s request timeout changed: only the bus of that device
   (building 1's Modbus TCP endpoint) restarts;
3. a file where its interval changed too (5 s -> 2 s), which the alarm rules depend on, and
   ``[buffer] commit_interval``: the daemon restarts in-process, and the device is then polled
   every 2 s.

Each reload is answered with READY=1 to systemd. Then the broker comes up: every sequence number
from 1 to the buffer's last is delivered, nothing is declared lost, and the subscriber sees each
reading (the bridge is not needed for the proof: the gateway's side of delivery is under test).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import sqlite3
from pathlib import Path

import pytest

from tests import servers
from tests.notify_peer import NotifyPeer
from tests.servers import wait_until
from tests.system.harness import GATEWAY, Process, buffer_state, site_config, ts_ms
from tests.system.mqtt_capture import MqttCapture

pytestmark = pytest.mark.system
WATER = "b1-water-meter"


def polls(buffer: Path, device: str) -> int:
    """Polls of ``device`` waiting in the buffer (the broker is down: nothing leaves it)."""
    with sqlite3.connect(buffer) as db:
        row = db.execute("SELECT count(DISTINCT ts_ms) FROM readings WHERE device = ?", (device,))
        return int(row.fetchone()[0])


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected one {old!r}"
    return text.replace(old, new)


def test_sighup_applies_a_good_file_and_keeps_running_on_a_bad_one(tmp_path: Path) -> None:
    (tmp_path / "mosquitto").mkdir()
    broker = servers.mosquitto(tmp_path / "mosquitto")
    broker.start()
    capture = MqttCapture(broker.port, topic="canary/#", client_id="reload-test").start()
    broker.stop()  # the subscriber's session persists: it gets everything once the broker is back

    path = site_config(tmp_path, broker=broker.port, tsdb=servers.free_port())
    original = path.read_text()
    water = original[original.index('id = "b1-water-meter"') :]
    water_block = water[: water.index("[[devices]]")] if "[[devices]]" in water else water
    peer = NotifyPeer()
    env = {**os.environ, "NOTIFY_SOCKET": peer.path}
    gateway = Process(
        "gateway", [GATEWAY, "run", "--simulate", "--config", str(path)], tmp_path, env=env
    )
    try:
        wait_until(lambda: peer.with_field("READY", "1"), timeout=60, what="READY=1")
        buffer = tmp_path / "buffer.sqlite3"
        wait_until(
            lambda: buffer.exists() and polls(buffer, WATER) >= 3, timeout=30, what="3 polls"
        )

        # 1. A bad file: refused in one line, the old configuration runs on.
        path.write_text(original.replace("interval = 5", "interval = 0", 1))
        gateway.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in gateway.output(), timeout=20, what="the refusal")
        assert len(peer.with_field("READY", "1")) == 2, "a refused reload still answers READY"
        assert gateway.proc.poll() is None

        # 2. Only one device's timeout: only its bus restarts.
        changed = replace_once(water_block, "interval = 5\n", "interval = 5\ntimeout = 1.0\n")
        path.write_text(original.replace(water_block, changed))
        gateway.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload: applied" in gateway.output(), timeout=20, what="the reload")
        applied = next(line for line in gateway.output().splitlines() if "reload: applied" in line)
        assert re.search(r"restarted bus modbus-tcp://127\.0\.0\.1:\d+$", applied), applied
        wait_until(lambda: len(peer.with_field("READY", "1")) == 3, timeout=10, what="READY")

        # 3. The interval (an input of the alarm rules) and another section: an in-process restart.
        changed = replace_once(changed, "interval = 5", "interval = 2")
        path.write_text(
            original.replace(water_block, changed).replace(
                "[buffer]\n", "[buffer]\ncommit_interval = 0.5\n", 1
            )
        )
        gateway.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "restarting in-process" in gateway.output(), timeout=20, what="restart")
        wait_until(lambda: len(peer.with_field("READY", "1")) == 4, timeout=60, what="READY")
        before = polls(buffer, WATER)
        wait_until(lambda: polls(buffer, WATER) >= before + 5, timeout=30, what="5 more polls")

        broker.start()
        backlog = buffer_state(buffer)[0]
        wait_until(
            lambda: {r["seq"] for r in capture.readings()} >= set(range(1, backlog + 1)),
            timeout=60,
            what="the backlog at the subscriber",
        )
        assert gateway.stop() == 0
        last, left = buffer_state(buffer)
        wait_until(
            lambda: {r["seq"] for r in capture.readings()} >= set(range(1, last + 1)),
            timeout=30,
            what="every reading at the subscriber",
        )
    finally:
        gateway.stop()
        capture.stop()
        broker.stop()
        peer.close()

    output = gateway.output()
    assert "Traceback" not in output, output
    assert left == 0, f"{left} readings stayed buffered"
    seqs = [r["seq"] for r in capture.readings()]
    assert set(seqs) == set(range(1, last + 1)), "a reading was lost or numbered out of range"
    assert not capture.declared_gaps(), "a reload declared readings lost"
    # The changed device was polled every 2 s after the reload, every 5 s before it.
    water_ts = sorted(
        {ts_ms(r["ts"]) for r in capture.readings() if r["device"] == "b1-water-meter"}
    )
    steps = [b - a for a, b in itertools.pairwise(water_ts)]
    assert any(abs(step - 5000) < 300 for step in steps[:3]), steps
    assert all(abs(step - 2000) < 300 for step in steps[-5:]), steps
