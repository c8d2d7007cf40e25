"""Device nodes: the serial port of each RTU line and each Linux I2C bus.

A node must exist, be a character device (a regular file or a FIFO at ``/dev/ttyUSB0`` is a
typo'd redirect or a leftover, never an adapter), and be readable and writable by the daemon.
When it is not, the message says how to fix it: the group to add the daemon's user to when the
node's group may read and write it, or a udev rule when only its owner may. Each node is checked
once, at the first device that uses it (the devices on one line share one port).
"""

from __future__ import annotations

import stat
from pathlib import PurePosixPath

from gateway.config import GatewayConfig, ModbusDevice, Pmsa003iDevice, RtuTransport, Scd4xDevice
from gateway.preflight.host import READ, WRITE, Host, kind
from gateway.preflight.problem import Problem


class _Node:
    """What kind of node a device uses, for the messages."""

    def __init__(self, *, noun: str, absent: str, subsystem: str, group: str) -> None:
        self.noun = noun
        self.absent = absent
        self.subsystem = subsystem
        self.group = group


SERIAL = _Node(
    noun="a serial device",
    absent="is the adapter plugged in? (ls -l /dev/serial/by-id/)",
    subsystem="tty",
    group="dialout",
)
I2C = _Node(
    noun="an I2C bus device",
    absent="enable I2C (raspi-config nonint do_i2c 0, or dtparam=i2c_arm=on) and reboot",
    subsystem="i2c-dev",
    group="i2c",
)


def device_nodes(config: GatewayConfig) -> list[tuple[str, PurePosixPath, _Node]]:
    """(key path, node, kind) of every node an enabled device opens, the first use of each."""
    found: dict[PurePosixPath, tuple[str, PurePosixPath, _Node]] = {}
    for index, device in enumerate(config.devices):
        if not device.enabled:
            continue
        if isinstance(device, ModbusDevice) and isinstance(device.transport, RtuTransport):
            key, path, node = f"devices[{index}].transport.port", device.transport.port, SERIAL
        elif isinstance(device, Scd4xDevice | Pmsa003iDevice) and device.bus.startswith("/dev/"):
            key, path, node = f"devices[{index}].bus", device.bus, I2C
        else:
            continue
        found.setdefault(PurePosixPath(path), (key, PurePosixPath(path), node))
    return list(found.values())


def check_node(host: Host, key: str, path: PurePosixPath, node: _Node) -> list[Problem]:
    """``path`` is a character device the daemon may read and write."""
    try:
        st = host.stat(path)
    except FileNotFoundError:
        return [Problem(key, f"expected {node.noun}", f"{path}: no such device; {node.absent}")]
    except OSError as exc:
        return [Problem(key, f"expected {node.noun}", f"{path}: {exc.strerror}")]
    if not stat.S_ISCHR(st.st_mode):
        return [
            Problem(key, f"expected {node.noun}", f"{path}: {kind(st)}, not a character device")
        ]
    denied = host.denied(path, READ | WRITE)
    if denied is None:
        return []
    who = host.identity.name
    group = host.group_name(st.st_gid)
    if st.st_mode & 0o060 == 0o060 and st.st_gid != 0 and not denied.startswith("directory"):
        fix = f"add {who} to group {group} (sudo usermod -aG {group} {who})"
    elif not denied.startswith("directory"):
        fix = (
            f'give the node a group with a udev rule, e.g. SUBSYSTEM=="{node.subsystem}", '
            f'GROUP="{node.group}", MODE="0660"'
        )
    else:
        fix = "make its directory searchable"
    return [
        Problem(key, f"expected {node.noun} {who} can read and write: {fix}", f"{path}: {denied}")
    ]


def check_nodes(host: Host, config: GatewayConfig) -> list[Problem]:
    """Every serial port and Linux I2C bus the enabled devices use."""
    return [
        p for key, path, node in device_nodes(config) for p in check_node(host, key, path, node)
    ]
