"""The chaos checker has teeth: a synthetic run that satisfies every contract passes, and each
way of breaking one is reported (no servers; the inputs are built as the chain records them)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.capture import Message
from tests.chaos.chain import Event
from tests.chaos.checker import Device, Report, check

T0 = 1_800_000_000.0
SITE = "kg-sunflower"
DEVICES = {"meter": Device(interval=2.0), "canary": Device(interval=5.0, grid=False)}
METRICS = {"meter": ("power", "voltage"), "canary": ("co2",)}


@dataclass
class Poll:
    device: str
    t: float
    seqs: list[int] = field(default_factory=list)
    published: bool = True
    stored: bool = True


@dataclass
class Run:
    """A gateway killed at ``kill`` s and restarted at ``restart`` s, stopped at ``stop`` s; polls
    newer than ``lost`` s before the kill die with it (never published)."""

    kill: float = 20.0
    restart: float = 21.0
    stop: float = 40.0
    lost: float = 1.5
    declare: bool = True
    reuse: bool = False
    pauses: tuple[tuple[float, float], ...] = ()
    polls: list[Poll] = field(default_factory=list)
    gap: tuple[int, int] | None = None
    extra_rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for device, spec in DEVICES.items():
            first = 1.0 if spec.grid else 2.0
            self.polls += self._grid(device, spec.interval, first, 0.0, self.kill)
            self.polls += self._grid(device, spec.interval, first, self.restart, self.stop)
        self.polls.sort(key=lambda p: p.t)
        seq, restarted = 0, False
        for poll in self.polls:
            if poll.t > T0 + self.restart and not restarted:
                restarted = True
                committed = max(s for p in self.polls if p.published and p.seqs for s in p.seqs)
                if self.reuse:
                    seq = committed
                else:
                    self.gap = (committed + 1, seq + 100)
                    seq += 100
            for _ in METRICS[poll.device]:
                seq += 1
                poll.seqs.append(seq)
            if T0 + self.kill - self.lost < poll.t < T0 + self.kill:
                poll.published = poll.stored = False

    def _grid(
        self, device: str, interval: float, first: float, start: float, end: float
    ) -> list[Poll]:
        polls, slot, resumed = [], start + first, set()
        while slot < end:
            pause = next(((a, b) for a, b in self.pauses if a <= slot <= b), None)
            if pause is None:
                polls.append(Poll(device, T0 + slot + 0.004))
            elif pause not in resumed:
                resumed.add(pause)
                polls.append(Poll(device, T0 + pause[1] + 0.002))
            slot += interval
        return polls

    # --- what the chain would have recorded -----------------------------------------------------

    def events(self) -> list[Event]:
        out = [Event(T0, "gateway_start", "gw-1"), Event(T0, "faults_start")]
        for a, b in self.pauses:
            out += [Event(T0 + a, "gateway_sigstop", "gw-1"), Event(T0 + b, "gateway_sigcont")]
        out += [
            Event(T0 + self.kill, "gateway_kill", "gw-1"),
            Event(T0 + self.restart, "gateway_start", "gw-2"),
            Event(T0 + self.stop, "faults_end"),
            Event(T0 + self.stop, "gateway_stop", "gw-2"),
        ]
        return sorted(out, key=lambda e: e.t)

    def messages(self) -> list[Message]:
        out = []
        for poll in self.polls:
            if not poll.published:
                continue
            readings = [
                {
                    "metric": m,
                    "value": s * 1.5,
                    "unit": "x",
                    "ts": _iso(poll.t),
                    "seq": s,
                    "quality": "good",
                }
                for m, s in zip(METRICS[poll.device], poll.seqs, strict=True)
            ]
            body = {"v": 1, "site": SITE, "device": poll.device, "readings": readings}
            topic = f"canary/{SITE}/telemetry/{poll.device}"
            out.append(Message(poll.t + 0.01, topic, json.dumps(body).encode(), False, False))
        if self.declare and self.gap is not None:
            event = {
                "v": 1,
                "site": SITE,
                "type": "readings_lost",
                "from_seq": self.gap[0],
                "to_seq": self.gap[1],
                "reason": "unclean_stop",
                "ts": _iso(T0 + self.restart + 0.5),
            }
            out.append(
                Message(
                    T0 + self.restart + 0.6,
                    f"canary/{SITE}/events",
                    json.dumps(event).encode(),
                    False,
                    False,
                )
            )
            online = {"state": "online", "buffer": {"declared_lost": [list(self.gap)]}}
            out.append(_status(T0 + self.restart + 0.7, online))
        counts = {
            d: sum(1 for p in self.polls if p.device == d and p.t > T0 + self.restart)
            for d in DEVICES
        }
        status = {"state": "offline", "devices": {d: {"polls": n} for d, n in counts.items()}}
        out.append(
            Message(
                T0 + self.stop + 0.1,
                f"canary/{SITE}/status",
                json.dumps(status).encode(),
                False,
                False,
            )
        )
        return out

    def rows(self) -> list[dict[str, Any]]:
        series: dict[tuple[str, str, str], dict[str, list[float]]] = {}
        for poll in self.polls:
            if not poll.stored:
                continue
            for metric, seq in zip(METRICS[poll.device], poll.seqs, strict=True):
                for suffix, value in (("seq", float(seq)), ("value", seq * 1.5)):
                    row = series.setdefault(
                        (metric, suffix, poll.device), {"timestamps": [], "values": []}
                    )
                    row["timestamps"].append(round(poll.t * 1000))
                    row["values"].append(value)
        rows = [
            {"metric": {"__name__": f"{m}_{s}", "site": SITE, "device": d, "unit": "x"}, **data}
            for (m, s, d), data in series.items()
        ]
        if self.declare and self.gap is not None:
            ts = round((T0 + self.restart + 0.5) * 1000)
            for name, value in (("gap_first", self.gap[0]), ("gap_last", self.gap[1])):
                labels = {"__name__": name, "site": SITE, "reason": "unclean_stop"}
                rows.append({"metric": labels, "timestamps": [ts], "values": [float(value)]})
        return rows + self.extra_rows

    def check(self, **changes: Any) -> Report:
        inputs: dict[str, Any] = {
            "rows": self.rows(),
            "messages": self.messages(),
            "events": self.events(),
            "devices": DEVICES,
            "commit_interval": 2.0,
            "logs": {},
        }
        inputs.update(changes)
        return check(**inputs)


def _status(t: float, body: dict[str, Any]) -> Message:
    return Message(t, f"canary/{SITE}/status", json.dumps(body).encode(), False, False)


def _iso(t: float) -> str:
    from datetime import UTC, datetime  # noqa: PLC0415

    return (
        datetime.fromtimestamp(round(t * 1000) / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def test_a_run_that_keeps_every_contract_passes() -> None:
    run = Run()
    report = run.check()
    assert report.problems == [] and report.gap_problems == [], report.summary()
    (kill,) = report.kills
    # The meter's poll 0.996 s before the kill died with it: 1 poll of 2 readings, inside the window.
    assert kill["lost_polls"] == 1 and kill["lost_readings"] == 2
    assert run.gap is not None and report.figures["declared"] == [list(run.gap)]
    assert report.figures["missing_undeclared"] == 0


def test_numbers_handed_out_again_after_a_kill_are_reported() -> None:
    report = Run(declare=False, reuse=True).check()
    assert report.problems == [], report.summary()
    assert any("handed out again" in p for p in report.gap_problems), report.summary()


def test_an_undeclared_jump_is_reported() -> None:
    report = Run(declare=False).check()
    assert report.problems == []
    assert any("nor declared lost" in p for p in report.gap_problems), report.summary()


def test_a_duplicate_sample_is_reported() -> None:
    run = Run()
    rows = run.rows()
    row = next(r for r in rows if r["metric"]["__name__"] == "power_seq")
    row["timestamps"].append(row["timestamps"][3])
    row["values"].append(row["values"][3])
    report = run.check(rows=rows)
    assert any("duplicate samples" in p for p in report.problems)


def test_a_stored_value_unlike_the_published_one_is_reported() -> None:
    run = Run()
    rows = run.rows()
    row = next(r for r in rows if r["metric"]["__name__"] == "voltage_value")
    row["values"][2] += 0.001
    report = run.check(rows=rows)
    assert any("stored" in p and "published" in p for p in report.problems), report.summary()


def test_a_poll_lost_in_the_middle_of_a_lifetime_is_reported() -> None:
    run = Run()
    poll = next(p for p in run.polls if p.device == "meter" and T0 + 8 < p.t < T0 + 10)
    poll.published = poll.stored = False
    report = run.check()
    assert any("polls lost between" in p for p in report.problems), report.summary()


def test_a_reading_the_broker_had_but_the_store_lacks_is_reported() -> None:
    run = Run()
    poll = next(p for p in run.polls if p.device == "canary" and p.t > T0 + 25)
    poll.stored = False
    report = run.check()
    assert any("the broker had" in p for p in report.problems), report.summary()


def test_a_crash_that_loses_more_than_one_commit_window_is_reported() -> None:
    report = Run(lost=3.5).check()
    assert any("outside one commit window" in p for p in report.problems), report.summary()


def test_a_declared_range_that_covers_a_new_reading_is_reported() -> None:
    run = Run()
    assert run.gap is not None
    first_new = min(s for p in run.polls if p.t > T0 + run.restart for s in p.seqs)
    run.gap = (run.gap[0], first_new + 3)
    report = run.check()
    assert any("polled after the restart" in p for p in report.problems), report.summary()


def test_a_final_counter_unlike_the_store_is_reported() -> None:
    run = Run()
    messages = run.messages()
    status = json.loads(messages[-1].payload)
    status["devices"]["meter"]["polls"] += 1
    messages[-1] = Message(
        messages[-1].received, messages[-1].topic, json.dumps(status).encode(), False, False
    )
    report = run.check(messages=messages)
    assert any("counted" in p for p in report.problems), report.summary()


def test_frozen_time_is_no_hole_and_a_lost_poll_after_it_is() -> None:
    run = Run(pauses=((5.5, 11.2),))
    assert run.check().problems == []
    poll = next(p for p in run.polls if p.device == "meter" and T0 + 13 < p.t < T0 + 15)
    poll.published = poll.stored = False
    assert any("polls lost" in p for p in run.check().problems)


def test_more_declarations_than_crashes_are_reported() -> None:
    run = Run()
    rows = run.rows()
    for row in rows:
        name = row["metric"]["__name__"]
        if name in ("gap_first", "gap_last"):
            row["timestamps"].append(round((T0 + 30) * 1000))
            row["values"].append(5000.0 if name == "gap_first" else 5010.0)
    report = run.check(rows=rows)
    assert any("gaps declared for 1 gateway crashes" in p for p in report.problems), (
        report.summary()
    )


def test_a_declaration_missing_from_the_status_is_reported() -> None:
    run = Run()
    messages = [m for m in run.messages() if b"declared_lost" not in m.payload]
    report = run.check(messages=messages)
    assert report.problems == []
    assert any("no status's buffer.declared_lost" in p for p in report.gap_problems)
