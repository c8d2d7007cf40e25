"""The seeded fault schedule of a chaos run: what happens when, and nothing else.

Three kinds of tracks run side by side:

- the **process track**, one fault at a time (each in its own time slot, so two faults never
  fight over the same process): SIGKILL and restart of the gateway (also while its broker link
  is black-holed, so that the kill lands while readings wait for the durable buffer), SIGSTOP and
  SIGCONT of the gateway, a clean broker restart, SIGKILL and restart of the broker, SIGKILL and
  restart of the bridge, SIGKILL and restart of VictoriaMetrics, and a clean broker restart while
  the bridge is away;
- one **network track** per proxied link (gateway -> broker, bridge -> broker, bridge -> store):
  connection drops, black-holes that end by resuming or by resetting, and added latency;
- the **second bridge** track: another bridge joins (same share group, its own client id) and
  later leaves for good.

Every schedule holds every kind at least once; longer ones repeat kinds at random. Times are
seconds from the start of the schedule; the whole schedule ends by ``length``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: One at a time, on the process track.
PROCESS_KINDS = (
    "gateway_kill",
    "gateway_kill_offline",
    "gateway_pause",
    "broker_restart",
    "broker_kill",
    "bridge_kill",
    "store_kill",
    "broker_restart_bridge_away",
)
#: On each link's own track.
NETWORK_KINDS = ("drop", "blackhole", "latency")
LINKS = ("gateway", "bridge", "store")
SECOND_BRIDGE = "second_bridge"
ALL_KINDS = (*PROCESS_KINDS, *NETWORK_KINDS, SECOND_BRIDGE)

#: Seconds of schedule per process fault (a slot); a fault uses at most 60 % of its slot.
PROCESS_SLOT = 5.5
#: Seconds of schedule per network fault on one link.
NETWORK_SLOT = 12.0


@dataclass(frozen=True)
class Fault:
    """One fault: starts ``at`` s into the schedule, lasts ``duration`` s (down, paused, held).

    ``link`` names the proxied link of a network fault; ``latency`` is the added delay of a
    ``latency`` fault; ``reset`` says whether a black-hole ends by resetting its connections;
    ``steps`` are the pauses between the steps of a composite fault
    (``broker_restart_bridge_away``: bridge away -> broker down -> broker up -> bridge back;
    ``gateway_kill_offline``: link black-holed -> kill -> restart -> link back).
    """

    at: float
    kind: str
    duration: float
    link: str | None = None
    latency: float = 0.0
    reset: bool = False
    steps: tuple[float, ...] = ()

    def describe(self) -> str:
        extra = ""
        if self.link:
            extra += f" on {self.link}"
        if self.kind == "latency":
            extra += f" +{self.latency * 1000:.0f} ms"
        if self.kind == "blackhole":
            extra += " then reset" if self.reset else " then resume"
        if self.steps:
            extra += " steps " + "/".join(f"{s:.1f}" for s in self.steps)
        return f"{self.at:6.1f} s  {self.kind}{extra} for {self.duration:.1f} s"


def make_schedule(
    seed: int, length: float, *, exclude: frozenset[str] = frozenset()
) -> list[Fault]:
    """The schedule for ``seed``: every kind at least once, more at random when ``length`` allows.

    ``exclude`` leaves kinds out (bench/chaos.py ``--without``), to tell which fault causes what.
    """
    unknown = exclude - set(ALL_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {ALL_KINDS}")
    rng = random.Random(seed)
    faults = _process_track(rng, length, tuple(k for k in PROCESS_KINDS if k not in exclude))
    network = tuple(k for k in NETWORK_KINDS if k not in exclude)
    for link in LINKS:
        faults += _network_track(rng, length, link, network)
    if SECOND_BRIDGE not in exclude:
        faults += _second_bridge_track(rng, length)
    return sorted(faults, key=lambda f: f.at)


def _slots(rng: random.Random, length: float, kinds: tuple[str, ...], slot: float) -> list[str]:
    count = max(len(kinds), int(length // slot))
    chosen = list(kinds) + [rng.choice(kinds) for _ in range(count - len(kinds))]
    rng.shuffle(chosen)
    return chosen


def _process_track(rng: random.Random, length: float, kinds_: tuple[str, ...]) -> list[Fault]:
    if not kinds_:
        return []
    kinds = _slots(rng, length, kinds_, PROCESS_SLOT)
    slot = length / len(kinds)
    faults = []
    for index, kind in enumerate(kinds):
        start = index * slot + rng.uniform(0, 0.3 * slot)
        budget = 0.6 * slot
        if kind == "gateway_pause":
            faults.append(Fault(start, kind, rng.uniform(1.0, min(6.0, budget))))
        elif kind == "broker_restart_bridge_away":
            steps = tuple(rng.uniform(0.2, budget / 3) for _ in range(3))
            faults.append(Fault(start, kind, sum(steps), steps=steps))
        elif kind == "gateway_kill_offline":
            # Black-holed long enough that readings wait for the durable buffer, then killed.
            steps = (rng.uniform(1.0, budget / 2), rng.uniform(0.1, budget / 4))
            faults.append(Fault(start, kind, sum(steps), link="gateway", steps=steps))
        else:
            faults.append(Fault(start, kind, rng.uniform(0.1, min(3.0, budget))))
    return faults


def _network_track(
    rng: random.Random, length: float, link: str, kinds_: tuple[str, ...]
) -> list[Fault]:
    if not kinds_:
        return []
    kinds = _slots(rng, length, kinds_, NETWORK_SLOT)
    slot = length / len(kinds)
    faults = []
    for index, kind in enumerate(kinds):
        start = index * slot + rng.uniform(0, 0.3 * slot)
        if kind == "drop":
            faults.append(Fault(start, kind, 0.0, link=link))
        elif kind == "blackhole":
            duration = rng.uniform(1.0, min(8.0, 0.6 * slot))
            faults.append(Fault(start, kind, duration, link=link, reset=rng.random() < 0.5))
        else:
            duration = rng.uniform(1.0, min(8.0, 0.6 * slot))
            faults.append(Fault(start, kind, duration, link=link, latency=rng.uniform(0.05, 0.5)))
    return faults


def _second_bridge_track(rng: random.Random, length: float) -> list[Fault]:
    joins = max(1, int(length // 120))
    slot = length / joins
    return [
        Fault(
            index * slot + rng.uniform(0.05, 0.4) * slot,
            SECOND_BRIDGE,
            rng.uniform(0.2, 0.5) * slot,
        )
        for index in range(joins)
    ]
