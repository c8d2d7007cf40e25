"""Modbus RTU bus benchmark (issue 3, acceptance 4): achieved registers/s against the wire limit.

For each baud rate and read size N, the gateway's `ModbusLine` reads N registers repeatedly from
the baud-timed simulator (`simulators.modbus_rtu`) over a real PTY pair, and the achieved rate is
compared with the physical limit of one transaction:

    T = (13 + 2N) * 11 / baud + 2 * t3.5 + turnaround

(request 8 bytes, answer 5 + 2N bytes, a gap after each frame, the device's turnaround). The line
runs with every rule of issue 15: the answer searched for anywhere in what arrived and checked
against the wire-time lower bound, silence since the last byte received before each request,
the deadline including the answer's wire time. Then a
full SDM630 poll cycle through the engine is counted in transactions and compared with the
planner's minimal plan (`drivers.modbus.planner.plan_profile`).

    .venv/bin/python bench/modbus_bus.py [--seconds 3] [--turnaround 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time

from drivers.modbus.engine import ModbusDriver
from drivers.modbus.line import LineUnit, ModbusLine, SerialSettings
from drivers.modbus.planner import plan_profile
from drivers.modbus.profiles import load_profile
from drivers.modbus.rtu import transaction_limit
from simulators.meters import Sdm630Meter
from simulators.modbus_rtu import ModbusRtuSimulator

BAUDS = (9600, 19200)
SIZES = (2, 40, 80)  # 80: the SDM630's own per-request limit


async def registers_per_second(
    baudrate: int, count: int, seconds: float, turnaround: float
) -> tuple[float, float, int]:
    """(achieved registers/s, limit registers/s, transactions) for reads of ``count`` registers."""
    meter = Sdm630Meter(seed=1)
    async with ModbusRtuSimulator(
        devices={1: meter}, baudrate=baudrate, turnaround=turnaround
    ) as sim:
        line = ModbusLine(settings=SerialSettings(port=sim.path, baudrate=baudrate))
        await line.open()
        try:
            await line.read_registers(
                unit_id=1, function=4, address=0, count=count, response_timeout=1.0
            )
            done = 0
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                await line.read_registers(
                    unit_id=1, function=4, address=0, count=count, response_timeout=1.0
                )
                done += 1
            elapsed = time.monotonic() - start
        finally:
            await line.close()
    limit = count / transaction_limit(count, baudrate, turnaround)
    return done * count / elapsed, limit, done


async def poll_cycle(baudrate: int, turnaround: float) -> tuple[int, int, float, float]:
    """(transactions in one SDM630 poll, minimal plan length, seconds, limit seconds)."""
    profile = load_profile("sdm630")
    plan = plan_profile(profile)
    async with ModbusRtuSimulator(
        devices={1: Sdm630Meter(seed=1)}, baudrate=baudrate, turnaround=turnaround
    ) as sim:
        line = ModbusLine(settings=SerialSettings(port=sim.path, baudrate=baudrate))
        driver = ModbusDriver(
            reader=LineUnit(line=line, unit_id=1, response_timeout=1.0), profile=profile, name="b"
        )
        await driver.open()
        try:
            await driver.poll()  # warm-up; the gap before the first request is then accounted
            before = sim.request_count(1)
            start = time.monotonic()
            await driver.poll()
            elapsed = time.monotonic() - start
        finally:
            await driver.close()
        transactions = sim.request_count(1) - before
    limit = sum(transaction_limit(r.count, baudrate, turnaround) for r in plan)
    return transactions, len(plan), elapsed, limit


async def main(seconds: float, turnaround: float) -> None:
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}")
    print(
        f"python {platform.python_version()}, turnaround {turnaround * 1000:.0f} ms, "
        f"{seconds:.0f} s per row\n"
    )
    print(f"{'baud':>6} {'N':>4} {'txn':>5} {'achieved reg/s':>15} {'limit reg/s':>12} {'%':>7}")
    for baud in BAUDS:
        for count in SIZES:
            achieved, limit, done = await registers_per_second(baud, count, seconds, turnaround)
            print(
                f"{baud:>6} {count:>4} {done:>5} {achieved:>15.1f} {limit:>12.1f} "
                f"{100 * achieved / limit:>6.1f}%"
            )
    print(
        f"\n{'baud':>6} {'SDM630 poll: txn':>17} {'minimal plan':>13} {'time s':>8} "
        f"{'limit s':>8} {'%':>7}"
    )
    for baud in BAUDS:
        txn, minimal, elapsed, limit = await poll_cycle(baud, turnaround)
        print(
            f"{baud:>6} {txn:>17} {minimal:>13} {elapsed:>8.3f} {limit:>8.3f} "
            f"{100 * limit / elapsed:>6.1f}%"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    parser.add_argument("--turnaround", type=float, default=0.010, help="device turnaround, s")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.turnaround))
