"""A test peer speaking the InfluxDB v2 write API (``POST /api/v2/write``), written for the tests
from InfluxDB's API documentation, with the answer of each request decided by the test.

InfluxDB 2.x answers 204 on success and, on failure, a JSON body ``{"code": ..., "message": ...}``:
400 ``invalid`` ("unable to parse ..."), 401 ``unauthorized``, 403 ``forbidden``, 404 ``not found``
("bucket ... not found"), 413 ``request too large``, 422 ``unprocessable entity`` (e.g. points
beyond the retention policy). The peer records every request and stores the lines of accepted
ones, so a test can count what was written.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    """One write request as the peer saw it."""

    path: str
    authorization: str
    lines: list[str]


#: Decides the answer to a request: (HTTP status, JSON body or None).
Policy = Callable[[Request], tuple[int, dict[str, Any] | None]]


def accept(request: Request) -> tuple[int, dict[str, Any] | None]:
    return 204, None


def error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"code": code, "message": message}


class InfluxPeer:
    """Serves on a free loopback port until `stop`; ``policy`` may be replaced at any time."""

    def __init__(self, policy: Policy = accept) -> None:
        self.policy = policy
        self.requests: list[Request] = []
        self.stored: list[str] = []
        self._lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                request = Request(
                    path=self.path.split("?")[0],
                    authorization=self.headers.get("Authorization", ""),
                    lines=[line for line in body.split("\n") if line],
                )
                with peer._lock:
                    peer.requests.append(request)
                    status, answer = peer.policy(request)
                    if status == 204:
                        peer.stored.extend(request.lines)
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="influx-peer", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def snapshot(self) -> tuple[list[Request], list[str]]:
        with self._lock:
            return list(self.requests), list(self.stored)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
