"""Child process of the power-cut test: the gateway's polling and draining, on the buffer under test.

It runs what the daemon runs between a poller and the broker: a real `BusPoller` (with the real
`SequenceCounter`, reserving its numbers in the buffer, from `gateway.app.open_delivery`) polls
simulated meters every ``--interval`` seconds and stages the readings on the real write-behind
buffer over a real `SqliteBuffer` (written when not acknowledged within ``--commit-interval``). A drain loop does what
`gateway.sinks.mqtt.MqttPublisher` does with the buffer: live readings first, then the backlog,
``begin`` a batch, "publish" it, and on the simulated broker's PUBACK (after a random delay)
``end(accepted=True)``; now and then a batch is refused and handed back, and the broker goes away
for a while (nothing is begun, PUBACKs wait for the reconnection, the live boundary moves on
reconnect), so that committed readings pile up unacknowledged as in an outage.

Everything it does goes to a side channel that is *not* on the filesystem under test (``--log``, on
a normal disk whose page cache outlives this process), one line per event, written with a single
``write`` so that a SIGKILL never leaves half a line:

- ``ready <start_seq> <pending> <recovered_from|-> <gaps|->``: the buffer is open; ``gaps`` are
  the declared gaps waiting to be announced (``a:b,c:d``).
- ``poll <t> <first> <last>``: readings ``first..last`` exist in memory (staged) since ``t``.
- ``commit-begin <t> <stored> <acked>`` / ``commit <t> <stored> <acked>``: a commit of the
  ``stored`` readings and of the deletion of the ``acked`` seqs (ranges ``a-b,c`` or ``-``)
  started / returned. ``commit-failed <t> <error>`` if it raised.
- ``publish <seq>=<content> ...``: a batch went to the "broker" (content: see `content`).
- ``ack <seqs>`` / ``nack <seqs>``: the broker acknowledged (the readings are delivered) / refused.
- ``broker up|down``: the simulated connection changed.

Times are ``time.monotonic()``, which is system-wide on Linux, so the parent can compare them with
the moment it cut the power. The process runs until it is killed.

    python -m tests.powercut.gateway_writer --db DISK/buffer.sqlite3 --log LOG --synchronous FULL

``--zygote`` starts a fork server instead: it imports everything once, then for each line of
arguments on stdin forks a writer (``spawned <pid>`` on stdout; the writer's ``ready`` follows on
the same stdout) and reports ``exited <pid> <status>`` when it is gone. A cut costs a fork instead
of an interpreter start and the imports, which on a loaded machine is most of a short run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shlex
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from gateway.app import open_delivery
from gateway.buffer import Batch, SqliteBuffer
from gateway.buffer.sqlite import Synchronous
from gateway.buffer.writebehind import WriteBehind
from gateway.model import MetricSpec, Reading, Value, to_epoch_ms
from gateway.scheduler import BusPoller, DeviceState, SequenceCounter


def content(reading: Reading) -> str:
    """What a consumer sees of a reading besides its seq (no spaces, no ``=``)."""
    return (
        f"{reading.device}/{reading.metric}/{reading.value!r}/{to_epoch_ms(reading.ts)}"
        f"/{reading.quality.value}/{int(reading.time_synced)}"
    )


def ranges(seqs: Iterable[int]) -> str:
    """``1-3,7`` for 1, 2, 3, 7; ``-`` for none."""
    ordered = sorted(set(seqs))
    if not ordered:
        return "-"
    parts: list[str] = []
    start = prev = ordered[0]
    for seq in [*ordered[1:], None]:
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if seq is not None:
            start = prev = seq
    return ",".join(parts)


def parse_ranges(text: str) -> list[int]:
    """The inverse of `ranges`."""
    if text == "-":
        return []
    seqs: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seqs.extend(range(int(first), int(last or first) + 1))
    return seqs


class Channel:
    """The side channel: one ``write`` per line on an ``O_APPEND`` file (atomic per line)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def send(self, *words: object) -> None:
        os.write(self._fd, (" ".join(str(w) for w in words) + "\n").encode())


class RecordingBuffer(SqliteBuffer):
    """The real `SqliteBuffer`, reporting each commit's start and successful return."""

    def __init__(self, path: Path, *, channel: Channel, **kwargs: object) -> None:
        self._channel = channel
        super().__init__(path, **kwargs)  # type: ignore[arg-type]

    def commit(
        self,
        readings: Sequence[Reading],
        accepted: Sequence[Batch],
        offsets: Mapping[int, int] | None = None,
        adopted: Sequence[Batch] = (),
    ) -> int:
        stored = ranges(r.seq for r in readings)
        acked = ranges(r.seq for batch in accepted for r in batch.readings)
        self._channel.send("commit-begin", f"{time.monotonic():.6f}", stored, acked)
        try:
            dropped = super().commit(readings, accepted, offsets, adopted)
        except BaseException as exc:
            self._channel.send("commit-failed", f"{time.monotonic():.6f}", type(exc).__name__)
            raise
        self._channel.send("commit", f"{time.monotonic():.6f}", stored, acked)
        return dropped


