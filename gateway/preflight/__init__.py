"""``gateway check``: what would fail when the daemon starts, found before it starts.

`load_config` answers "is this file a valid configuration". `preflight` answers "would the daemon
start with it on this machine", statically (no network, no device traffic): secrets resolvable
(`secrets`), TLS files loadable and valid now (`secrets`), the buffer's directory writable with
room for its cap (`storage`), panel images writable under the unit's sandbox (`storage`), serial
and I2C device nodes present and accessible (`nodes`). Each is judged for the daemon's user, not
for whoever runs the check (`host`). Every problem is one `Problem`, all of them are reported.

``--connect`` goes further (`gateway.preflight.connect`): the broker and every device, once.
"""

from __future__ import annotations

from gateway.config import GatewayConfig
from gateway.preflight.host import Host, daemon_host
from gateway.preflight.nodes import check_nodes
from gateway.preflight.problem import Problem
from gateway.preflight.secrets import check_secret, check_tls
from gateway.preflight.storage import check_buffer, check_panels

__all__ = ["Host", "Problem", "daemon_host", "preflight"]


def preflight(config: GatewayConfig, *, host: Host, simulate: bool = False) -> list[Problem]:
    """Every problem the daemon would meet at start with ``config`` on ``host``, in file order.

    ``simulate``: the devices come from their simulators (``gateway run --simulate``), so their
    device nodes are not checked. What only ``gateway bridge`` reads (``[influxdb]``) is not
    checked either: this is the gateway daemon's start.
    """
    problems: list[Problem] = []
    mqtt = config.mqtt
    if mqtt.password is not None:
        problems += check_secret(host, "mqtt.password", mqtt.password)
    if mqtt.tls is not None:
        problems += check_tls(host, mqtt.tls)
    problems += check_buffer(host, config.buffer)
    problems += check_panels(host, config.status)
    if not simulate:
        problems += check_nodes(host, config)
    return problems
