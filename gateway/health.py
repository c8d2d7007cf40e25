"""Whether the running daemon is alive in the sense that matters: its loops make progress.

The verdict feeds the systemd watchdog (`gateway.app`: ``WATCHDOG=1`` only while it is ok) and the
local health endpoint. It is about *hangs*, which a restart cures, never about the world outside:
a dead meter, an unreachable broker or a full card are reported in the status, but a restart
would not fix them and would cost the readings in memory, so they never fail the verdict.

- **A bus task** is hung when it is past its `gateway.scheduler.BusPoller.deadline`: a driver
  step that outlived its own bounds (a close() blocked on a stuck I2C or serial call), or a loop
  that did not wake up when it planned to.
- **The buffer** is hung when one storage call on its thread (a commit, a begin, an
  acknowledgement) has run longer than `STORAGE_DEADLINE`: a card that stopped answering, or a
  wedged SQLite lock. A call that *fails* returns quickly and is retried (the buffer's own
  contract); only one that never returns counts.

A blocked event loop needs no check of its own: the watchdog's pings come from the same loop, so
they stop with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.scheduler import BusPoller

if TYPE_CHECKING:
    from gateway.app import GatewayRuntime

#: Longest one storage call may run. Generous: a commit of a large backlog, or the limits' prune
#: of a full buffer, takes seconds on a slow SD card; a hung card takes forever.
STORAGE_DEADLINE = 120.0


@dataclass(frozen=True)
class Verdict:
    """``ok`` unless something is hung; ``problems`` says what, one short phrase each."""

    ok: bool
    problems: tuple[str, ...] = ()


def verdict(runtime: GatewayRuntime, now: float) -> Verdict:
    """The daemon's verdict at monotonic time ``now`` (``time.monotonic()``)."""
    return judge(runtime.pollers, runtime.buffer.worker.busy_since, now)


def judge(pollers: Sequence[BusPoller], storage_busy_since: float | None, now: float) -> Verdict:
    """The verdict from its parts (see the module docstring)."""
    problems = [
        f"{poller.name}: no progress for {now - poller.deadline:.0f} s past its deadline"
        for poller in pollers
        if now > poller.deadline
    ]
    if storage_busy_since is not None and now - storage_busy_since > STORAGE_DEADLINE:
        problems.append(f"buffer: one storage call has run for {now - storage_busy_since:.0f} s")
    return Verdict(ok=not problems, problems=tuple(problems))


def summary(runtime: GatewayRuntime, verdict: Verdict, pending: int) -> str:
    """The one-line status systemd shows (``systemctl status gateway``)."""
    devices = [state for poller in runtime.pollers for state in poller.devices]
    failing = sum(1 for state in devices if not state.available)
    broker = "connected" if runtime.publisher.connected.is_set() else "not connected"
    line = (
        f"{len(devices)} devices ({failing} failing), {pending} readings buffered, broker {broker}"
    )
    if not verdict.ok:
        line = "HUNG: " + "; ".join(verdict.problems) + " | " + line
    return line
