"""One chaos run, start to proof: shared by tests/system/test_chaos.py and bench/chaos.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos import checker
from tests.chaos.chain import Chain
from tests.chaos.schedule import Fault, make_schedule
from tests.servers import vm_export


@dataclass
class Outcome:
    """A finished run: the checker's report, the schedule, and where the time went."""

    report: checker.Report
    schedule: list[Fault]
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        took = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        lines = [self.report.summary(), f"  time: {took}"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def run(
    seed: int,
    length: float,
    workdir: Path,
    *,
    share_group: str | None = "chaos",
    exclude: frozenset[str] = frozenset(),
    commit_interval: float = 2.0,
    poll_interval: float = 2.0,
    say: Callable[[str], None] = print,
) -> Outcome:
    """Start the chain in ``workdir``, apply the schedule of ``seed``, let it recover, prove it.

    Raises `AssertionError` when a process did not recover by itself (see `Chain.settle`); every
    other finding is in the returned report. The inputs of the proof are kept in ``workdir``
    (``chaos-inputs.json``) so that a failure can be studied after the fact.
    """
    schedule = make_schedule(seed, length, exclude=exclude)
    say(f"seed {seed}: {len(schedule)} faults over {length:.0f} s")
    for fault in schedule:
        say(f"  {fault.describe()}")
    seconds: dict[str, float] = {}
    began = time.monotonic()
    with Chain.open(
        workdir,
        share_group=share_group,
        commit_interval=commit_interval,
        poll_interval=poll_interval,
        say=say,
    ) as chain:
        seconds["start"] = time.monotonic() - began
        chain.run(schedule)
        seconds["faults"] = time.monotonic() - began - seconds["start"]
        seconds.update(chain.settle())
        inputs: dict[str, Any] = {
            "rows": vm_export(chain.victoria.port),
            "messages": chain.capture.messages(),
            "events": chain.events,
            "devices": checker.devices(chain.gateway_config),
            "commit_interval": commit_interval,
            "logs": chain.logs(),
            "seed": seed,
            "answers": chain.store_tap.answers,
        }
        notes = list(chain.notes)
    _keep(workdir / "chaos-inputs.json", inputs)
    report = checker.check(**inputs)
    # The teardown stopped Mosquitto cleanly, which always saves: no file means it could not
    # write its persistence directory, and every "persistent" session above was in memory only.
    if not chain.persistence_written():
        report.problems.append("Mosquitto did not write its persistence file on a clean stop")
    seconds["total"] = time.monotonic() - began
    return Outcome(report, schedule, seconds, notes)


def _keep(path: Path, inputs: dict[str, Any]) -> None:
    """The proof's inputs as JSON (the capture's payloads as text), for `load`."""
    data = dict(inputs)
    data["messages"] = [
        {**m.__dict__, "payload": m.payload.decode("utf-8", errors="replace")}
        for m in inputs["messages"]
    ]
    data["events"] = [e.__dict__ for e in inputs["events"]]
    data["devices"] = {k: v.__dict__ for k, v in inputs["devices"].items()}
    data["answers"] = [a.__dict__ for a in inputs["answers"]]
    path.write_text(json.dumps(data))


def load(path: Path) -> dict[str, Any]:
    """Inputs kept by `run`, ready for `checker.check(**inputs)` (bench/chaos.py ``--recheck``)."""
    from tests.chaos.capture import Message  # noqa: PLC0415 - only for a recheck
    from tests.chaos.chain import Event  # noqa: PLC0415
    from tests.chaos.storetap import Answer  # noqa: PLC0415

    data: dict[str, Any] = json.loads(path.read_text())
    data["messages"] = [
        Message(**{**m, "payload": m["payload"].encode()}) for m in data["messages"]
    ]
    data["events"] = [Event(**e) for e in data["events"]]
    data["devices"] = {k: checker.Device(**v) for k, v in data["devices"].items()}
    data["answers"] = [Answer(**{**a, "seqs": tuple(a["seqs"])}) for a in data["answers"]]
    return data
