"""Configuration reload on SIGHUP: what changed, and what it takes to apply it.

The rule (applied by `gateway.app`): the new file is validated first, and a file that does not
validate changes nothing (one log line; the daemon runs on with the old configuration). A valid
file is applied with the least disturbance that is still exact:

- **Only devices changed**: the bus tasks whose devices changed are stopped (their drivers closed,
  their shared transport dropped) and started afresh; the other buses go on polling untouched,
  so their grids and a particle sensor's warm-up are not reset. The buffer, the sequence numbers
  and the MQTT session are untouched: no gap, nothing lost.
- **Anything else changed** (``[site]``, ``[mqtt]``, ``[buffer]``, ``[clock]``, ``[status]``, or
  what the status service takes from the devices: their ids, kinds and intervals when rooms are
  configured, since the alarm rules are built from them):
  the daemon stops cleanly in-process (polling ends, everything in memory is written to the
  buffer, a clean finish) and starts again with the new file. The buffer is reopened and the
  numbering continues above its floor, so this also loses nothing and declares no gap; what is
  buffered is published on the new connection. Telegraf's reload restarts everything the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import GatewayConfig, ModbusDevice, Pmsa003iDevice, Scd4xDevice, SunSpecDevice

Device = ModbusDevice | SunSpecDevice | Scd4xDevice | Pmsa003iDevice
#: Sections the gateway daemon does not read (only `gateway bridge` does): a change is no reason
#: to restart it.
NOT_READ = frozenset({"influxdb", "bridge"})


@dataclass
class Reloads:
    """The channel between the SIGHUP handler and the running daemon."""

    #: Loads and validates the configuration file (raises `gateway.errors.ConfigError`).
    load: Callable[[], GatewayConfig]
    requested: asyncio.Event = field(default_factory=asyncio.Event)

    def request(self) -> None:
        """Called from the signal handler: reload at the daemon's next opportunity."""
        self.requested.set()


@dataclass(frozen=True)
class Plan:
    """How to go from one valid configuration to the next."""

    #: Top-level sections other than ``devices`` that changed: any of them means a full restart.
    sections: tuple[str, ...]
    #: Bus keys whose set of devices changed, appeared, or disappeared.
    buses: tuple[str, ...]

    @property
    def restart(self) -> bool:
        return bool(self.sections)

    @property
    def unchanged(self) -> bool:
        return not self.sections and not self.buses


def plan(
    old: GatewayConfig,
    new: GatewayConfig,
    *,
    watched: Callable[[GatewayConfig], object] | None = None,
) -> Plan:
    """Compare two validated configurations (see the module docstring).

    ``watched`` (`gateway.status.engine.inputs`) is what the status service takes from the
    devices: when it differs, the change is one of ``status`` too (the alarm rules' silence
    limits come from the devices' intervals), so the daemon restarts instead."""
    sections = tuple(
        name
        for name in type(new).model_fields
        if name != "devices" and name not in NOT_READ and getattr(old, name) != getattr(new, name)
    )
    if watched is not None and "status" not in sections and watched(old) != watched(new):
        sections += ("status (the devices its alarm rules watch)",)
    before, after = by_bus(old), by_bus(new)
    buses = tuple(
        key for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)
    )
    return Plan(sections=sections, buses=buses)


def by_bus(config: GatewayConfig) -> dict[str, list[Device]]:
    """The enabled devices grouped by bus key, in file order (one bus task each)."""
    groups: dict[str, list[Device]] = {}
    for device in config.enabled_devices():
        groups.setdefault(device.bus_key(), []).append(device)
    return groups
