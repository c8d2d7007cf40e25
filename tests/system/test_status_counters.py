"""Counters a technician can read (issue 15, item 6): every fault a hostile device injected shows
on the real broker's status topic in its own class, per device and per shared endpoint, and the
clean stop's offline status carries the final counts.

The device is `tests.drivers.hostile_tcp.HostileTcpServer` (written for the tests from the Modbus
specifications, not the project's simulator): two units behind one TCP endpoint, one of them
scripted to misbehave, the other healthy.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from gateway.app import GatewayRuntime, run_gateway
from gateway.config import load_config
from tests.drivers.hostile_tcp import HostileTcpServer
from tests.servers import ServerProcess
from tests.system.mqtt_capture import MqttCapture

pytestmark = pytest.mark.system

#: One injected fault per class the endpoint can tell apart, and how it is counted.
INJECTED = {
    "wrong_function": "wrong_function",
    "tid0_replay": "wrong_tid",
    "foreign_tid": "wrong_tid",
    "wrong_unit": "wrong_unit",
    "short_answer": "byte_count",
    "exception-0x02": "exception-0x02",
    "exception-0x0b": "exception-0x0b",
}


def config_text(tmp_path: Path, *, broker: int, port: int) -> str:
    devices = "\n".join(
        f"""
[[devices]]
id = "{name}"
driver = "modbus"
unit_id = {unit}
interval = 0.2
timeout = 0.5
transport = {{ kind = "tcp", host = "127.0.0.1", port = {port} }}
points = [
  {{ key = "voltage_l1", register = "input", address = 0, type = "float32", unit = "V" }},
  {{ key = "current_l1", register = "input", address = 6, type = "float32", unit = "A" }},
]"""
        for name, unit in (("meter-hostile", 2), ("meter-healthy", 1))
    )
    return f"""
[site]
id = "kg-counters"

[mqtt]
host = "127.0.0.1"
port = {broker}

[buffer]
path = "{tmp_path / "buffer.sqlite3"}"
commit_interval = 0.5

[clock]
sync = "none"
{devices}
"""


def test_injected_faults_are_on_the_status_topic_and_in_the_final_offline_status(
    tmp_path: Path, broker: ServerProcess
) -> None:
    async def scenario() -> None:
        async with HostileTcpServer(units=(1, 2)) as server:
            path = tmp_path / "gateway.toml"
            path.write_text(config_text(tmp_path, broker=broker.port, port=server.port))
            config = load_config(path)
            # A good answer after each fault: the unit recovers at once, so the scheduler's backoff
            # stays short and the test quick.
            server.script(2, *(step for fault in INJECTED for step in (fault, "ok")))
            stop = asyncio.Event()
            runtimes: list[GatewayRuntime] = []
            task = asyncio.create_task(run_gateway(config, stop=stop, started=runtimes.append))

            def hostile_done() -> bool:
                states = [d for p in runtimes[:1] for d in p.pollers[0].devices] if runtimes else []
                return (
                    server.pending(2) == 0
                    and bool(states)
                    and all(s.available and s.polls >= 3 for s in states)
                )

            deadline = asyncio.get_running_loop().time() + 60
            while not hostile_done():
                assert asyncio.get_running_loop().time() < deadline, "the script never ran out"
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 30)

    capture = MqttCapture(broker.port, "canary/kg-counters/status").start()
    try:
        asyncio.run(scenario())
    finally:
        capture.stop()
    statuses = [m.json() for m in capture.snapshot()]
    final = statuses[-1]
    assert final["state"] == "offline", statuses[-3:]
    expected = Counter(INJECTED.values())
    assert final["devices"]["meter-hostile"]["faults"] == dict(expected)
    assert final["devices"]["meter-healthy"]["faults"] == {}
    assert final["devices"]["meter-healthy"]["errors"] == {}
    # Every injected fault failed exactly one poll of the hostile unit, in its coarse class.
    errors = final["devices"]["meter-hostile"]["errors"]
    assert sum(errors.values()) == len(INJECTED), errors
    (endpoint,) = final["lines"]
    assert endpoint.startswith("modbus-tcp://127.0.0.1:")
    line = final["lines"][endpoint]
    polls = sum(d["polls"] for d in final["devices"].values())
    assert line["transactions"] >= polls + len(INJECTED)
