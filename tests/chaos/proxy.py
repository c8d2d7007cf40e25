"""A TCP fault proxy on loopback, written for the chaos test (never shipped code under test).

One `ProxyHost` runs an asyncio loop in a thread of the test process; each `FaultProxy` listens on
its own free 127.0.0.1 port and forwards every accepted connection to one upstream port (the
broker, the store). Its mode can be changed at any time from the test thread:

- ``pass``: bytes are forwarded as they come;
- ``latency``: every chunk is held for a fixed delay in both directions, order kept;
- ``blackhole``: connections are accepted and read, but nothing is forwarded in either direction
  (the bytes are held, as TCP would keep retransmitting them); a new connection is accepted but
  not connected upstream. `end_blackhole` either resumes (the held bytes flow, as after a network
  that came back within TCP's retransmission time) or resets every connection (one that did not);
- `drop` aborts every open connection at once (RST to the client, close upstream).

A connection whose upstream refuses (the broker is down) is closed at once, as the broker's own
port would refuse it. The proxy never changes, drops or reorders bytes within a connection: it
breaks connections, it does not corrupt streams (the protocol peers are not what this test checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_CHUNK = 65536


@dataclass
class ProxyStats:
    """What a proxy saw, for the report."""

    connections: int = 0
    refused_upstream: int = 0
    dropped: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class _Link:
    """One client connection and its upstream twin; two pumps, each reader -> queue -> writer."""

    def __init__(
        self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._proxy = proxy
        self._client_reader, self._client_writer = reader, writer
        self._upstream_writer: asyncio.StreamWriter | None = None
        self._up: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self._down: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        proxy.links_opened += 1
        self.id = proxy.links_opened

    def start(self) -> None:
        self._spawn(self._read(self._client_reader, self._up, up=True))
        self._spawn(self._upstream())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(
        self,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        *,
        up: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_CHUNK):
                if up:
                    self._proxy.stats.bytes_up += len(data)
                else:
                    self._proxy.stats.bytes_down += len(data)
                if self._proxy.tap is not None:
                    self._proxy.tap(self.id, up, data)
                queue.put_nowait((loop.time() + self._proxy.latency, data))
        except OSError:
            pass
        queue.put_nowait(None)  # EOF: the writer closes the other side once the queue is out

    async def _upstream(self) -> None:
        """Connect upstream once the proxy forwards at all (not while black-holed), then pump."""
        await self._proxy.forwarding.wait()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self._proxy.upstream_port)
        except OSError:
            self._proxy.stats.refused_upstream += 1
            self.abort()
            return
        if self._closed:
            _reset(writer)
            return
        self._upstream_writer = writer
        self._spawn(self._read(reader, self._down, up=False))
        self._spawn(self._write(self._down, self._client_writer))
        await self._write(self._up, writer)

    async def _write(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await queue.get()) is not None:
                release, data = item
                await self._proxy.forwarding.wait()
                if (delay := release - loop.time()) > 0:
                    await asyncio.sleep(delay)
                await self._proxy.forwarding.wait()  # a black-hole that began meanwhile
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        self.abort()

    def abort(self) -> None:
        """Close both sides at once (RST where the transport allows), cancel the pumps."""
        if self._closed:
            return
        self._closed = True
        for writer in (self._client_writer, self._upstream_writer):
            if writer is not None:
                _reset(writer)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._proxy.links.discard(self)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (linger 0), as a connection broken by the network is seen."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Listens on ``port`` (127.0.0.1) and forwards to ``upstream_port``; see the module docstring.

    Control methods are called from the test thread; they run on the host's loop and return
    once applied.
    """

    def __init__(self, *, host: ProxyHost, name: str, upstream_port: int) -> None:
        self.name = name
        self.upstream_port = upstream_port
        self.port = 0
        self.latency = 0.0
        self._holds = 0
        self.stats = ProxyStats()
        self.links: set[_Link] = set()
        self.links_opened = 0
        #: Sees every chunk as it arrives: ``tap(link id, upstream?, bytes)``, on the proxy thread.
        self.tap: Callable[[int, bool, bytes], None] | None = None
        self._host = host
        self._server: asyncio.Server | None = None
        self.forwarding = asyncio.Event()

    async def _start(self) -> None:
        self.forwarding.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        link = _Link(self, reader, writer)
        self.links.add(link)
        link.start()

    # --- control, from the test thread -------------------------------------------------------
    #
    # Faults compose: black-holes nest (forwarding resumes when the last one ends) and latencies
    # add up, so the network track and a composite process fault may hold the same link at once.

    @property
    def mode(self) -> str:
        """``blackhole``, ``latency`` or ``pass``."""
        if self._holds:
            return "blackhole"
        return "latency" if self.latency > 0 else "pass"

    def add_latency(self, seconds: float) -> None:
        """Add ``seconds`` (negative: take away) to the delay of every chunk read from now on."""
        self._host.call(self._add_latency, seconds)

    def blackhole(self) -> None:
        """Accept and read, forward nothing (see the module docstring)."""
        self._host.call(self._hold, 1, False)

    def end_blackhole(self, *, reset: bool) -> None:
        """End one black-hole; with ``reset`` every connection held meanwhile is aborted first."""
        self._host.call(self._hold, -1, reset)

    def drop(self) -> None:
        """Abort every open connection now; new ones are forwarded as before."""
        self._host.call(self._drop)

    async def _add_latency(self, seconds: float) -> None:
        self.latency = max(0.0, round(self.latency + seconds, 9))

    async def _hold(self, change: int, reset: bool) -> None:
        if reset:
            await self._drop()
        self._holds += change
        if self._holds:
            self.forwarding.clear()
        else:
            self.forwarding.set()

    async def _drop(self) -> None:
        for link in list(self.links):
            self.stats.dropped += 1
            link.abort()

    async def _close(self) -> None:
        await self._drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class ProxyHost:
    """The thread and event loop that run every `FaultProxy` of one chaos run."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="chaos-proxies", daemon=True
        )
        self.proxies: list[FaultProxy] = []

    def start(self) -> ProxyHost:
        self._thread.start()
        return self

    def call(self, fn: Any, *args: Any, timeout: float = 10.0) -> Any:
        """Run the coroutine function ``fn(*args)`` on the proxies' loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(fn(*args), self._loop).result(timeout)

    def add(self, name: str, upstream_port: int) -> FaultProxy:
        """A new proxy to ``upstream_port``, listening once this returns."""

        async def make() -> FaultProxy:
            proxy = FaultProxy(host=self, name=name, upstream_port=upstream_port)
            await proxy._start()
            return proxy

        proxy: FaultProxy = self.call(make)
        self.proxies.append(proxy)
        return proxy

    def stop(self) -> None:
        """Close every proxy and connection, then end the thread (if it ever started)."""
        if not self._thread.is_alive():
            self._loop.close()
            return
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                self.call(proxy._close)

        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_rest)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
