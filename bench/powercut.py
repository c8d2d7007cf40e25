"""Power-cut benchmark (issue 16): many simulated power cuts of the gateway's buffer, per setting.

The long variant of `tests/system/test_power_cut.py`: the same harness (`tests.powercut`: a FUSE
filesystem that drops what was not fsynced, the gateway's poller, sequence counter, buffer worker
and SQLite buffer in a child process, cuts while polling and draining, during start-up, and
inside commits and checkpoints), with more cuts and longer runs between them, so that the buffer
grows through SQLite checkpoints. Prints, per ``synchronous`` setting, the counts: cuts, cuts
inside a commit, integrity failures, committed readings lost (and in how many cuts), loss beyond
one commit window, readings lost from the window, sequence numbers published twice with different
content, numbers handed out again. Needs FUSE (``/dev/fuse``, Debian ``fuse3``, ``mfusepy``).

    .venv/bin/python bench/powercut.py [--cuts 200] [--run-seconds 2] [--commit-interval 0.2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.powercut.fs import PowerCutDisk  # noqa: E402
from tests.powercut.simulation import run_power_cuts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=int, default=200, help="power cuts per setting")
    parser.add_argument(
        "--run-seconds", type=float, default=2.0, help="scale of a run between cuts"
    )
    parser.add_argument("--commit-interval", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--settings", nargs="+", default=["FULL", "NORMAL"])
    parser.add_argument("--progress", action="store_true", help="print the counts after each cut")
    args = parser.parse_args()
    for setting in args.settings:
        with tempfile.TemporaryDirectory(prefix=f"powercut-{setting}-") as tmp:
            workdir = Path(tmp)
            started = time.monotonic()
            with PowerCutDisk(workdir / "disk") as disk:
                found = run_power_cuts(
                    disk,
                    workdir,
                    synchronous=setting,
                    cuts=args.cuts,
                    seed=args.seed,
                    run_seconds=args.run_seconds,
                    commit_interval=args.commit_interval,
                    progress=args.progress,
                )
            print(f"{found.summary()}; {time.monotonic() - started:.0f} s", flush=True)
            if found.committed_losses:
                print(f"  (cut, committed readings lost, at stake): {found.committed_losses}")


if __name__ == "__main__":
    main()
