"""How the gateway's cost grows with work (issue 10, acceptance 2), and what it costs idle.

The scale curve: 1, 20, 100 and 200 simulated Modbus TCP devices (one endpoint each, the meters
of `bench/peer.py`: a u32 counter and 9 float32), polled every 1 s, payload v2, one local
Mosquitto. For each size the gateway runs alone, is measured from /proc over a window after a
warm-up, and reports:

- CPU-s per 1000 values (utime + stime over the window / values that reached the broker);
- VmRSS at the end of the window and VmHWM;
- poll lateness p99: each device's requests as the simulator saw them arrive, against that
  device's own 1 s grid (lateness of poll k = arrival_k - arrival_0 - k s, less the device's
  smallest lateness, so that the grid's phase does not count);
- wake-ups per second: voluntary context switches of all the process's threads.

The idle cost: one device polled every 5 s; CPU as a share of one core, and wake-ups per second.

    .venv/bin/python bench/scale.py            # 20 s warm-up, 60 s windows
    .venv/bin/python bench/scale.py --quick    # 5 s warm-up, 15 s windows
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer import (
    GATEWAY,
    WORK,
    MeterFarm,
    Subscriber,
    canary_config,
    cpu_seconds,
    memory_kib,
    mosquitto,
)


def wakeups(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def lateness_ms(arrivals: dict[int, list[float]], interval: float) -> list[float]:
    out = []
    for times in arrivals.values():
        polls = [t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > interval / 2]
        if len(polls) < 2:
            continue
        late = [(t - polls[0]) - round((t - polls[0]) / interval) * interval for t in polls]
        floor = min(late)
        out.extend((x - floor) * 1000 for x in late)
    return sorted(out)


@dataclass
class Point:
    devices: int
    interval: float
    cpu_per_1000: float
    cpu_share: float
    rss_mib: float
    hwm_mib: float
    lateness_p99_ms: float
    wakeups_per_s: float
    values: int


def run(devices: int, interval: float, *, warmup: float, window: float) -> Point:
    work = WORK / f"scale-{devices}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    broker = mosquitto(work)
    broker.start()
    epoch = time.time()
    farm = MeterFarm(devices, epoch)
    farm.start()
    subscriber = Subscriber(broker.port, epoch)
    config = canary_config(work, broker.port, farm.ports, "v2", interval=interval)
    out = (work / "canary.log").open("ab")
    proc = subprocess.Popen([GATEWAY, "run", "--config", str(config)], stdout=out, stderr=out)
    try:
        time.sleep(warmup)  # a bench: the warm-up is a fixed time by definition
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}; see {work}/canary.log")
        cpu0, wake0, t0 = cpu_seconds(proc.pid), wakeups(proc.pid), time.monotonic()
        subscriber.open_window()
        farm.recording = True
        time.sleep(window)
        farm.recording = False
        counted = subscriber.close_window()
        cpu1, wake1, t1 = cpu_seconds(proc.pid), wakeups(proc.pid), time.monotonic()
        memory = memory_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subscriber.close()
        farm.stop()
        broker.stop()
    late = lateness_ms(farm.arrivals, interval)
    cpu = cpu1 - cpu0
    return Point(
        devices=devices,
        interval=interval,
        cpu_per_1000=cpu / counted.values * 1000 if counted.values else math.nan,
        cpu_share=cpu / (t1 - t0),
        rss_mib=memory["VmRSS"] / 1024,
        hwm_mib=memory["VmHWM"] / 1024,
        lateness_p99_ms=late[min(len(late) - 1, int(0.99 * len(late)))] if late else math.nan,
        wakeups_per_s=(wake1 - wake0) / (t1 - t0),
        values=counted.values,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 s warm-up, 15 s windows")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 20, 100, 200])
    args = parser.parse_args()
    warmup, window = (5.0, 15.0) if args.quick else (20.0, 60.0)
    points = []
    for devices in args.sizes:
        print(f"{devices} devices at 1 s ...", flush=True)
        points.append(run(devices, 1.0, warmup=warmup, window=window))
        print(f"  {points[-1]}", flush=True)
    print("idle: 1 device at 5 s ...", flush=True)
    idle = run(1, 5.0, warmup=warmup, window=window)
    print(f"  {idle}", flush=True)
    print()
    print(
        "| devices (x 10 values, 1 s) | values/s | CPU-s per 1000 values | CPU % of a core "
        "| VmRSS MiB | VmHWM MiB | poll lateness p99 ms | wake-ups/s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in points:
        print(
            f"| {p.devices} | {p.values / window:.0f} | {p.cpu_per_1000:.3f} | "
            f"{100 * p.cpu_share:.1f} | {p.rss_mib:.1f} | {p.hwm_mib:.1f} | "
            f"{p.lateness_p99_ms:.0f} | {p.wakeups_per_s:.0f} |"
        )
    print(
        f"\nidle (1 device at 5 s): {100 * idle.cpu_share:.2f} % of a core, "
        f"{idle.wakeups_per_s:.1f} wake-ups/s, VmRSS {idle.rss_mib:.1f} MiB"
    )


if __name__ == "__main__":
    main()
