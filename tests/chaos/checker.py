"""The proof at the end of a chaos run, from what a backend has: the store.

Inputs: every sample in VictoriaMetrics (``/api/v1/export``), the broker capture (what was
published under which sequence number), the test's event log (when each gateway process lived,
was frozen, was killed), each device's poll interval, and the processes' logs.

What is proved (a `Report.problems` entry for each failure):

1. **Once**: no series holds two samples at one timestamp; no sequence number is stored for two
   different readings.
2. **Equal**: every stored reading equals the one published under its sequence number (device,
   metric, timestamp, value); no sequence number was published with two different contents.
3. **Explained**: every number from 1 to the highest used that is not in the store lies in a range
   the gateway declared lost (``gap`` points: ``gap_first``, ``gap_last``); the store holds
   every declaration published on ``P/S/events``; there is at most one declaration per gateway
   crash; no number of a declared range belongs to a reading polled after the restart that
   declared it (numbers above a range are new).
4. **Polled**, counted without sequence numbers: per device and gateway process, the stored polls
   lie on the device's interval grid with no hole (a hole is a lost poll; a poll delayed past its
   slot, as after a SIGSTOP, skips slots by design and is not one); every stored poll has all of
   its device's metrics; the polls missing at the end of a killed process all fall within one
   commit window before the kill, and their readings' numbers are missing from the store (a loss
   whose numbers were handed out again would be invisible to the sequence proof); after the final
   clean stop, the gateway's own poll counters (offline status) equal the polls in the store.

The checks of item 3 and the "numbers handed out again" check of item 4 are the declared-gap
contract (issue 16, item 2); they are reported apart (`Report.gap_problems`) so that a run can be
judged on everything else while that contract is being built.

Everything measured goes to `Report.figures` and `Report.kills`.
"""

from __future__ import annotations

import itertools
import math
import re
from bisect import bisect_left
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.config import load_config
from tests.chaos.capture import Message
from tests.chaos.chain import PREFIX, SITE, Event
from tests.chaos.storetap import Answer

#: A poll due this long before a kill or stop must have completed (the simulated site's polls take
#: milliseconds; the bus may be a few hundred ms late under load).
COMPLETE_SLACK = 0.6
#: On top of the commit window: how long a commit may take, and the scheduler's lateness.
WINDOW_SLACK = 0.6
#: A poll this far from its slot (fraction of the interval) is off the grid: delayed, not lost.
ON_GRID = 0.3
#: Two polls of a device this many intervals apart (frozen time taken out) have a hole between.
HOLE = 1.5
#: From process start to a device's first stored poll, at most (interpreter start, device open,
#: the SCD4x's first 5 s measurement) on a loaded 2-core machine.
HEAD_MAX = 12.0


@dataclass(frozen=True)
class Device:
    """What the checker needs of a configured device. ``grid``: polls stay on a fixed grid (an
    SCD4x re-anchors on its own measurement clock, so only the spacing of its polls is checked)."""

    interval: float
    grid: bool = True


def devices(config: Path) -> dict[str, Device]:
    """The checker's view of the devices configured in the gateway's ``config``."""
    return {
        d.id: Device(interval=d.interval, grid=d.driver != "scd4x")
        for d in load_config(config).enabled_devices()
    }


@dataclass(frozen=True)
class Lifetime:
    """One gateway process: started at ``start``, ended at ``end`` by ``how`` (kill/stop/open)."""

    name: str
    start: float
    end: float
    how: str
    pauses: tuple[tuple[float, float], ...]

    def paused(self, a: float, b: float) -> float:
        """Seconds of [a, b] during which this process was stopped by SIGSTOP."""
        return sum(max(0.0, min(b, p1) - max(a, p0)) for p0, p1 in self.pauses)

    def in_pause(self, t: float) -> bool:
        return any(p0 <= t <= p1 for p0, p1 in self.pauses)

    def holds(self, t: float) -> bool:
        """Whether a poll stamped ``t`` belongs to this process."""
        return self.start <= t <= self.end + COMPLETE_SLACK


