"""A raw register reader over Modbus TCP: ``read(kind, address, count, unit_id)`` -> words.

The one Modbus TCP transport of the project: profile devices read through it
(`drivers.modbus.driver.TcpUnit`), and SunSpec discovery and the commissioning scan use it for
arbitrary reads of several unit ids over one connection. Policy: no pymodbus retries, no
background reconnect, the connection dropped after any transport failure (a late answer must
never be matched to the next request). Error mapping:

- refused/unreachable connection, no answer in time, broken connection -> `DeviceTimeout`;
- Modbus exception 06 (busy) -> `DeviceBusy`; any other exception code -> `DeviceRejected`
  (0x02 "illegal address" and 0x0B "gateway target failed to respond" included);
- an answer of the wrong length -> `DecodeError`.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus.profiles import RegisterKind
from gateway.errors import DecodeError, DeviceBusy, DeviceRejected, DeviceTimeout

_log = logging.getLogger(__name__)

#: Modbus exception code "server device busy".
EXCEPTION_BUSY = 0x06


class ModbusExceptionAnswer(DeviceRejected):
    """The device answered with Modbus exception ``code`` (other than busy).

    Commissioning needs the code: 0x0A/0x0B come from a TCP-to-RS-485 gateway and mean "no
    such unit behind me", while 0x01/0x02 mean a device is there but lacks the function or
    register.
    """

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class ModbusTcpRegisters:
    """Reads registers from ``host``:``port``; connects lazily, reconnects after a failure.

    ``timeout`` bounds the connection attempt and each request, in seconds. Usable as
    ``async with``; `close` never raises.
    """

    def __init__(self, *, host: str, port: int, timeout: float = 2.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._host = host
        self._port = port
        self._timeout = timeout
        self._client: AsyncModbusTcpClient | None = None
        self._lost = asyncio.Event()

    def __repr__(self) -> str:
        return f"ModbusTcpRegisters({self._host}:{self._port})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Drop the connection; idempotent."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.close()
        except Exception:  # close() must never raise; pymodbus errors are only logged
            _log.debug("%r: error while closing", self, exc_info=True)

    async def connect(self) -> None:
        """Connect now (otherwise the first read does); raises `DeviceTimeout` on failure."""
        await self._connect()

    async def _connect(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        await self.close()
        lost = self._lost = asyncio.Event()

        def trace_connect(connected: bool) -> None:
            if not connected:
                lost.set()

        client = AsyncModbusTcpClient(
            self._host,
            port=self._port,
            timeout=self._timeout,
            retries=0,
            reconnect_delay=0,
            name=f"modbus-{self._host}:{self._port}",
            trace_connect=trace_connect,
        )
        try:
            connected = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise DeviceTimeout(f"{self!r}: cannot connect: {exc}") from exc
        if not connected:
            client.close()
            raise DeviceTimeout(f"{self!r}: connection refused or timed out")
        self._client = client
        return client

    async def read(
        self, kind: RegisterKind, address: int, count: int, *, unit_id: int
    ) -> list[int]:
        """``count`` registers of ``kind`` from ``address`` of unit ``unit_id``."""
        client = await self._connect()
        read = (
            client.read_input_registers
            if kind is RegisterKind.INPUT
            else client.read_holding_registers
        )
        what = f"unit {unit_id} read {kind.value} {address}+{count}"
        pending = asyncio.ensure_future(read(address, count=count, device_id=unit_id))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait((pending, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            await self.close()
            raise DeviceTimeout(f"{self!r}: connection lost during {what}")
        try:
            response = pending.result()
        except (TimeoutError, OSError, ModbusException) as exc:
            await self.close()
            raise DeviceTimeout(f"{self!r}: no answer to {what}: {exc}") from exc
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            message = f"{self!r}: Modbus exception {code:#04x} for {what}"
            if code == EXCEPTION_BUSY:
                raise DeviceBusy(message)
            raise ModbusExceptionAnswer(message, code=code)
        registers = getattr(response, "registers", None)
        if not isinstance(registers, list) or len(registers) != count:
            got = len(registers) if isinstance(registers, list) else "no"
            raise DecodeError(f"{self!r}: {what} returned {got} registers")
        return registers
