"""A strict Modbus TCP server for tests, written from the protocol documents, not from pymodbus.

It serves fixed register images (function codes 03 and 04 only) as the *MODBUS Application
Protocol Specification V1.1b3* and the *MODBUS Messaging on TCP/IP Implementation Guide V1.0b*
describe them: a 7-byte MBAP header (transaction id, protocol id 0, length, unit id) and a PDU.
Like many real devices (and unlike the project's simulators, which serve one contiguous block), it
answers exception 02 (illegal data address) to any read that touches an address not in its
image, and exception 03 (illegal data value) to a count outside 1..``max_count``. It records every
request, so a test can see which reads a driver made.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03


@dataclass(frozen=True, slots=True)
class Request:
    """One request as received: unit id, function code, start address, register count."""

    unit: int
    function: int
    address: int
    count: int


class RegisterImageServer:
    """Serve ``holding`` (FC 03) and ``input`` (FC 04) register images on a loopback port.

    ``units``: the unit ids that answer (others get exception 0x0B, as a TCP gateway answers for
    a unit it cannot reach); ``None`` answers every unit id. Use as ``async with``.
    """

    def __init__(
        self,
        *,
        holding: Mapping[int, int] | None = None,
        input_registers: Mapping[int, int] | None = None,
        units: set[int] | None = None,
        max_count: int = 125,
    ) -> None:
        self._tables = {3: dict(holding or {}), 4: dict(input_registers or {})}
        self._units = units
        self._max_count = max_count
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.requests: list[Request] = []
        #: Called with each read request after its answer was computed (a test moves values).
        self.after_answer: Callable[[Request], None] | None = None
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections.values()):
                writer.close()  # the handler's read then ends; no task is cancelled
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def set_holding(self, address: int, words: list[int]) -> None:
        """Change holding registers from ``address`` on (a device's values moving)."""
        for offset, word in enumerate(words):
            self._tables[3][address + offset] = word

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while True:
                header = await reader.readexactly(7)
                tid, protocol, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                if protocol != 0:
                    continue  # not Modbus: the guide says to discard it
                answer = self._answer(unit, pdu)
                writer.write(struct.pack(">HHHB", tid, 0, len(answer) + 1, unit) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()

    def _answer(self, unit: int, pdu: bytes) -> bytes:
        function = pdu[0]
        if self._units is not None and unit not in self._units:
            return bytes([function | 0x80, 0x0B])
        if function not in self._tables or len(pdu) != 5:
            return bytes([function | 0x80, ILLEGAL_FUNCTION])
        address, count = struct.unpack(">HH", pdu[1:])
        request = Request(unit, function, address, count)
        self.requests.append(request)
        answer = self._read(function, address, count)
        if self.after_answer is not None:
            self.after_answer(request)
        return answer

    def _read(self, function: int, address: int, count: int) -> bytes:
        if not 1 <= count <= self._max_count:
            return bytes([function | 0x80, ILLEGAL_VALUE])
        table = self._tables[function]
        if any(a not in table for a in range(address, address + count)):
            return bytes([function | 0x80, ILLEGAL_ADDRESS])
        words = [table[a] for a in range(address, address + count)]
        return bytes([function, 2 * count]) + b"".join(w.to_bytes(2, "big") for w in words)