@dataclass
class Report:
    """What the checker found: ``problems`` (must be empty) and ``figures`` (for the report)."""

    seed: int | None
    problems: list[str] = field(default_factory=list)
    #: Problems that only the declared-gap contract (issue 16, item 2) explains or rules out.
    gap_problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    kills: list[dict[str, Any]] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)

    def failures(self, *, declared_gaps: bool = True) -> list[str]:
        """The problems to fail on; ``declared_gaps=False`` leaves out the gap-contract ones."""
        return self.problems + (self.gap_problems if declared_gaps else [])

    def summary(self) -> str:
        f = self.figures
        lines = [
            f"seed {self.seed}: polled {f['readings_polled']} readings in {f['polls_expected']} "
            f"polls; stored {f['readings_stored']} readings in {f['polls_stored']} polls; "
            f"duplicates in the store {f['store_duplicates']}; re-sent by the gateway "
            f"{f['resent_readings']}; values checked {f['values_checked']}, wrong "
            f"{f['values_mismatched']}; polls skipped (late, not lost) {f['polls_skipped']}",
            f"  seq 1..{f['max_seq']}: not stored {f['missing_seqs']} (in declared ranges "
            f"{f['missing_declared']}; undeclared {f['missing_undeclared']}: never on the broker "
            f"{f['missing_never_published']}, on the broker {f['missing_downstream']}"
            + (
                f" of which the store acknowledged {f['missing_acknowledged_by_store']}, no bridge "
                f"wrote {f['missing_never_written']}"
                if "missing_never_written" in f
                else ""
            )
            + "); "
            f"declared {f['declared']}",
            f"  loss bound per kill: {f['window_bound_readings']} readings (polls within "
            f"commit_interval + {WINDOW_SLACK} s); commit_interval x site rate = "
            f"{f['average_rate_bound_readings']}; first poll after start <= {f['head_max_s']} s",
        ]
        for kill in self.kills:
            lines.append(
                "  kill {index} at +{at:.1f} s ({name}): lost {lost_polls} polls = "
                "{lost_readings} readings (oldest {oldest:.2f} s before the kill); numbers "
                "unused there {unused_numbers} (last used {last_seq}, next {next_seq}); "
                "declared {declared}".format(**kill)
            )
        lines += [f"  diagnosis: {d}" for d in self.diagnosis]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        lines += [f"  GAP PROBLEM: {p}" for p in self.gap_problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Stored:
    device: str
    metric: str
    ts: int  # ms
    seq: int


@dataclass(frozen=True)
class _Gap:
    low: int
    high: int
    ts: int  # ms
    reason: str

    def covers(self, seq: int) -> bool:
        return self.low <= seq <= self.high


def lifetimes(events: list[Event]) -> list[Lifetime]:
    """The gateway processes of a run, from the chain's event log."""
    out: list[Lifetime] = []
    current: dict[str, Any] | None = None
    for event in events:
        if event.what == "gateway_start":
            current = {"name": event.detail, "start": event.t, "pauses": [], "stop": None}
        elif current is None:
            continue
        elif event.what == "gateway_sigstop":
            current["stop"] = event.t
        elif event.what == "gateway_sigcont" and current["stop"] is not None:
            current["pauses"].append((current["stop"], event.t))
            current["stop"] = None
        elif event.what in ("gateway_kill", "gateway_stop"):
            how = "kill" if event.what == "gateway_kill" else "stop"
            pauses = tuple(current["pauses"])
            out.append(Lifetime(current["name"], current["start"], event.t, how, pauses))
            current = None
    if current is not None:
        out.append(Lifetime(current["name"], current["start"], math.inf, "open", ()))
    return out


def check(
    *,
    rows: list[dict[str, Any]],
    messages: list[Message],
    events: list[Event],
    devices: dict[str, Device],
    commit_interval: float,
    logs: dict[str, str],
    seed: int | None = None,
    answers: list[Answer] | None = None,
) -> Report:
    """Prove the run; see the module docstring. ``rows``: `tests.servers.vm_export` of everything;
    ``answers``: the store's answers to the bridge's writes (`StoreTap`), for the diagnosis."""
    checker = _Checker(
        rows=rows, messages=messages, events=events, devices=devices, window=commit_interval
    )
    checker.answers = answers or []
    checker.report.seed = seed
    checker.run(logs)
    return checker.report


class _Checker:
    def __init__(
        self,
        *,
        rows: list[dict[str, Any]],
        messages: list[Message],
        events: list[Event],
        devices: dict[str, Device],
        window: float,
    ) -> None:
        self.report = Report(None)
        self.problems, self.figures = self.report.problems, self.report.figures
        self.messages, self.events, self.devices, self.window = messages, events, devices, window
        self.lives = lifetimes(events)
        self.t0 = next((e.t for e in events if e.what == "faults_start"), 0.0)
        self.stored: list[_Stored] = []
        self.values: dict[tuple[str, str, int], float] = {}
        self.gaps: list[_Gap] = []
        self._read_store(rows)
        self.by_seq: dict[int, list[_Stored]] = defaultdict(list)
        for item in self.stored:
            self.by_seq[item.seq].append(item)
        self.published: dict[int, tuple[str, str, int, Any]] = {}
        self.seen_at: dict[int, float] = {}
        #: (from, to) -> when the gateway's ``readings_lost`` event says it was declared (s).
        self.announced: dict[tuple[int, int], float] = {}
        #: Every range any status message listed under ``buffer.declared_lost``.
        self.in_status: set[tuple[int, int]] = set()
        self.offline: list[dict[str, Any]] = []
        self._read_capture()
        #: Every poll the gateway is known to have made: stored, or seen on the broker (a reading
        #: lost after the broker had it is the sequence proof's to report, not the grid's).
        self.polls: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        #: (device, ts) -> the numbers of that poll's readings.
        self.poll_seqs: dict[tuple[str, int], set[int]] = defaultdict(set)
        for item in self.stored:
            self.polls[item.device][item.ts].add(item.metric)
            self.poll_seqs[(item.device, item.ts)].add(item.seq)
        for seq, (device, metric, ts, _) in self.published.items():
            self.polls[device][ts].add(metric)
            self.poll_seqs[(device, ts)].add(seq)
        self.metrics = self._metrics_per_poll()
        self.max_seq = max([*self.by_seq, *self.published], default=0)
        self.missing = sorted(set(range(1, self.max_seq + 1)) - set(self.by_seq))
        #: Numbers neither stored nor published: lost before the broker, or never handed out.
        self.unused = set(self.missing) - set(self.published)
        self.skipped: list[str] = []
        self.answers: list[Answer] = []

    def run(self, logs: dict[str, str]) -> None:
        self._equal()
        self._explained()
        lost_by_kill = self._polled(logs)
        self._per_kill(lost_by_kill)
        self._final_counters()
        crashes = {
            name: len(re.findall("crashed; restarting", text)) for name, text in logs.items()
        }
        self.figures["supervised_task_crashes"] = {k: v for k, v in crashes.items() if v}
        for name, count in crashes.items():
            if count:
                self.problems.append(f"{name}: {count} supervised task crashes in its log")

    # --- reading back --------------------------------------------------------------------------

    def _read_store(self, rows: list[dict[str, Any]]) -> None:
        gap_parts: dict[tuple[tuple[str, str], ...], dict[str, dict[int, float]]] = {}
        duplicates = 0
        for row in rows:
            labels = row["metric"]
            name = labels["__name__"]
            extra = sum(n - 1 for n in Counter(row["timestamps"]).values() if n > 1)
            if extra:
                duplicates += extra
                self.problems.append(f"{extra} duplicate samples in series {labels}")
            samples = list(zip(row["timestamps"], row["values"], strict=True))
            if name in ("gap_first", "gap_last"):
                key = tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))
                gap_parts.setdefault(key, {}).setdefault(name, {}).update(samples)
            elif "device" in labels and name.endswith("_seq"):
                metric = name.removesuffix("_seq")
                self.stored += [_Stored(labels["device"], metric, t, int(v)) for t, v in samples]
            elif "device" in labels and name.endswith("_value"):
                metric = name.removesuffix("_value")
                self.values.update(((labels["device"], metric, t), v) for t, v in samples)
        for key, part in gap_parts.items():
            reason = dict(key).get("reason", "")
            for ts, low in part.get("gap_first", {}).items():
                high = part.get("gap_last", {}).get(ts)
                if high is None:
                    self.problems.append(f"gap point at {ts} without gap_last ({dict(key)})")
                else:
                    self.gaps.append(_Gap(int(low), int(high), ts, reason))
        self.gaps.sort(key=lambda g: g.low)
        self.figures.update(
            store_duplicates=duplicates,
            readings_stored=len(self.stored),
            declared=[[g.low, g.high] for g in self.gaps],
        )

    def _read_capture(self) -> None:
        copies: Counter[int] = Counter()
        redelivered = 0
        for message in self.messages:
            if "/telemetry/" in message.topic:
                redelivered += message.dup
                body = message.json()
                for r in body["readings"]:
                    seq = int(r["seq"])
                    content = (body["device"], r["metric"], _ms(r["ts"]), r["value"])
                    copies[seq] += not message.dup
                    self.seen_at.setdefault(seq, message.received)
                    first = self.published.setdefault(seq, content)
                    if first != content:
                        self.problems.append(
                            f"seq {seq} published twice with different content: {first} and {content}"
                        )
            elif message.topic == f"{PREFIX}/{SITE}/events":
                body = message.json()
                if body.get("type") == "readings_lost":
                    key = (int(body["from_seq"]), int(body["to_seq"]))
                    when = _ms(body["ts"]) / 1000 if "ts" in body else message.received
                    self.announced.setdefault(key, when)
            elif message.topic == f"{PREFIX}/{SITE}/status":
                body = message.json()
                declared = body.get("buffer", {}).get("declared_lost") or []
                self.in_status |= {(int(a), int(b)) for a, b in declared}
                if not message.retain and body.get("state") == "offline" and "devices" in body:
                    self.offline.append(body)
        self.figures.update(
            readings_published=len(self.published),
            resent_readings=sum(n - 1 for n in copies.values() if n > 1),
            redelivered_to_capture=redelivered,
        )

    def _metrics_per_poll(self) -> dict[str, int]:
        sizes: dict[str, int] = dict.fromkeys(self.devices, 0)
        for device, by_ts in self.polls.items():
            sizes[device] = max([sizes.get(device, 0), *(len(m) for m in by_ts.values())])
        return sizes

    # --- 1 and 2: once, equal -------------------------------------------------------------------

    def _equal(self) -> None:
        for seq, items in sorted(self.by_seq.items()):
            if len({(i.device, i.metric, i.ts) for i in items}) > 1:
                self.problems.append(f"seq {seq} stored for different readings: {items}")
        mismatched, unverified = [], []
        for item in self.stored:
            content = self.published.get(item.seq)
            if content is None:
                unverified.append(item.seq)
                continue
            device, metric, ts, value = content
            if (device, metric, ts) != (item.device, item.metric, item.ts):
                mismatched.append(f"seq {item.seq}: stored {item}, published {content}")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue  # null (no value field stored), or a value the store does not keep
            got = self.values.get((device, metric, ts))
            if got is None or not math.isclose(got, float(value), rel_tol=1e-11, abs_tol=1e-12):
                mismatched.append(
                    f"seq {item.seq} {device}/{metric}: stored {got}, published {value}"
                )
        self.figures.update(
            values_checked=len(self.stored) - len(unverified),
            values_mismatched=len(mismatched),
            stored_not_seen_on_broker=len(unverified),
        )
        self.problems += mismatched[:20]
        if unverified:
            self.problems.append(
                f"{len(unverified)} stored readings never seen on the broker: "
                f"{_ranges(sorted(set(unverified)))}"
            )

    # --- 3: explained ----------------------------------------------------------------------------

    def _explained(self) -> None:
        max_seq = self.max_seq
        undeclared = [s for s in self.missing if not any(g.covers(s) for g in self.gaps)]
        never = [s for s in undeclared if s not in self.published]
        downstream = [s for s in undeclared if s in self.published]
        self.figures.update(
            max_seq=max_seq,
            missing_seqs=len(self.missing),
            missing_declared=len(self.missing) - len(undeclared),
            missing_undeclared=len(undeclared),
            missing_never_published=len(never),
            missing_downstream=len(downstream),
        )
        if never:
            self.report.gap_problems.append(
                f"{len(never)} sequence numbers neither stored, published nor declared lost: "
                f"{_ranges(never)}"
            )
        if downstream:
            self.problems.append(
                f"{len(downstream)} readings the broker had (the capture saw them) are not "
                f"stored: {_ranges(downstream)}"
            )
            self.report.diagnosis += self._attribute(downstream)
            self._store_answers(downstream)
        stored_gaps = {(g.low, g.high) for g in self.gaps}
        for low, high in sorted(set(self.announced) - stored_gaps):
            self.report.gap_problems.append(f"declared gap [{low}, {high}] published, not stored")
        for low, high in sorted(stored_gaps - set(self.announced)):
            self.report.diagnosis.append(f"stored gap [{low}, {high}] not seen by the capture")
        for low, high in sorted(stored_gaps - self.in_status):
            self.report.gap_problems.append(
                f"declared gap [{low}, {high}] in no status's buffer.declared_lost"
            )
        for low, high in sorted(self.in_status - stored_gaps):
            self.report.gap_problems.append(
                f"buffer.declared_lost lists [{low}, {high}], the store has no such gap"
            )
        kills = sum(life.how == "kill" for life in self.lives)
        if len(self.gaps) > kills:
            self.problems.append(f"{len(self.gaps)} gaps declared for {kills} gateway crashes")
        for gap in self.gaps:
            if gap.reason != "unclean_stop":
                self.report.diagnosis.append(f"gap [{gap.low}, {gap.high}] reason {gap.reason!r}")
            restart = self._declared_by(gap)
            if restart is None:
                self.problems.append(f"gap [{gap.low}, {gap.high}] declared by no gateway process")
                continue
            before = [life for life in self.lives if life.end <= restart]
            if not before or before[-1].how != "kill":
                self.problems.append(
                    f"gap [{gap.low}, {gap.high}] declared by a gateway whose predecessor did not "
                    "crash"
                )
            reused = sorted(
                {
                    s
                    for s in range(gap.low, min(gap.high, max_seq) + 1)
                    for item in self.by_seq.get(s, [])
                    if item.ts / 1000 >= restart
                }
            )
            if reused:
                self.problems.append(
                    f"declared range [{gap.low}, {gap.high}] holds numbers of readings polled "
                    f"after the restart that declared it: {_ranges(reused)}"
                )

    def _store_answers(self, downstream: list[int]) -> None:
        """Of the readings lost after the broker: which the store had acknowledged (2xx) and when,
        and which no bridge ever wrote (lost in the broker)."""
        acked = {s: a.t for a in self.answers if 200 <= a.status < 300 for s in a.seqs}
        written = {s for a in self.answers for s in a.seqs}
        lost_acked = [s for s in downstream if s in acked]
        self.figures.update(
            missing_acknowledged_by_store=len(lost_acked),
            missing_never_written=sum(1 for s in downstream if s not in written),
        )
        kills = [e.t for e in self.events if e.what == "store_kill"]
        lost = set(lost_acked)
        episodes: list[tuple[float, float, int]] = []  # first answer, last answer, readings lost
        for answer in sorted(self.answers, key=lambda a: a.t):
            count = sum(1 for s in answer.seqs if s in lost and acked[s] == answer.t)
            if not count:
                continue
            if episodes and answer.t - episodes[-1][1] < 1.0:
                episodes[-1] = (episodes[-1][0], answer.t, episodes[-1][2] + count)
            else:
                episodes.append((answer.t, answer.t, count))
        for first, last, count in episodes:
            kill = next((t for t in kills if t >= last), None)
            after = f", {kill - last:.2f} s before a store SIGKILL" if kill else ""
            self.report.diagnosis.append(
                f"the store answered 2xx for {count} readings it does not hold at "
                f"{first - self.t0:+.2f}..{last - self.t0:+.2f} s{after}"
            )

    def _declared_by(self, gap: _Gap) -> float | None:
        """When the gateway process that declared ``gap`` started: the one alive at the gap's
        timestamp in the store, or else at the time its ``readings_lost`` event gives."""
        for when in (gap.ts / 1000, self.announced.get((gap.low, gap.high))):
            # The latest process that holds it: a declaration is made at a process's start, and
            # a fast start can come within the slack of its predecessor's end.
            life = next((life for life in reversed(self.lives) if when and life.holds(when)), None)
            if life is not None:
                return life.start
        return None

    def _attribute(self, seqs: list[int]) -> list[str]:
        """For readings lost after the broker had them: when the capture saw them and what the
        test did just before (the likely cause). Runs that reached the broker within a second of
        each other are one episode."""
        actions = [e for e in self.events if e.what != "fault"]
        times = [e.t for e in actions]
        episodes: list[list[int]] = []
        for seq in seqs:
            if episodes and self.seen_at.get(seq, 0) - self.seen_at.get(episodes[-1][-1], 0) < 1:
                episodes[-1].append(seq)
            else:
                episodes.append([seq])
        out = []
        for episode in episodes:
            first, last = self.seen_at.get(episode[0], 0.0), self.seen_at.get(episode[-1], 0.0)
            i = bisect_left(times, first)
            before = [f"{e.what}@{e.t - self.t0:+.2f}" for e in actions[max(0, i - 4) : i]]
            after = [f"{e.what}@{e.t - self.t0:+.2f}" for e in actions[i:] if e.t <= last + 5]
            out.append(
                f"{len(episode)} readings ({_ranges(episode, 4)}) reached the broker at "
                f"{first - self.t0:+.2f}..{last - self.t0:+.2f} s, after {before}, "
                f"before {after[:3]}"
            )
        return out

    # --- 4: polled, on the grid ------------------------------------------------------------------

    def _polled(self, logs: dict[str, str]) -> dict[str, list[tuple[str, float]]]:
        for device in self.devices:
            if not self.polls[device]:
                self.problems.append(f"device {device}: no polls stored at all")
            for ts, names in self.polls[device].items():
                if len(names) != self.metrics[device]:
                    self.problems.append(
                        f"{device} poll at {_clock(ts / 1000)}: {len(names)} of "
                        f"{self.metrics[device]} readings stored or published"
                    )
        failing = _failing_devices(logs)
        expected = stored = readings = 0
        heads: list[float] = []
        lost_by_kill: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for device, spec in sorted(self.devices.items()):
            times = sorted(t / 1000 for t in self.polls[device])
            for life in self.lives:
                mine = [t for t in times if life.holds(t)]
                if mine:
                    heads.append(mine[0] - life.start - life.paused(life.start, mine[0]))
                unavailable = any(life.holds(t) for t in failing.get(device, []))
                stamps = [t for t in sorted(self.polls[device]) if life.holds(t / 1000)]
                lost = self._grid(device, spec, life, stamps, unavailable=unavailable)
                expected += len(mine) + len(lost)
                stored += len(mine)
                readings += (len(mine) + len(lost)) * self.metrics[device]
                if life.how == "kill":
                    lost_by_kill[life.name] += [(device, t) for t in lost]
                elif lost:
                    self.problems.append(
                        f"{device}: {len(lost)} polls missing before the clean end of {life.name}"
                    )
            orphans = [t for t in times if not any(life.holds(t) for life in self.lives)]
            if orphans:
                self.problems.append(
                    f"{device}: polls stamped outside any gateway process: "
                    f"{[_clock(t) for t in orphans[:5]]}"
                )
        self.report.diagnosis += self.skipped[:10]
        self.figures.update(
            polls_skipped=len(self.skipped),
            polls_expected=expected,
            polls_stored=stored,
            readings_polled=readings,
            head_max_s=round(max(heads, default=0.0), 2),
        )
        return lost_by_kill

    def _grid(
        self, device: str, spec: Device, life: Lifetime, stamps: list[int], *, unavailable: bool
    ) -> list[float]:
        """Check one device's polls (ms stamps) in one process against its grid. Returns the slots
        of the polls missing at the end of a killed process; a hole elsewhere is a problem.

        A hole is a spacing of at least `HOLE` intervals (time frozen by SIGSTOP taken out) whose
        closing poll is on the grid: a poll that ran late skips the slots it missed by design,
        and shows as a late poll. A hole whose readings' numbers are all used is a poll not made
        (counted as skipped); one with unused numbers in it is a lost poll."""
        where = f"{device} in {life.name}"
        interval = spec.interval
        times = [t / 1000 for t in stamps]
        if not times:
            alive = min(life.end, 1e18) - life.start - life.paused(life.start, life.end)
            if alive > HEAD_MAX + interval and not unavailable:
                self.problems.append(f"{where}: no poll in {alive:.1f} s of polling")
            return []
        head = times[0] - life.start - life.paused(life.start, times[0])
        if head > HEAD_MAX:
            self.problems.append(f"{where}: first poll {head:.1f} s after the start")
        phase = _phase(times, interval) if spec.grid else None
        self._holes(device, life, stamps, interval=interval, phase=phase, unavailable=unavailable)
        if life.how != "kill":
            return []
        # The tail: slots after the last poll that should have completed before the kill.
        last = times[-1]
        if phase is not None and abs(offset := _offset(last, phase, interval)) < ON_GRID * interval:
            last -= offset
        slots: list[float] = []
        for slot in _between(last, life.end - COMPLETE_SLACK, interval, inclusive=True):
            if life.in_pause(slot):
                resume = next(p1 for p0, p1 in life.pauses if p0 <= slot <= p1)
                if resume <= life.end - COMPLETE_SLACK and resume not in slots:
                    slots.append(resume)
            else:
                slots.append(slot)
        return slots

    def _holes(
        self,
        device: str,
        life: Lifetime,
        stamps: list[int],
        *,
        interval: float,
        phase: float | None,
        unavailable: bool,
    ) -> None:
        """The holes between one device's polls in one process (see `_grid`)."""
        where = f"{device} in {life.name}"
        for a_ms, b_ms in itertools.pairwise(stamps):
            a, b = a_ms / 1000, b_ms / 1000
            effective = (b - a) - life.paused(a, b)
            if effective < HOLE * interval:
                continue
            missing = round(effective / interval) - 1
            if phase is not None and abs(_offset(b, phase, interval)) >= ON_GRID * interval:
                self.skipped.append(f"{where}: {missing} slots before a poll late at {_clock(b)}")
                continue
            low = max(self.poll_seqs[(device, a_ms)])
            high = min(self.poll_seqs[(device, b_ms)])
            if any(s in self.unused for s in range(low + 1, high)):
                why = " (it was failing)" if unavailable else ""
                self.problems.append(
                    f"{where}: {missing} polls lost between {_clock(a)} and {_clock(b)}{why} "
                    f"(numbers between {low} and {high} unused)"
                )
            else:
                self.skipped.append(f"{where}: {missing} polls not made after {_clock(a)}")

    def _per_kill(self, lost_by_kill: dict[str, list[tuple[str, float]]]) -> None:
        window_bound = sum(
            self.metrics[d] * (math.floor((self.window + WINDOW_SLACK) / spec.interval) + 1)
            for d, spec in self.devices.items()
        )
        rate = sum(self.metrics[d] / spec.interval for d, spec in self.devices.items())
        self.figures.update(
            window_bound_readings=window_bound,
            average_rate_bound_readings=round(self.window * rate, 1),
            kills=sum(life.how == "kill" for life in self.lives),
        )
        seqs_of: dict[str, list[int]] = defaultdict(list)
        for (_, ts), seqs in self.poll_seqs.items():
            life = next((life for life in self.lives if life.holds(ts / 1000)), None)
            if life is not None:
                seqs_of[life.name] += seqs
        max_seq = self.figures["max_seq"]
        for index, life in enumerate([life for life in self.lives if life.how == "kill"], 1):
            lost = lost_by_kill[life.name]
            lost_readings = sum(self.metrics[d] for d, _ in lost)
            ages = [(life.end - t) - life.paused(t, life.end) for _, t in lost]
            last_seq = max(seqs_of[life.name], default=None)
            later = [other for other in self.lives if other.start >= life.end]
            next_seq = min((s for other in later for s in seqs_of[other.name]), default=None)
            low = last_seq or 0
            high = next_seq if next_seq is not None else max_seq + 1
            gap = [s for s in self.unused if low < s < high]
            successor = later[0] if later else None
            declared = [
                [g.low, g.high]
                for g in self.gaps
                if successor is not None and self._declared_by(g) == successor.start
            ]
            at = life.end - self.t0
            self.report.kills.append(
                {
                    "index": index,
                    "at": at,
                    "name": life.name,
                    "lost_polls": len(lost),
                    "lost_readings": lost_readings,
                    "oldest": max(ages, default=0.0),
                    "unused_numbers": len(gap),
                    "last_seq": last_seq,
                    "next_seq": next_seq,
                    "declared": declared,
                }
            )
            if max(ages, default=0.0) > self.window + WINDOW_SLACK:
                self.problems.append(
                    f"kill at {at:+.1f} s lost a poll {max(ages):.2f} s older than the kill, "
                    f"outside one commit window ({self.window} s): {lost}"
                )
            if lost_readings > window_bound:
                self.problems.append(
                    f"kill at {at:+.1f} s lost {lost_readings} readings (bound {window_bound})"
                )
            if lost_readings > len(gap):
                self.report.gap_problems.append(
                    f"kill at {at:+.1f} s lost {lost_readings} readings ({len(lost)} polls) but "
                    f"only {len(gap)} numbers are unused between the last used before it "
                    f"({last_seq}) and the first after ({next_seq}): numbers handed out again"
                )

    def _final_counters(self) -> None:
        final = self.lives[-1] if self.lives else None
        if final is None or final.how != "stop":
            self.problems.append("the run did not end with a clean gateway stop")
            return
        if not self.offline:
            self.problems.append("no final offline status with counters")
            return
        counters = self.offline[-1]["devices"]
        for device in self.devices:
            mine = sum(final.holds(t / 1000) for t in self.polls[device])
            said = counters.get(device, {}).get("polls")
            if said != mine:
                self.problems.append(
                    f"{device}: the last gateway counted {said} polls, the store and the broker "
                    f"saw {mine}"
                )


