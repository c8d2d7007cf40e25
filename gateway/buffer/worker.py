"""Runs a synchronous `Buffer` on one dedicated thread so that SQLite never blocks the event loop.

One thread, not the default pool: SQLite connections are best used from a single thread, and the
calls must be serialised anyway. The thread is named and joined on ``close``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway.buffer.base import Batch, Buffer
from gateway.model import Reading

T = TypeVar("T")


class BufferWorker:
    """Async facade over a `Buffer`; every method runs on the worker thread, in call order."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        #: Set whenever readings were appended; the publisher waits on it instead of polling.
        self.appended = asyncio.Event()

    async def _call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def append(self, readings: Sequence[Reading]) -> None:
        await self._call(self.buffer.append, readings)
        self.appended.set()

    async def begin(self, limit: int) -> Batch | None:
        return await self._call(self.buffer.begin, limit)

    async def end(self, batch: Batch, *, accepted: bool) -> None:
        await self._call(self.buffer.end, batch, accepted=accepted)

    async def pending(self) -> int:
        return await self._call(self.buffer.pending)

    async def last_seq(self) -> int:
        return await self._call(self.buffer.last_seq)

    async def close(self) -> None:
        await self._call(self.buffer.close)
        self._pool.shutdown(wait=True)