class SimulatedMeter:
    """A driver whose values are random (seeded per run), so that a reused seq shows as new content."""

    def __init__(self, *, metrics: int, rng: random.Random) -> None:
        self._metrics = {f"m{i}": MetricSpec(key=f"m{i}", unit="W") for i in range(metrics)}
        self._rng = rng

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        return self._metrics

    async def open(self) -> None:
        pass

    async def poll(self) -> Mapping[str, Value]:
        return {key: round(self._rng.uniform(0, 1000), 3) for key in self._metrics}

    async def close(self) -> None:
        pass


async def drain(
    worker: WriteBehind, channel: Channel, rng: random.Random, *, batch_size: int, inflight: int
) -> None:
    """The publisher's use of the buffer, with a simulated broker that comes and goes."""
    connected = asyncio.Event()
    pending: set[asyncio.Task[None]] = set()

    async def broker() -> None:
        up = rng.random() < 0.7
        while True:
            if up:
                await worker.mark_live_boundary()  # as the publisher does on each connect
                connected.set()
            else:
                connected.clear()
            channel.send("broker", "up" if up else "down")
            await asyncio.sleep(rng.uniform(0.05, 0.4) if up else rng.uniform(0.02, 0.3))
            up = not up

    async def acknowledge(batch: Batch) -> None:
        await asyncio.sleep(rng.uniform(0.0, 0.03))  # the broker's PUBACK latency
        await connected.wait()  # paho resends after a reconnect; the PUBACK comes then
        accepted = rng.random() > 0.03
        channel.send("ack" if accepted else "nack", ranges(r.seq for r in batch.readings))
        await worker.end(batch, accepted=accepted)

    link = asyncio.get_running_loop().create_task(broker(), name="broker")
    try:
        while True:
            while len(pending) >= inflight:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            await connected.wait()  # nothing is begun while disconnected
            worker.appended.clear()
            batch = await worker.begin(batch_size, live=True)
            if batch is None:
                batch = await worker.begin(batch_size, live=False)
            if batch is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(worker.appended.wait(), 0.5)
                continue
            channel.send("publish", *(f"{r.seq}={content(r)}" for r in batch.readings))
            task = asyncio.get_running_loop().create_task(acknowledge(batch), name="puback")
            pending.add(task)
            task.add_done_callback(pending.discard)
    finally:
        link.cancel()


async def run(args: argparse.Namespace) -> None:
    channel = Channel(args.log)
    rng = random.Random(args.seed)
    synchronous: Synchronous = args.synchronous
    storage = RecordingBuffer(
        args.db, channel=channel, synchronous=synchronous, boot_id=args.boot_id
    )
    async with contextlib.AsyncExitStack() as stack:
        # What the daemon runs: write-behind over the buffer, numbers reserved in it.
        worker, sequence = await open_delivery(
            storage, commit_interval=args.commit_interval, stack=stack
        )
        gaps = ",".join(f"{g.from_seq}:{g.to_seq}" for g in await worker.declared_gaps()) or "-"
        channel.send(
            "ready", sequence.last, await worker.pending(), storage.recovered_from or "-", gaps
        )
        print("ready", flush=True)
        await poll_and_drain(args, channel, rng, worker, sequence)


async def poll_and_drain(
    args: argparse.Namespace,
    channel: Channel,
    rng: random.Random,
    worker: WriteBehind,
    sequence: SequenceCounter,
) -> None:
    async def stage(readings: Sequence[Reading]) -> None:
        channel.send("poll", f"{time.monotonic():.6f}", readings[0].seq, readings[-1].seq)
        worker.stage(readings)

    devices = [
        DeviceState(
            id=f"meter{i}",
            driver=SimulatedMeter(metrics=args.metrics, rng=rng),
            interval=args.interval,
            guard=10.0,
        )
        for i in range(args.devices)
    ]
    poller = BusPoller(name="bus", devices=devices, sink=stage, sequence=sequence, rng=rng)
    async with asyncio.TaskGroup() as group:
        group.create_task(poller.run(), name="bus")
        group.create_task(
            drain(worker, channel, rng, batch_size=args.batch_size, inflight=args.inflight),
            name="drain",
        )


def zygote() -> None:
    """The fork server (see the module docstring); ends at the end of stdin."""
    for line in sys.stdin:
        argv = shlex.split(line)
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                stderr = os.open(argv[argv.index("--stderr") + 1], os.O_WRONLY | os.O_CREAT, 0o644)
                os.dup2(stderr, 2)
                main(argv)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        print(f"spawned {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exited {pid} {status}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--synchronous", required=True)
    parser.add_argument("--commit-interval", type=float, default=0.05)
    parser.add_argument("--interval", type=float, default=0.01, help="poll interval per device")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--inflight", type=int, default=4, help="batches awaiting a PUBACK")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boot-id", type=int, default=0, help="a power cut is a new boot")
    parser.add_argument("--stderr", type=Path, help="(zygote) where the writer's stderr goes")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    if sys.argv[1:] == ["--zygote"]:
        zygote()
    else:
        main()