def _offset(t: float, phase: float, interval: float) -> float:
    """How far ``t`` is from the nearest slot of the grid through ``phase`` (-I/2 .. I/2]."""
    return (t - phase + interval / 2) % interval - interval / 2


def _phase(times: list[float], interval: float) -> float:
    """A point of the grid most polls are on: the middle of the largest cluster of polls that
    agree within 15 % of the interval (late polls scatter; on-time ones agree within ms)."""
    best: list[float] = []
    for candidate in times:
        cluster = [o for t in times if abs(o := _offset(t, candidate, interval)) < 0.15 * interval]
        if len(cluster) > len(best):
            best = [candidate + o for o in cluster]
    best.sort()
    return best[len(best) // 2]


def _between(a: float, b: float, interval: float, *, inclusive: bool = False) -> list[float]:
    """Grid slots strictly after slot ``a`` and before ``b`` (up to ``b`` when ``inclusive``)."""
    out = []
    k = 1
    while (slot := a + k * interval) < b - 1e-6 or (inclusive and slot <= b):
        out.append(slot)
        k += 1
    return out


def _failing_devices(logs: dict[str, str]) -> dict[str, list[float]]:
    """When a gateway logged a device unavailable, per device."""
    out: dict[str, list[float]] = defaultdict(list)
    pattern = re.compile(r"^(\S+ \S+) WARNING .*device (\S+) unavailable", re.MULTILINE)
    for name, text in logs.items():
        if name.startswith("gateway"):
            for stamp, device in pattern.findall(text):
                out[device].append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def _runs(seqs: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for s in seqs:
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def _ranges(seqs: list[int], limit: int = 12) -> str:
    parts = [f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in _runs(seqs)]
    more = f" ... ({len(parts) - limit} more)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def _ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso).timestamp() * 1000)


def _clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%H:%M:%S.%f")[:-3]
