"""Chaos run (issue 16): the real chain under a long, seeded schedule of every fault kind.

Real Mosquitto (docs/mqtt.md settings), real VictoriaMetrics (with deduplication), the simulated
demo site in its own process, the gateway and the bridge as separate processes, and fault proxies
written for the test between gateway and broker, bridge and broker, bridge and store. Faults:
gateway SIGKILL (also while its link is black-holed), SIGSTOP/SIGCONT, broker clean restart and
SIGKILL, bridge SIGKILL, VictoriaMetrics SIGKILL, a broker restart while the bridge is away,
connection drops, black-holes, latency, and a second bridge joining and leaving (when
``[bridge] share_group`` exists). Then every process must recover by itself, and the checker
proves from the store: every polled reading stored once with its published value, or inside a gap
the gateway declared after a crash, and no more than one commit window lost per crash
(tests/chaos/checker.py states each check).

    .venv/bin/python bench/chaos.py                          # seed 1, 600 s
    .venv/bin/python bench/chaos.py --seeds 1 2 3 --length 300
    .venv/bin/python bench/chaos.py --without store_kill second_bridge --no-share
    .venv/bin/python bench/chaos.py --recheck /tmp/chaos-xyz/seed-1/chaos-inputs.json

Exit status 1 when any seed has a problem (``--ignore-gaps``: not counting the declared-gap
contract's own checks), 2 when a process did not recover by itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos import checker  # noqa: E402
from tests.chaos.run import load, run  # noqa: E402
from tests.chaos.schedule import ALL_KINDS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--length", type=float, default=600.0, help="seconds of faults per seed")
    parser.add_argument("--without", nargs="+", default=[], choices=ALL_KINDS, metavar="KIND")
    parser.add_argument("--no-share", action="store_true", help="one bridge, plain subscription")
    parser.add_argument("--commit-interval", type=float, default=2.0)
    parser.add_argument("--poll-interval", type=float, default=2.0, help="all but the SCD4x")
    parser.add_argument("--ignore-gaps", action="store_true", help="judge without item 2")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="write every seed's figures here")
    parser.add_argument("--recheck", type=Path, help="re-run the checker on kept inputs")
    args = parser.parse_args(argv)
    if args.recheck:
        report = checker.check(**load(args.recheck))
        print(report.summary())
        return 1 if report.failures(declared_gaps=not args.ignore_gaps) else 0

    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    results, status = [], 0
    try:
        for seed in args.seeds:
            folder = workdir / f"seed-{seed}"
            folder.mkdir()
            try:
                outcome = run(
                    seed,
                    args.length,
                    folder,
                    share_group=None if args.no_share else "chaos",
                    exclude=frozenset(args.without),
                    commit_interval=args.commit_interval,
                    poll_interval=args.poll_interval,
                )
            except AssertionError as exc:
                print(f"seed {seed}: did not recover by itself: {exc}")
                results.append({"seed": seed, "recovered": False, "error": str(exc)})
                status = 2
                continue
            print(outcome.summary(), flush=True)
            report = outcome.report
            failures = report.failures(declared_gaps=not args.ignore_gaps)
            if failures and status == 0:
                status = 1
            results.append(
                {
                    "seed": seed,
                    "recovered": True,
                    "figures": report.figures,
                    "kills": report.kills,
                    "problems": report.problems,
                    "gap_problems": report.gap_problems,
                    "seconds": outcome.seconds,
                }
            )
    finally:
        if args.keep or status:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
