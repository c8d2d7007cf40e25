"""The whole real path in separate processes: simulated devices -> gateway -> Mosquitto -> bridge ->
VictoriaMetrics, and the count that proves nothing was lost on the way.

How "every reading polled" is known independently of the store: sequence numbers are assigned at
poll time, one per reading, and the buffer's high-water mark (``meta.last_seq``) is the number of
readings polled. A test subscriber records what crossed the broker, and the store is read back with
VictoriaMetrics' export API.
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ServerProcess, free_port, wait_until
from tests.system.harness import (
    DEMO_DEVICES,
    GATEWAY,
    Process,
    buffer_state,
    site_config,
    stored,
    stored_series,
    ts_ms,
)
from tests.system.mqtt_capture import MqttCapture, unexplained


@pytest.mark.system
@pytest.mark.parametrize("payload", ["v1", "v2"])
def test_every_polled_reading_reaches_the_store(
    tmp_path: Path,
    broker: ServerProcess,
    tsdb: ServerProcess,
    processes: list[Process],
    payload: str,
) -> None:
    """In both payload versions: every reading polled crosses the broker in messages that
    validate against the version's schema, and the store holds each once, with its unit."""
    config = site_config(
        tmp_path, broker=broker.port, tsdb=tsdb.port, mqtt=f'payload = "{payload}"'
    )
    capture = MqttCapture(broker.port, "canary/#").start()
    try:
        bridge = Process("bridge", [GATEWAY, "bridge", "--config", str(config)], tmp_path)
        processes.append(bridge)
        # The bridge's persistent session exists on the broker from its first SUBACK on.
        wait_until(
            lambda: "subscribed to" in bridge.output(), timeout=20, what="the bridge to subscribe"
        )
        gateway = Process(
            "gateway", [GATEWAY, "run", "--simulate", "--config", str(config)], tmp_path
        )
        processes.append(gateway)

        def polled_three_times() -> bool:
            # One poll = one timestamp per device, whatever metrics its driver reports.
            per_device = Counter(d for d, _ in {(r["device"], r["ts"]) for r in capture.readings()})
            return set(per_device) == DEMO_DEVICES and min(per_device.values()) >= 3

        wait_until(
            polled_three_times,
            timeout=60,
            what=f"three polls of every device\n{gateway.output()[-3000:]}",
        )
        assert gateway.stop() == 0, gateway.output()
        last_seq, pending = buffer_state(tmp_path / "buffer.sqlite3")
        assert pending == 0, "a clean stop with the broker up must leave the buffer empty"

        wait_until(
            lambda: len(stored(tsdb.port, "seq")) >= last_seq,
            timeout=30,
            what=f"{last_seq} readings in the store (bridge log: {bridge.output()[-2000:]})",
            step=0.5,
        )
    finally:
        capture.stop()

    readings = capture.readings()
    assert capture.invalid == []
    assert capture.versions == {int(payload[1])}
    # Everything polled crossed the broker: sequence numbers 1..N with no gap.
    assert {r["seq"] for r in readings} == set(range(1, last_seq + 1))
    # ... and reached the store, exactly once per reading (replays overwrite the same point).
    seqs = stored(tsdb.port, "seq")
    assert sorted(seqs.values()) == [float(s) for s in range(1, last_seq + 1)]
    by_key: dict[tuple[str, str, int], dict[str, Any]] = {
        (r["device"], r["metric"], ts_ms(r["ts"])): r for r in readings
    }
    assert Counter((d, m) for d, m, _ in seqs) == Counter((d, m) for d, m, _ in by_key)
    # Values per device and metric, at the reading's own timestamp.
    values = stored(tsdb.port, "value")
    expected = {key: float(r["value"]) for key, r in by_key.items() if r["value"] is not None}
    assert values.keys() == expected.keys()
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, rel=1e-12), key
    assert {d for d, _, _ in values} == DEMO_DEVICES
    # The same series as on the wire, with the unit (v2: from the retained description).
    assert stored_series(tsdb.port, "seq") == {
        (r["device"], r["metric"], r["unit"]) for r in readings
    }
    if payload == "v2":
        descriptions = {m.topic for m in capture.snapshot() if "/devices/" in m.topic}
        assert descriptions == {f"canary/kg-sunflower/devices/{d}" for d in DEMO_DEVICES}
    statuses = [m.json() for m in capture.snapshot() if m.topic == "canary/kg-sunflower/status"]
    assert statuses[-1]["state"] == "offline"
    # The clean stop's offline status carries the final counters: every device, its polls (at
    # least the three seen on the wire), and the shared transports.
    final = statuses[-1]
    assert set(final["devices"]) == DEMO_DEVICES
    polls_seen = Counter(d for d, _ in {(r["device"], r["ts"]) for r in readings})
    for device, entry in final["devices"].items():
        assert entry["polls"] >= polls_seen[device] >= 3, (device, entry)
        assert {"available", "errors", "faults", "no_value"} <= entry.keys(), (device, entry)
    assert final["buffer"]["pending"] == 0
    assert isinstance(final["lines"], dict)


