"""Serve a `SimI2CBus` over TCP so that a gateway in another process can use the simulated chips.

Wire protocol (all integers big-endian; one request, one response, strictly in turn):

    request  = op:u8  address:u8  length:u16  payload
    response = status:u8  length:u16  payload

    op "W" (0x57)  write ``payload`` (``length`` bytes) to ``address``; response payload empty
    op "R" (0x52)  read ``length`` bytes from ``address``; no request payload; response: the bytes
    op "T" (0x54)  write then read in one bus transaction; request payload = read count:u16
                   followed by the bytes to write; response: the bytes read
    op "S" (0x53)  scan; address and length are 0; response: one byte per acknowledging address

    status 0 = ok, 1 = NACK (payload: reason, UTF-8), 2 = bad request (payload: reason, UTF-8)

The client is `drivers.sensors.i2c_bus.RemoteI2C`. Bus calls run directly on the event loop: they
are in-memory and never sleep (a chip's execution time is simulated time, answered by NACKs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from simulators.i2c import SimI2CBus

logger = logging.getLogger(__name__)

OP_WRITE, OP_READ, OP_TRANSFER, OP_SCAN = b"W"[0], b"R"[0], b"T"[0], b"S"[0]
STATUS_OK, STATUS_NACK, STATUS_BAD_REQUEST = 0, 1, 2


class I2CBusServer:
    """A TCP server exposing one `SimI2CBus` with the protocol in this module's docstring.

    Several clients may connect; their transactions are serialised by the bus's own lock.
    ``port=0`` picks a free port, readable from `port` once `start` returned.
    """

    def __init__(self, *, bus: SimI2CBus, host: str = "127.0.0.1", port: int = 0) -> None:
        self._bus = bus
        self._host = host
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    @property
    def port(self) -> int:
        """The port actually listened on; only valid between `start` and `stop`."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("I2CBusServer is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Listen; returns once clients can connect."""
        self._server = await asyncio.start_server(self._serve, self._host, self._requested_port)
        logger.info("simulated I2C bus listening on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        """Stop listening and close every client connection; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Closing the transports ends each handler at its next read; cancelling the handler
        # tasks instead makes Python 3.11's stream callback log the CancelledError.
        for writer in self._clients.values():
            writer.close()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> I2CBusServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()  # a stream callback always runs in its own task
        if task is not None:
            self._clients[task] = writer
        try:
            while True:
                header = await reader.readexactly(4)
                op, address, length = header[0], header[1], int.from_bytes(header[2:], "big")
                payload = await reader.readexactly(length) if op in (OP_WRITE, OP_TRANSFER) else b""
                status, data = self._handle(op, address, length, payload)
                writer.write(bytes([status]) + len(data).to_bytes(2, "big") + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            if task is not None:
                self._clients.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _handle(self, op: int, address: int, length: int, payload: bytes) -> tuple[int, bytes]:
        try:
            return STATUS_OK, self._execute(op, address, length, payload)
        except OSError as exc:
            return STATUS_NACK, str(exc).encode()
        except ValueError as exc:
            return STATUS_BAD_REQUEST, str(exc).encode()

    def _execute(self, op: int, address: int, length: int, payload: bytes) -> bytes:
        if op == OP_WRITE:
            self._bus.writeto(address, payload)
            return b""
        if op == OP_READ:
            buffer = bytearray(length)
            self._bus.readfrom_into(address, buffer)
            return bytes(buffer)
        if op == OP_TRANSFER and length >= 2:
            buffer = bytearray(int.from_bytes(payload[:2], "big"))
            self._bus.writeto_then_readfrom(address, payload[2:], buffer)
            return bytes(buffer)
        if op == OP_SCAN:
            return bytes(self._bus.scan())
        raise ValueError(f"unknown or malformed op {op:#04x}")
