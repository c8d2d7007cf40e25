"""Issue 16, item 4 and acceptance 2 (second half): the supported Mosquitto topology survives a
broker restart while the bridge is away.

Mosquitto 2.0.11 does not persist ``$share`` subscriptions: after a restart, messages for a shared
group went to nobody until a member re-subscribed (654 readings lost in the chaos run). The bridge
now uses a plain persistent subscription per site, which Mosquitto does persist. The bridge runs as
its own process (``gateway bridge``); messages are published both before the broker restarts and
after, while the bridge is still away; when it returns, the store holds every reading once.
"""

from __future__ import annotations

import os
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.model import Reading, utc_ms
from gateway.telemetry import encode_telemetry
from tests import servers
from tests.gateway.test_bridge import publish
from tests.servers import MosquittoServer, ServerProcess, wait_until
from tests.system.harness import GATEWAY, Process, stored

pytestmark = pytest.mark.system


def bridge_toml(tmp_path: Path, broker: int, tsdb: int) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(
        f"""
[site]
id = "city"

[mqtt]
host = "127.0.0.1"
port = {broker}

[influxdb]
url = "http://127.0.0.1:{tsdb}"
org = "o"
bucket = "b"

[bridge]
client_id = "bridge-north"
sites = ["kg-a", "kg-b"]
ack_delay = 2
"""
    )
    return path


def messages(first_seq: int, count: int) -> list[tuple[str, bytes]]:
    """``count`` messages of 5 readings, alternating between the two sites."""
    start = utc_ms(datetime.now(UTC) - timedelta(hours=2))
    out = []
    for m in range(count):
        site = ("kg-a", "kg-b")[m % 2]
        readings = [
            Reading(
                device="meter",
                metric="power",
                value=float(seq),
                unit="W",
                ts=start + timedelta(seconds=seq),
                seq=seq,
            )
            for seq in range(first_seq + 5 * m, first_seq + 5 * m + 5)
        ]
        out.append((f"canary/{site}/telemetry/meter", encode_telemetry(site, "meter", readings)))
    return out


def start_bridge(tmp_path: Path, config: Path, name: str) -> Process:
    bridge = Process(name, [GATEWAY, "bridge", "--config", str(config)], tmp_path)
    wait_until(lambda: "subscribed to" in bridge.output(), timeout=20, what=f"{name} to subscribe")
    return bridge


def test_broker_restart_while_the_bridge_is_away_loses_nothing(
    tmp_path: Path, broker: MosquittoServer, tsdb: ServerProcess, processes: list[Process]
) -> None:
    config = bridge_toml(tmp_path, broker.port, tsdb.port)
    first = start_bridge(tmp_path, config, "bridge-1")
    processes.append(first)
    assert first.stop() == 0, first.output()  # the bridge goes away; its session stays

    before = messages(1, 40)  # 200 readings, PUBACKed by the broker while nobody consumes
    publish(broker.port, before)
    broker.stop()  # a clean restart: the fixture asserts Mosquitto saved its persistence file
    broker.start()
    after = messages(201, 40)  # published before the bridge is back
    publish(broker.port, after)

    second = start_bridge(tmp_path, config, "bridge-2")
    processes.append(second)
    wait_until(
        lambda: len(stored(tsdb.port, "seq")) >= 400,
        timeout=60,
        what=f"400 readings in the store\n{second.output()[-2000:]}",
        step=0.5,
    )
    assert second.stop() == 0, second.output()
    seqs = sorted(stored(tsdb.port, "seq").values())
    assert seqs == [float(s) for s in range(1, 401)]


def test_the_broker_fixture_really_persists(tmp_path: Path, broker: MosquittoServer) -> None:
    """A queued message of a persistent session survives a restart (not just a file that exists)."""
    assert broker.persistence_file.stat().st_size > 0  # written by the fixture's start-up save

    def client(client_id: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.connect("127.0.0.1", broker.port)
        return c

    got: list[bytes] = []
    subscribed = threading.Event()
    session = client("fixture-check")
    session.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    session.loop_start()
    session.subscribe("fixture/check", qos=1)
    wait_until(subscribed.is_set, timeout=5, what="the subscription")
    session.disconnect()
    session.loop_stop()
    publish(broker.port, [("fixture/check", b"queued")])
    broker.stop()
    broker.start()
    again = client("fixture-check")
    again.on_message = lambda c, u, msg: got.append(bytes(msg.payload))
    again.loop_start()
    try:
        wait_until(lambda: got == [b"queued"], timeout=10, what="the queued message")
    finally:
        again.disconnect()
        again.loop_stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="Mosquitto drops privileges only when root")
def test_the_fixture_fails_when_mosquitto_cannot_write_its_persistence(tmp_path: Path) -> None:
    """Without ``user root`` Mosquitto, started as root, cannot save: the fixture must say so
    instead of running the test without persistence."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir(mode=0o700)
    server = servers.mosquitto(workdir)
    conf = workdir / "mosquitto.conf"
    conf.write_text(conf.read_text().replace("user root\n", ""))
    with pytest.raises(AssertionError, match="mosquitto to write"):
        server.start()
    server.stop(signal.SIGKILL)
