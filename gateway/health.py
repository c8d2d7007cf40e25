"""Is the daemon doing its job? One verdict for the local status and ``/healthz``.

The gateway is healthy unless one of two things stopped, neither of which the daemon recovers
from by itself:

- **A bus task hangs.** Each bus task records its progress (`gateway.scheduler.BusPoller.progress`:
  its start, and the end of every open and poll, answered, failed or not ready). A bus waiting for
  its next grid slot, or backing off a dead device, is not late: it is judged from the later of
  its last progress and its earliest due time. It is stalled when that lies further back than its
  *deadline*: the largest ``interval + guard`` of its devices (``guard`` bounds one open or poll,
  see `gateway.scheduler.DeviceState`). A dead device costs a bus a timeout per attempt, never a
  stall; a driver that ignores its timeout, or a poll stuck on a hung storage thread, does.
- **The buffer stopped writing.** A polled reading waits in memory until the broker acknowledges
  it or, at the latest after one ``[buffer] commit_interval``, it is written to the card
  (`gateway.buffer.writebehind`). A reading still only in memory `COMMIT_GRACE` seconds after that
  means the commits stopped advancing (a failing or hung card) while readings keep coming: a
  power cut now would lose all of them.

A broker that is away is *not* unhealthy: buffering through an outage is the daemon's job, and a
restart would not bring the uplink back. The local status shows the broker separately.

`verdict` reads only what the daemon keeps in memory (no storage call, no await), so it answers
even when the storage thread hangs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.scheduler import BusPoller

if TYPE_CHECKING:
    from gateway.app import GatewayRuntime

#: Beyond ``[buffer] commit_interval``, how long a reading may wait in memory to be written: a
#: commit on a slow SD card takes seconds, not half a minute.
COMMIT_GRACE = 30.0


@dataclass(frozen=True)
class Verdict:
    """``ok``, or the problems found, one sentence each (naming the bus or the buffer)."""

    ok: bool
    problems: tuple[str, ...]


def bus_deadline(poller: BusPoller) -> float:
    """How long ``poller`` may go without progress while a device is due (module docstring)."""
    return max((d.interval + d.guard for d in poller.devices), default=0.0)


def bus_quiet(poller: BusPoller, now: float) -> float:
    """Seconds ``poller`` has been due without progress at monotonic time ``now`` (<= 0: none)."""
    due = min((d.next_due for d in poller.devices), default=now)
    return now - max(poller.progress, due)


def verdict(runtime: GatewayRuntime, now: float) -> Verdict:
    """The health of ``runtime`` at ``now`` (``time.monotonic()``); see the module docstring."""
    problems: list[str] = []
    for poller in runtime.pollers:
        if not poller.devices:
            continue
        quiet, deadline = bus_quiet(poller, now), bus_deadline(poller)
        if quiet > deadline:
            problems.append(
                f"{poller.name}: no progress for {quiet:.0f} s (deadline {deadline:.0f} s)"
            )
    staged_at = runtime.buffer.oldest_unwritten_at
    if staged_at is not None:
        waited = now - staged_at
        deadline = runtime.config.buffer.commit_interval + COMMIT_GRACE
        if waited > deadline:
            problems.append(
                f"buffer: {runtime.buffer.unwritten} readings not written to the card, the "
                f"oldest for {waited:.0f} s (deadline {deadline:.0f} s)"
            )
    return Verdict(ok=not problems, problems=tuple(problems))