@pytest.mark.system
def test_gateway_killed_and_restarted_against_a_separate_simulator_process(
    tmp_path: Path, broker: ServerProcess, tsdb: ServerProcess, processes: list[Process]
) -> None:
    """`python -m simulators` keeps the devices up while the gateway dies by SIGKILL and restarts:
    numbering continues above everything the killed gateway may have used, the restart declares
    the crash's gap on the events topic, and nothing polled is missing outside that gap."""
    config = site_config(
        tmp_path,
        broker=broker.port,
        tsdb=tsdb.port,
        modbus_ports=(free_port(), free_port()),
        i2c_ports=(free_port(), free_port()),
    )
    ready = tmp_path / "simulators.ready"
    sims = Process(
        "simulators",
        [sys.executable, "-m", "simulators", "--config", str(config), "--ready-file", str(ready)],
        tmp_path,
    )
    processes.append(sims)
    wait_until(ready.exists, timeout=20, what=f"the simulators to listen\n{sims.output()}")
    capture = MqttCapture(broker.port, "canary/kg-sunflower/#", client_id="e2e-capture").start()
    try:
        first = Process("gateway-1", [GATEWAY, "run", "--config", str(config)], tmp_path)
        processes.append(first)
        wait_until(
            lambda: {r["device"] for r in capture.readings()} == DEMO_DEVICES,
            timeout=60,
            what=f"readings from every device\n{first.output()[-3000:]}",
        )
        first.stop(signal.SIGKILL)
        seq_at_kill = max(r["seq"] for r in capture.readings())

        second = Process("gateway-2", [GATEWAY, "run", "--config", str(config)], tmp_path)
        processes.append(second)
        wait_until(
            lambda: len(capture.declared_gaps()) == 1,
            timeout=30,
            what=f"the restarted gateway to declare the crash's gap\n{second.output()[-3000:]}",
        )
        ((gap_from, gap_to),) = capture.declared_gaps()
        wait_until(
            lambda: max(r["seq"] for r in capture.readings()) > gap_to + 30,
            timeout=60,
            what=f"polling after the restart\n{second.output()[-3000:]}",
        )
        assert second.stop() == 0, second.output()
        last_seq, pending = buffer_state(tmp_path / "buffer.sqlite3")
        assert pending == 0
        wait_until(
            lambda: (
                not unexplained(
                    {r["seq"] for r in capture.readings()}, last_seq, capture.declared_gaps()
                )
            ),
            timeout=20,
            what="every reading on the broker",
        )
    finally:
        capture.stop()
    assert sims.stop() == 0, sims.output()
    seqs = {r["seq"] for r in capture.readings()}
    # Numbering continued above every number the killed gateway may have used (its reservation),
    # and the gap it declared covers whatever the kill lost. (How much a kill may lose, at most
    # one commit window of polls, is proven on the per-device poll grid by the chaos test.)
    assert gap_from <= seq_at_kill + 1 <= gap_to + 1
    assert min(s for s in seqs if s > seq_at_kill) > gap_to
    assert not unexplained(seqs, last_seq, {(gap_from, gap_to)})
