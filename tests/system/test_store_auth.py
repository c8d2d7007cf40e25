"""Issue 16, acceptance 3: a bridge given a wrong credential dead-letters nothing, raises the
alarm, and stores everything once the credential is fixed.

Real VictoriaMetrics with HTTP Basic authentication (``-httpAuth.username/-httpAuth.password``),
real Mosquitto, the bridge's writer built from ``[influxdb]`` as ``gateway bridge`` builds it
(``auth = "basic"``, the secret in a credentials file). What a user expects when a token is
rotated: fix the credentials file; the bridge reads it again before each retry, no restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.bridge.influx import InfluxWriter
from gateway.bridge.service import Bridge
from gateway.config import parse_config
from gateway.model import Reading, to_epoch_ms, utc_ms
from gateway.telemetry import encode_telemetry
from tests import servers
from tests.gateway.test_bridge import publish, until
from tests.servers import ServerProcess, vm_export
from tests.system.mqtt_capture import MqttCapture

pytestmark = pytest.mark.system

AUTH = ("canary", "s3cret-1")
ALARM = "canary/kg/alarms/canary-bridge-kg/store_refused"


@pytest.fixture
def secured_tsdb(tmp_path: Path) -> Iterator[ServerProcess]:
    workdir = tmp_path / "vm-auth"
    workdir.mkdir()
    server = servers.victoria_metrics(workdir, auth=AUTH)
    server.start()
    yield server
    server.stop()


def test_a_wrong_credential_dead_letters_nothing_alarms_and_everything_is_stored_once_fixed(
    tmp_path: Path,
    broker: ServerProcess,
    secured_tsdb: ServerProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.bridge")
    secret = tmp_path / "influx-credentials"
    secret.write_text("canary:wrong\n")
    secret.chmod(0o600)
    config = parse_config(
        {
            "site": {"id": "kg"},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "influxdb": {
                "url": f"http://127.0.0.1:{secured_tsdb.port}",
                "org": "o",
                "bucket": "b",
                "auth": "basic",
                "token": {"file": str(secret)},
                "flush_interval": 0.1,
            },
            "bridge": {"ack_delay": 2},
        },
        source="test",
    )
    assert config.influxdb is not None
    start = utc_ms(datetime.now(UTC) - timedelta(hours=1))
    readings = [
        Reading(
            device=f"room-{seq % 4}",
            metric="co2",
            value=400.0 + seq,
            unit="ppm",
            ts=start + timedelta(seconds=seq),
            seq=seq,
        )
        for seq in range(1, 101)
    ]
    by_device: dict[str, list[Reading]] = {}
    for r in readings:
        by_device.setdefault(r.device, []).append(r)
    sent = [
        (f"canary/kg/telemetry/{device}", encode_telemetry("kg", device, group[i : i + 5]))
        for device, group in by_device.items()
        for i in range(0, len(group), 5)
    ]
    capture = MqttCapture(broker.port, "canary/kg/#").start()

    async def main() -> Bridge:
        assert config.influxdb is not None
        bridge = Bridge(config=config, writer=InfluxWriter.from_config(config.influxdb))
        task = asyncio.create_task(bridge.run())
        try:
            await asyncio.wait_for(bridge.subscribed.wait(), 10)
            await asyncio.to_thread(publish, broker.port, sent)
            await until(lambda: bridge.stats.write_failures >= 4, 60, "four refused writes")
            assert bridge.stats.dead_letters == 0
            assert bridge.stats.messages_acked == 0
            assert bridge.held == len(sent)
            await until(lambda: any(m.topic == ALARM for m in capture.snapshot()), 10, "the alarm")
            secret.write_text(f"{AUTH[0]}:{AUTH[1]}\n")  # the administrator fixes the file
            await until(
                lambda: bridge.stats.messages_acked == len(sent),
                120,
                "everything written and acknowledged",
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return bridge

    try:
        bridge = asyncio.run(main())
        seen = capture.snapshot()
    finally:
        capture.stop()

    assert bridge.stats.dead_letters == 0
    assert not [m for m in seen if m.topic.endswith("/deadletter")]
    states = [m.json() for m in seen if m.topic == ALARM]
    assert [(s["state"], s["value"]) for s in states] == [("active", 401), ("clear", 204)]
    events = [m.json() for m in seen if m.topic == "canary/kg/events"]
    assert [(e["alarm"], e["state"]) for e in events] == [
        ("store_refused", "active"),
        ("store_refused", "clear"),
    ]
    refused = [r for r in caplog.records if "refuses writes" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    assert "401" in refused[0].getMessage()
    assert len([r for r in caplog.records if "accepting writes again" in r.getMessage()]) == 1
    # Every reading once, with its own value and seq.
    rows = vm_export(secured_tsdb.port, '{__name__=~"co2_(seq|value)"}', auth=AUTH)
    got: dict[tuple[str, str, int], list[float]] = {}
    for row in rows:
        for value, ts in zip(row["values"], row["timestamps"], strict=True):
            got.setdefault((row["metric"]["__name__"], row["metric"]["device"], ts), []).append(
                value
            )
    expected = {}
    for r in readings:
        expected[("co2_seq", r.device, to_epoch_ms(r.ts))] = [float(r.seq)]
        expected[("co2_value", r.device, to_epoch_ms(r.ts))] = [float(r.value)]  # type: ignore[arg-type]
    assert got == expected
