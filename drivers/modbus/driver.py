"""Modbus TCP devices: the generic engine over a shared Modbus TCP connection.

`ModbusTcpDriver` is `drivers.modbus.engine.ModbusDriver` (plan, read, decode, all-or-nothing
polls) with `TcpUnit` as its register reader, so TCP and RTU devices share one engine and differ
only in transport. The connection is a `drivers.modbus.tcp_client.ModbusTcpRegisters`, one per
endpoint, shared by every unit behind it (the gateway injects it; see
`gateway.registry.BusRegistry.modbus_tcp`). Its contract applies: answers validated against the
request (transaction id, unit id, function code, byte count) before anything is decoded, and

- refused/unreachable connection, no answer in time, connection closed before answering ->
  `DeviceTimeout`;
- Modbus exception 06 (server device busy) -> `DeviceBusy`;
- any other Modbus exception code -> `DeviceRejected` (`ModbusExceptionAnswer`, with ``code``);
- a broken, truncated or foreign answer, or undecodable registers -> `DecodeError`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from drivers.modbus.engine import ModbusDriver
from drivers.modbus.planner import ReadRequest
from drivers.modbus.profiles import Profile
from drivers.modbus.tcp_client import ModbusTcpRegisters


class TcpUnit:
    """One unit id behind a Modbus TCP endpoint: the `drivers.modbus.engine.RegisterReader`.

    Holds one reference on the shared ``registers`` while open (`open`, or the first `read`), so
    that closing a failing unit never drops the connection its neighbours use.
    ``response_timeout`` bounds each of its requests (default: the connection's ``timeout``).
    """

    def __init__(
        self,
        *,
        registers: ModbusTcpRegisters,
        unit_id: int,
        response_timeout: float | None = None,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id must be 0..255, got {unit_id}")
        if response_timeout is not None and response_timeout <= 0:
            raise ValueError(f"response_timeout must be positive, got {response_timeout}")
        self.registers = registers
        self.unit_id = unit_id
        self.response_timeout = response_timeout
        self._open = False

    def __repr__(self) -> str:
        return f"{self.registers!r} unit {self.unit_id}"

    def faults(self) -> Counter[str]:
        """This unit's fault counters on the shared connection (`drivers.base.ReportsFaults`)."""
        return self.registers.faults(self.unit_id)

    async def open(self) -> None:
        """Take a reference on the connection (connecting if needed); raises `DeviceTimeout`
        when the endpoint does not accept."""
        if not self._open:
            await self.registers.open()
            self._open = True

    async def close(self) -> None:
        """Release this unit's reference; never raises."""
        if self._open:
            self._open = False
            await self.registers.close()

    async def read(self, request: ReadRequest) -> Sequence[int]:
        """One read of ``request.count`` registers (opening first if needed)."""
        await self.open()
        return await self.registers.read(
            request.kind,
            request.address,
            request.count,
            unit_id=self.unit_id,
            response_timeout=self.response_timeout,
        )


class ModbusTcpDriver(ModbusDriver):
    """A Modbus TCP device (or a unit behind a TCP gateway) described by a `Profile`.

    ``registers`` is the endpoint's shared connection; callers that poll a single device may
    pass ``host`` and ``port`` instead, and the driver makes a connection of its own.
    ``unit_id`` is the Modbus unit identifier (1..247 behind a gateway; many native TCP devices
    accept any value); ``timeout`` bounds each request (and, for a connection of its own, the
    connection attempt), in seconds.
    """

    def __init__(
        self,
        *,
        unit_id: int,
        profile: Profile,
        registers: ModbusTcpRegisters | None = None,
        host: str | None = None,
        port: int | None = None,
        timeout: float = 2.0,
    ) -> None:
        if registers is None:
            if host is None or port is None:
                raise ValueError("pass either registers or host and port")
            registers = ModbusTcpRegisters(host=host, port=port, timeout=timeout)
        elif host is not None or port is not None:
            raise ValueError("pass either registers or host and port, not both")
        self.unit = TcpUnit(registers=registers, unit_id=unit_id, response_timeout=timeout)
        super().__init__(
            reader=self.unit,
            profile=profile,
            name=f"{registers.host}:{registers.port} unit={unit_id}",
        )
