"""Hostile Modbus TCP endpoint, long run (issue 15): a seeded mix of every fault kind, counted.

The same production path and checks as the scheduler test of
``tests/drivers/test_modbus_tcp_hostile.py``: two SDM630 units behind one endpoint of the
byte-level hostile server written for the tests (`tests/drivers/hostile_tcp.py`), one of them
following a script of ``--faults`` faults drawn at random from every kind the server injects
(each followed by clean answers), the other healthy, both polled through the registry's one shared
connection by `BusPoller`. Prints what was injected, what the connection counted per class, the
connection's own counters, the polls, the number of values not traceable to their own poll's
valid answer, and every broken promise. Exits 1 if there is one.

    .venv/bin/python bench/tcp_hostile.py [--faults 300] [--seed 15]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.drivers.hostile_tcp import HostileTcpServer  # noqa: E402
from tests.drivers.test_modbus_tcp_hostile import (  # noqa: E402
    EXPECTED,
    TIMEOUT,
    Bus,
    _device,
    assert_traced,
)


async def scenario(faults: list[str]) -> tuple[Bus, float]:
    async with HostileTcpServer(units=[1, 2]) as server:
        bus = Bus.build(
            server,
            [
                _device(server, "hostile", 1, interval=0.1),
                _device(server, "healthy", 2, interval=0.6),
            ],
        )
        server.script(1, "ok", "ok")
        for fault in faults:
            failing = EXPECTED[fault][0] is not None
            server.script(1, fault, *(["ok", "ok"] if failing else ["ok"]))
        started = time.monotonic()
        await bus.run_until(lambda: server.pending(1) == 0, within=30 + 2.0 * len(faults))
        return bus, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=300, help="faults to inject")
    parser.add_argument("--seed", type=int, default=15, help="seed of the mix")
    args = parser.parse_args()
    kinds = sorted(k for k in EXPECTED if k != "ok")
    rng = random.Random(args.seed)
    faults = [rng.choice(kinds) for _ in range(args.faults)]
    bus, elapsed = asyncio.run(scenario(faults))

    expected: Counter[str] = Counter()
    for fault in faults:
        expected += EXPECTED[fault][1]
    expected_errors = Counter(
        EXPECTED[f][0].kind  # type: ignore[union-attr]
        for f in faults
        if EXPECTED[f][0] is not None
    )
    registers = bus.registry.modbus_tcp(bus.server.host, bus.server.port, TIMEOUT)
    problems: list[str] = []
    for unit, name in ((1, "hostile"), (2, "healthy")):
        try:
            assert_traced(bus.server, unit, bus.traced[name].polls)
        except AssertionError as exc:
            problems.append(f"{name}: {str(exc)[:500]}")
    if registers.faults(1) != expected:
        problems.append(f"hostile faults {dict(registers.faults(1))} != injected {dict(expected)}")
    if registers.faults(2) or bus.states["healthy"].errors:
        problems.append(f"healthy charged: {registers.faults(2)} {bus.states['healthy'].errors}")
    if bus.states["hostile"].errors != expected_errors:
        problems.append(f"poll errors {bus.states['hostile'].errors} != {expected_errors}")
    try:
        bus.assert_on_grid("healthy")
    except AssertionError as exc:
        problems.append(f"healthy missed a grid slot: {exc}")

    print(f"{args.faults} faults (seed {args.seed}) in {elapsed:.1f} s")
    print(f"injected: {dict(sorted(Counter(faults).items()))}")
    print(f"counted:  {dict(sorted(registers.faults(1).items()))}")
    print(f"connection: {registers.counters()}")
    print(
        f"polls: hostile {len(bus.traced['hostile'].polls)} ok / "
        f"{sum(bus.states['hostile'].errors.values())} failed; "
        f"healthy {len(bus.traced['healthy'].polls)} ok / "
        f"{sum(bus.states['healthy'].errors.values())} failed"
    )
    print(f"values published: {len(bus.readings)}; broken promises: {len(problems)}")
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
