"""``gateway demo``: the simulated site, an embedded broker and a live view, in one command.

The embedded broker (amqtt) exists only so that a newcomer sees readings flow without installing
anything; real installations publish to Mosquitto. The buffer lives in a temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from gateway.app import run_gateway
from gateway.config import BufferConfig, GatewayConfig
from gateway.errors import GatewayError
from gateway.mqtt_client import LoopBridge, make_client

#: Values shown per message; an inverter reports ~75 metrics, too many for one terminal line.
SHOWN_METRICS = 6

#: The simulated reference site, `gateway demo`'s default configuration. It is package data (not a
#: file of the checkout), so the demo works wherever the package is installed; setuptools installs
#: packages as plain directories, so a path next to this module is a real file.
DEMO_CONFIG = Path(__file__).with_name("demo.toml")


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run_demo(
    config: GatewayConfig, *, stop: asyncio.Event, duration: float | None, out: TextIO = sys.stdout
) -> None:
    """Run the demo until ``stop`` is set or ``duration`` seconds passed."""
    try:
        from amqtt.broker import Broker  # noqa: PLC0415 - optional dependency, demo only
    except ImportError as exc:
        raise GatewayError(
            "gateway demo needs the embedded broker of the optional 'demo' extra: "
            "pip install 'canary-gateway[demo]' (the Debian package does not include it)"
        ) from exc

    port = free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    print(
        f"demo: embedded MQTT broker on 127.0.0.1:{port}; site {config.site.id!r} simulated; "
        "Ctrl-C to stop",
        file=out,
        flush=True,
    )
    for room in config.status.rooms:
        if room.panel is not None and room.panel.path is not None:
            print(f"demo: {room.name} panel -> {room.panel.path}", file=out, flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="canary-demo-") as tmp:
            mqtt_config = config.mqtt.model_copy(update={"host": "127.0.0.1", "port": port})
            demo_config = config.model_copy(
                update={
                    "mqtt": mqtt_config,
                    "buffer": BufferConfig(path=Path(tmp) / "buffer.sqlite3"),
                }
            )
            watcher = _watch(demo_config, out)
            try:
                gateway = asyncio.create_task(run_gateway(demo_config, stop=stop, simulate=True))
                if duration is not None:
                    asyncio.get_running_loop().call_later(duration, stop.set)
                await gateway
            finally:
                watcher.disconnect()
                await asyncio.to_thread(watcher.loop_stop)
    finally:
        await broker.shutdown()


def _watch(config: GatewayConfig, out: TextIO) -> mqtt.Client:
    """Subscribe to the site's topics and print each message as one line."""
    bridge = LoopBridge()
    client = make_client(
        config.mqtt, client_id=f"canary-demo-watch-{config.site.id}", clean_session=True
    )
    prefix = f"{config.mqtt.topic_prefix}/{config.site.id}"
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/#", qos=1)
    client.on_message = lambda c, u, msg: bridge.call(_show, msg.topic, bytes(msg.payload), out)
    client.connect_async(config.mqtt.host, config.mqtt.port)
    client.loop_start()
    return client


def _show(topic: str, payload: bytes, out: TextIO) -> None:
    try:
        body: Any = json.loads(payload)
    except ValueError:
        print(f"{topic}: {payload[:80]!r}", file=out, flush=True)
        return
    if "readings" not in body:
        print(f"{topic}: {body}", file=out, flush=True)
        return
    first = body["readings"][0]
    readings = body["readings"]
    values = "  ".join(
        f"{r['metric']}={_fmt(r['value'])}{'' if r['value'] is None else ' ' + r['unit']}"
        for r in readings[:SHOWN_METRICS]
    )
    if len(readings) > SHOWN_METRICS:
        values += f"  (+{len(readings) - SHOWN_METRICS} more)"
    print(
        f"{first['ts'][11:19]}  {body['device']:<22} seq {first['seq']:>6}  {values}",
        file=out,
        flush=True,
    )


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
