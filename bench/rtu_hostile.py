"""Hostile RS-485 line, long run (issue 15): a seeded mix of every fault class, counted.

The same production path and checks as ``tests/system/test_rtu_hostile.py`` (one hostile
SDM630-like unit and two healthy ones at 9600 baud, 1 s timeout, polled by `BusPoller`), with
``--faults`` faults drawn at random from every class instead of one each. Prints what was
injected, what the line counted, the line's own counters, the healthy units' polls, the number
of wrong values (every value is traced to the request it answered) and every broken promise.
Exits 1 if there is one.

    .venv/bin/python bench/rtu_hostile.py [--faults 150] [--seed 15]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hostile_run import ALL_FAULTS, check, run_line, summary  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=150, help="faults to inject")
    parser.add_argument("--seed", type=int, default=15, help="seed of the mix and the peer")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    # Every class at least once, the rest drawn at random.
    actions = list(ALL_FAULTS) + [
        rng.choice(ALL_FAULTS) for _ in range(max(0, args.faults - len(ALL_FAULTS)))
    ]
    outcome = asyncio.run(run_line(actions, seed=args.seed, within=10.0 * len(actions)))
    print(summary(outcome))
    problems = check(outcome)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("no broken promise" if not problems else f"{len(problems)} broken promises")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
