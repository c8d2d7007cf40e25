"""Serves the local status on a unix socket and, optionally, on a localhost TCP port.

Protocol: plain HTTP/1.1 on both (one request per connection, ``Connection: close``), so that
`gateway status`, ``curl --unix-socket /run/canary-gateway/gateway.sock http://gw/status`` and a
Prometheus scraper all speak it. Routes (GET only):

- ``/status``: the `gateway.local.snapshot.Snapshot` as JSON.
- ``/healthz``: ``200 ok``, or ``503`` with one problem per line (`gateway.health`).
- ``/metrics``: the snapshot in the Prometheus text format (`gateway.local.metrics`), when the
  optional ``prometheus-client`` is installed; ``503`` with the reason otherwise.

The unix socket (``[local] socket``) is made mode 0660: the unit's ``RuntimeDirectory=`` (0750,
group ``canary``) decides who may reach it. When its directory does not exist (a developer's run,
no unit) or another gateway already answers on it, one line is logged and the daemon runs without
it; the same for a TCP port that cannot be bound. Nothing here can stop the daemon: a request is
read with a deadline and bounded in size, and a bug while answering is logged (once per streak)
and answered with 500.

Why not ``prometheus_client.start_http_server``: it serves from a thread of its own, which would
read the daemon's state (dicts the event loop mutates) from another thread, and it would be a
second server next to the socket's. One asyncio server, on the loop, answers both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import LocalConfig
from gateway.health import verdict

# The snapshot's models and the metrics are imported on the first request that needs them, not
# at start-up: most gateways are never asked, and their pydantic models cost memory on a Pi Zero.
# ruff: noqa: PLC0415

if TYPE_CHECKING:
    from gateway.app import GatewayRuntime

log = logging.getLogger(__name__)

#: A request (line and headers) must arrive within this many seconds and bytes.
REQUEST_TIMEOUT = 5.0
REQUEST_LIMIT = 8192
#: Mode of the unix socket: the owner and group ``canary`` may connect.
SOCKET_MODE = 0o660

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

Response = tuple[int, str, bytes]


class LocalStatusServer:
    """Run ``run()`` as a task (`gateway.app`); cancel it to stop. See the module docstring."""

    def __init__(self, *, runtime: GatewayRuntime, config: LocalConfig | None = None) -> None:
        self._runtime = runtime
        self._config = config or runtime.config.local
        self._servers: list[asyncio.Server] = []
        self._socket: tuple[Path, int] | None = None  # (path, inode) of the socket we made
        self._connections: set[asyncio.Task[None]] = set()
        self._failing = False
        #: Where the servers listen, once started (tests, the start-up log line).
        self.listening: list[str] = []

    async def run(self) -> None:
        """Start the listeners, serve until cancelled, then close them and remove the socket."""
        try:
            await self._start()
            if not self._servers:
                return
            log.info("local status on %s", ", ".join(self.listening))
            await asyncio.Event().wait()
        finally:
            await self._close()

    async def _start(self) -> None:
        path = self._config.socket_path
        if path is not None:
            await self._start_unix(path)
        address = self._config.http_address
        if address is not None:
            from gateway.local import metrics

            if not metrics.available():
                log.error("[local] http: %s", metrics.MISSING)
            host, port = address
            try:
                server = await asyncio.start_server(
                    self._connection, host, port, limit=REQUEST_LIMIT
                )
            except OSError as exc:
                log.error(
                    "local status: cannot listen on %s:%d (%s); running without it",
                    host,
                    port,
                    exc.strerror or exc,
                )
                return
            self._servers.append(server)
            self.listening.append(f"http://{self._config.http}")

    async def _start_unix(self, path: Path) -> None:
        if not path.parent.is_dir():
            log.info(
                "local status socket off: %s does not exist (the unit creates it; "
                "`gateway status` needs it)",
                path.parent,
            )
            return
        if await _answers(path):
            log.error("local status socket off: another gateway already answers on %s", path)
            return
        try:
            # asyncio removes a stale socket file left by a crash (checked above that nobody
            # answers on it); another kind of file there fails the bind.
            server = await asyncio.start_unix_server(
                self._connection, path=str(path), limit=REQUEST_LIMIT
            )
            os.chmod(path, SOCKET_MODE)
            inode = os.stat(path).st_ino
        except OSError as exc:
            log.error(
                "local status socket off: cannot listen on %s (%s)", path, exc.strerror or exc
            )
            return
        self._servers.append(server)
        self._socket = (path, inode)
        self.listening.append(str(path))

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._socket is not None:
            path, inode = self._socket
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                if stat.S_ISSOCK(info.st_mode) and info.st_ino == inode:  # still ours
                    path.unlink()
            self._socket = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection callback always runs in its own task
        self._connections.add(task)
        try:
            await self._serve_one(reader, writer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return  # a client that went away, or never finished a request: nothing to answer
        status, content_type, body = await self._answer(head)
        response = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        # A client that never reads its answer must not hold the connection for ever.
        with contextlib.suppress(OSError, TimeoutError):
            writer.write(response + body)
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.drain()

    async def _answer(self, head: bytes) -> Response:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, "text/plain; charset=utf-8", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0].decode("ascii", "replace")
        route = self._routes().get(target)
        if route is None:
            return 404, "text/plain; charset=utf-8", b"not found: try /status, /healthz, /metrics\n"
        if method != b"GET":
            return 405, "text/plain; charset=utf-8", b"only GET\n"
        try:
            answer = await route()
        except Exception:  # a bug must cost one answer, never the daemon
            if not self._failing:
                log.exception("local status: answering %s failed (a bug)", target)
            self._failing = True
            return 500, "text/plain; charset=utf-8", b"internal error (see the journal)\n"
        if self._failing:
            log.info("local status answers again")
            self._failing = False
        return answer

    def _routes(self) -> dict[str, Callable[[], Awaitable[Response]]]:
        return {"/status": self._status, "/healthz": self._healthz, "/metrics": self._metrics}

    async def _status(self) -> Response:
        from gateway.local.snapshot import take_snapshot

        snapshot = await take_snapshot(self._runtime)
        return 200, "application/json", snapshot.model_dump_json().encode() + b"\n"

    async def _healthz(self) -> Response:
        health = verdict(self._runtime, time.monotonic())
        if health.ok:
            return 200, "text/plain; charset=utf-8", b"ok\n"
        return 503, "text/plain; charset=utf-8", "".join(f"{p}\n" for p in health.problems).encode()

    async def _metrics(self) -> Response:
        from gateway.local import metrics
        from gateway.local.snapshot import take_snapshot

        if not metrics.available():
            return 503, "text/plain; charset=utf-8", f"{metrics.MISSING}\n".encode()
        content_type, body = metrics.render(await take_snapshot(self._runtime))
        return 200, content_type, body


async def _answers(path: Path) -> bool:
    """Whether something accepts connections on the unix socket ``path`` now."""
    try:
        async with asyncio.timeout(1.0):
            _reader, writer = await asyncio.open_unix_connection(str(path))
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
