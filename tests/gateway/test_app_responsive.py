"""The daemon's event loop never waits on the disk, at start-up or at shutdown.

Opening the buffer runs ``PRAGMA quick_check`` over the whole file, which takes seconds on a slow
SD card holding a large backlog; closing it waits for the buffer's thread. Both must happen off
the event loop: a heartbeat task on the loop must keep beating while they run. The slow card is
modelled by a buffer whose open and close take `SLOW` seconds on the thread they run on, so that
the test checks responsiveness (the heartbeat never stalls for anything like that long) rather
than a speed figure.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import gateway.app
from gateway.app import GatewayRuntime, run_gateway
from gateway.buffer import SqliteBuffer
from gateway.config import parse_config
from tests.servers import free_port

#: How long the slow card takes to open (quick_check) and to close the buffer.
SLOW = 0.6
#: The longest the heartbeat may stall: a fraction of SLOW, far above normal loop latency.
STALL = SLOW / 3


class SlowCardBuffer(SqliteBuffer):
    """A real `SqliteBuffer` whose open and close block their thread for `SLOW` seconds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(SLOW)  # blocking on purpose: what quick_check does on a slow card
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        time.sleep(SLOW)
        super().close()


def test_opening_and_closing_the_buffer_never_stall_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.app, "SqliteBuffer", SlowCardBuffer)
    config = parse_config(
        {
            "site": {"id": "kg"},
            "mqtt": {"host": "127.0.0.1", "port": free_port()},  # no broker: it keeps retrying
            "buffer": {"path": str(tmp_path / "buffer.sqlite3")},
            "clock": {"sync": "none"},
            "devices": [],
        },
        source="test",
    )

    async def main() -> tuple[float, float]:
        stop = asyncio.Event()
        started = asyncio.Event()
        gaps: list[float] = []

        async def heartbeat() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        def on_start(_: GatewayRuntime) -> None:
            started.set()

        beat = asyncio.create_task(heartbeat())
        t0 = time.monotonic()
        task = asyncio.create_task(run_gateway(config, stop=stop, started=on_start))
        async with asyncio.timeout(30):
            await started.wait()
            stop.set()
            await task
        elapsed = time.monotonic() - t0
        beat.cancel()
        return elapsed, max(gaps)

    elapsed, worst = asyncio.run(main())

    assert elapsed >= 2 * SLOW, "the slow open and close did run"
    assert worst < STALL, f"the event loop stalled for {worst:.3f} s"
