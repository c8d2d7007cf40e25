"""The fault proxy does what the chaos schedule asks of it, on loopback against an echo server."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.chaos.proxy import FaultProxy, ProxyHost
from tests.chaos.storetap import StoreTap
from tests.servers import free_port


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(4096):
                self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    serving = threading.Thread(target=server.serve_forever, name="echo")
    serving.start()
    host = ProxyHost().start()
    try:
        yield host.add("echo", server.server_address[1])
    finally:
        host.stop()
        server.shutdown()
        server.server_close()
        serving.join()


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.settimeout(5)
    return sock


def test_passes_bytes_through(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"hello")
        assert sock.recv(100) == b"hello"
    assert proxy.mode == "pass"


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        proxy.add_latency(0.2)
        began = time.monotonic()
        sock.sendall(b"slow")
        assert sock.recv(100) == b"slow"
        assert time.monotonic() - began >= 0.4  # 0.2 s up, 0.2 s down
        proxy.add_latency(-0.2)
        assert proxy.mode == "pass"


def test_blackhole_holds_bytes_until_it_ends(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        proxy.blackhole()
        sock.sendall(b"held")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        # A connection opened during the black-hole is accepted but goes nowhere either.
        with connect(proxy) as late:
            late.sendall(b"late")
            late.settimeout(0.3)
            with pytest.raises(TimeoutError):
                late.recv(100)
            proxy.end_blackhole(reset=False)
            late.settimeout(5)
            assert late.recv(100) == b"late"
        sock.settimeout(5)
        assert sock.recv(100) == b"held"


def test_blackholes_nest(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        proxy.blackhole()
        proxy.blackhole()
        proxy.end_blackhole(reset=False)
        assert proxy.mode == "blackhole"
        sock.sendall(b"x")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        proxy.end_blackhole(reset=False)
        sock.settimeout(5)
        assert sock.recv(100) == b"x"


def test_blackhole_ending_in_a_reset_breaks_the_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        proxy.blackhole()
        sock.sendall(b"lost")
        proxy.end_blackhole(reset=True)
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    with connect(proxy) as sock:  # new connections pass again
        sock.sendall(b"again")
        assert sock.recv(100) == b"again"


def test_drop_resets_open_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"a")
        assert sock.recv(100) == b"a"
        proxy.drop()
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    assert proxy.stats.dropped == 1


def test_an_upstream_that_refuses_closes_the_client(proxy: FaultProxy) -> None:
    proxy.upstream_port = free_port()  # nothing listens there
    with pytest.raises(ConnectionResetError), connect(proxy) as sock:  # at connect or recv
        sock.recv(100)
    assert proxy.stats.refused_upstream == 1


def test_store_tap_pairs_writes_with_answers() -> None:
    tap = StoreTap()
    body = b"power,site=s,device=d value=1.5,seq=41i 1\npower,site=s,device=d value=2,seq=42i 2"
    request = b"POST /api/v2/write?org=o HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    tap(1, True, request[:30])
    tap(1, True, request[30:])
    tap(1, False, b"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n")
    tap(1, True, request)
    tap(1, False, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
    assert [(a.status, a.seqs) for a in tap.answers] == [(204, (41, 42)), (503, (41, 42))]
    assert [a.seqs for a in tap.acknowledged()] == [(41, 42)]
