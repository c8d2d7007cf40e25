"""Modbus TCP driver: executes a profile's read plan with pymodbus and decodes the points.

One failed poll is one `DeviceError`: pymodbus is configured not to retry requests and not to
reconnect in the background (``retries=0``, ``reconnect_delay=0``), so a failure surfaces at once
and the scheduler's own backoff decides when to try again. After any transport failure the
connection is dropped, because a late answer to a timed-out request would otherwise be matched
against the next one; the next `poll` reconnects transparently.

Error mapping:

- refused/unreachable connection, no answer in time, broken connection → `DeviceTimeout`;
- Modbus exception 06 (server device busy) → `DeviceBusy`;
- any other Modbus exception code → `DeviceRejected`;
- an answer of the wrong length or undecodable registers → `DecodeError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus.codec import decode
from drivers.modbus.planner import ReadRequest, plan_profile
from drivers.modbus.profiles import Profile, RegisterKind
from gateway.errors import DecodeError, DeviceBusy, DeviceRejected, DeviceTimeout
from gateway.model import MetricSpec, Value

_log = logging.getLogger(__name__)

#: Modbus exception code "server device busy".
EXCEPTION_BUSY = 0x06


class ModbusTcpDriver:
    """A Modbus TCP device (or a unit behind a TCP gateway) described by a `Profile`.

    Implements `drivers.base.Driver`. ``unit_id`` is the Modbus unit identifier (1..247 for a
    device behind a gateway; many native TCP devices accept any value). ``timeout`` bounds both
    the connection attempt and each request, in seconds.
    """

    def __init__(
        self, *, host: str, port: int, unit_id: int, profile: Profile, timeout: float = 2.0
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id must be 0..255, got {unit_id}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._host = host
        self._port = port
        self._unit_id = unit_id
        self._profile = profile
        self._timeout = timeout
        self._plan: tuple[ReadRequest, ...] = plan_profile(profile)
        self._client: AsyncModbusTcpClient | None = None
        # Set by pymodbus's trace_connect when the current connection drops: pymodbus leaves a
        # pending request waiting for its full timeout, the driver gives up at once instead.
        self._lost = asyncio.Event()

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        """One metric per profile point, keyed like the values `poll` returns."""
        return self._profile.metrics

    @property
    def plan(self) -> tuple[ReadRequest, ...]:
        """The reads one `poll` performs, in order."""
        return self._plan

    def __repr__(self) -> str:
        return (
            f"ModbusTcpDriver({self._host}:{self._port} unit={self._unit_id} "
            f"profile={self._profile.name})"
        )

    async def open(self) -> None:
        """Connect; raises `DeviceTimeout` if the connection is refused or times out."""
        await self._connect()

    async def close(self) -> None:
        """Drop the connection; never raises and may be called repeatedly."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.close()
        except Exception:  # close() must never raise; whatever pymodbus throws is only logged
            _log.debug("%r: error while closing", self, exc_info=True)

    async def poll(self) -> Mapping[str, Value]:
        """Read every planned range and decode all points.

        Reconnects first if the previous poll lost the connection. Returns one value per point
        (``None`` for sentinels, NaN, infinities); raises a `DeviceError` subclass if any read
        fails, in which case no partial result is returned.
        """
        client = await self._connect()
        values: dict[str, Value] = {}
        for request in self._plan:
            registers = await self._read(client, request)
            for point in request.points:
                start = point.address - request.address
                try:
                    values[point.key] = decode(
                        registers[start : start + point.count],
                        point.data_type,
                        point.order,
                        scale=point.scale,
                        offset=point.offset,
                        sentinel=point.sentinel,
                        use_default_sentinel=point.default_sentinel,
                    )
                except ValueError as exc:
                    raise DecodeError(f"{self!r}: point {point.key!r}: {exc}") from exc
        return values

    async def _connect(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        await self.close()
        # AsyncModbusTcpClient binds to the running loop, so it is created here, not in
        # __init__. reconnect_delay=0 disables pymodbus's background reconnect task and
        # retries=0 its silent request retries: the scheduler owns both policies.
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

    async def _read(self, client: AsyncModbusTcpClient, request: ReadRequest) -> Sequence[int]:
        read = (
            client.read_input_registers
            if request.kind is RegisterKind.INPUT
            else client.read_holding_registers
        )
        what = f"read {request.kind.value} {request.address}+{request.count}"
        pending = asyncio.ensure_future(
            read(request.address, count=request.count, device_id=self._unit_id)
        )
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
            # The request may still be in flight; never reuse this connection.
            await self.close()
            raise DeviceTimeout(f"{self!r}: no answer to {what}: {exc}") from exc
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            message = f"{self!r}: Modbus exception {code:#04x} for {what}"
            if code == EXCEPTION_BUSY:
                raise DeviceBusy(message)
            raise DeviceRejected(message)
        registers = getattr(response, "registers", None)
        if not isinstance(registers, list) or len(registers) != request.count:
            got = len(registers) if isinstance(registers, list) else "no"
            raise DecodeError(f"{self!r}: {what} returned {got} registers")
        return registers
