"""``gateway check --connect``: after the static checks, reach the broker and every device once.

The broker: one MQTT CONNECT with the configured credentials and TLS, built by the daemon's own
`gateway.mqtt_client.make_client`, under a client id of its own and a clean session (the
daemon's persistent session, if it is running, is left alone); the CONNACK must accept. A refusal
names paho's reason and its code; a connection that fails before (refused, unreachable, a TLS
handshake the broker rejects) says why in the words of the OS or OpenSSL.

The devices: each enabled device in file order, through the real drivers (`gateway.registry`)
and the read path of ``gateway read`` (`gateway.measure`), one progress line each as it goes,
e.g. ``[3/11] b1-main-meter ... ok (14 values, 41 ms)``, or the fault class and message. A
PMSA003I is not waited through its warm-up: a frame read and checked proves the chip answers.
With ``simulate`` the devices are their simulators (`gateway.simulate`); the broker is real.

Exit code 0 when everything answered, 1 otherwise (a run-time failure, not a config problem).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from contextlib import AsyncExitStack
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from gateway.config import GatewayConfig, MqttConfig, Pmsa003iDevice
from gateway.errors import DeviceError
from gateway.measure import measure
from gateway.mqtt_client import make_client, reason_text, ssl_reason
from gateway.registry import BusRegistry, build_driver

#: Seconds to wait for the broker's CONNACK after the connection is up.
CONNACK_TIMEOUT = 10.0
#: Seconds a device may take to deliver one measurement (an SCD4x's first is 5 s after start).
DEVICE_BOUND = 30.0


def connect_broker(
    config: MqttConfig, *, client_id: str, timeout: float = CONNACK_TIMEOUT
) -> str | None:
    """Connect once and wait for the CONNACK (blocking: run it in a thread). Returns None when
    the broker accepted, else why not, in one line."""
    client = make_client(config, client_id=client_id, clean_session=True)
    answer: list[Any] = []
    client.on_connect = lambda c, u, flags, rc, props: answer.append(rc)
    try:
        client.connect(config.host, config.port, keepalive=config.keepalive)
    except OSError as exc:
        return f"cannot connect: {ssl_reason(exc)}"
    deadline = time.monotonic() + timeout
    lost = mqtt.MQTT_ERR_SUCCESS
    try:
        while not answer and time.monotonic() < deadline and lost == mqtt.MQTT_ERR_SUCCESS:
            lost = client.loop(timeout=0.2)
    finally:
        client.disconnect()
    if not answer and lost != mqtt.MQTT_ERR_SUCCESS:
        # TLS 1.3 completes the client's handshake before the server has checked its certificate:
        # a refused (or missing) client certificate shows up as this, not as a TLS error.
        return (
            "the broker closed the connection before its CONNACK (a missing or unknown client"
            " certificate? see the broker's log)"
        )
    if not answer:
        return f"no CONNACK within {timeout:.0f} s"
    code = answer[0]
    if getattr(code, "is_failure", False):
        return f"refused the connection: {reason_text(code)} (reason code {code.value})"
    return None


def _broker_label(config: MqttConfig) -> str:
    extras = [f"user {config.username}"] if config.username else []
    extras += ["TLS"] if config.tls is not None else []
    return f"mqtt {config.host}:{config.port}" + (f" ({', '.join(extras)})" if extras else "")


async def check_online(config: GatewayConfig, *, simulate: bool, out: TextIO | None = None) -> int:
    """The broker, then every enabled device, reported on ``out`` (default: stdout); see the
    module docstring. Returns the exit code."""
    out = out if out is not None else sys.stdout
    failed = 0
    out.write(f"{_broker_label(config.mqtt)} ... ")
    out.flush()
    started = time.monotonic()
    client_id = f"canary-check-{config.site.id}-{os.getpid()}"
    problem = await asyncio.to_thread(connect_broker, config.mqtt, client_id=client_id)
    elapsed = (time.monotonic() - started) * 1000
    out.write(f"ok (CONNACK accepted, {elapsed:.0f} ms)\n" if problem is None else f"{problem}\n")
    failed += problem is not None
    async with AsyncExitStack() as stack:
        buses = BusRegistry()
        if simulate:
            from gateway.simulate import simulated  # noqa: PLC0415 - simulators on demand

            config, buses, _site = await stack.enter_async_context(simulated(config))
        devices = config.enabled_devices()
        for index, device in enumerate(devices, start=1):
            out.write(f"[{index}/{len(devices)}] {device.id} ... ")
            out.flush()
            warmup = device.warmup_s if isinstance(device, Pmsa003iDevice) else 0.0
            started = time.monotonic()
            try:
                found = await measure(
                    build_driver(device, buses),
                    bound=DEVICE_BOUND,
                    warmup_s=warmup,
                    wait_warmup=False,
                )
            except DeviceError as exc:
                out.write(f"{exc.fault}: {exc}\n")
                failed += 1
                continue
            ms = (time.monotonic() - started) * 1000
            if found.withheld:
                out.write(
                    f"ok (answers; values withheld during its {warmup:.0f} s warm-up, {ms:.0f} ms)\n"
                )
            else:
                out.write(f"ok ({found.count} values, {ms:.0f} ms)\n")
    checked = len(devices) + 1
    out.write(f"all {checked} reachable\n" if not failed else f"{failed} of {checked} failed\n")
    return 0 if not failed else 1
