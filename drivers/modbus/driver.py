"""Modbus TCP devices: the generic engine over one TCP connection.

`ModbusTcpDriver` is `drivers.modbus.engine.ModbusDriver` (plan, read, decode, all-or-nothing
polls) with `TcpUnit` as its register reader, so TCP and RTU devices share one engine and differ
only in transport. Transport policy and error mapping are those of
`drivers.modbus.tcp_client.ModbusTcpRegisters`: no pymodbus retries or background reconnects, the
connection dropped after any transport failure, and

- refused/unreachable connection, no answer in time, broken connection -> `DeviceTimeout`;
- Modbus exception 06 (server device busy) -> `DeviceBusy`;
- any other Modbus exception code -> `DeviceRejected`;
- an answer of the wrong length or undecodable registers -> `DecodeError`.
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.modbus.engine import ModbusDriver
from drivers.modbus.planner import ReadRequest
from drivers.modbus.profiles import Profile
from drivers.modbus.tcp_client import ModbusTcpRegisters


class TcpUnit:
    """One unit id behind a Modbus TCP endpoint: the `drivers.modbus.engine.RegisterReader`."""

    def __init__(self, *, registers: ModbusTcpRegisters, unit_id: int) -> None:
        self._registers = registers
        self.unit_id = unit_id

    def __repr__(self) -> str:
        return f"{self._registers!r} unit {self.unit_id}"

    async def open(self) -> None:
        """Connect now; raises `DeviceTimeout` when the endpoint does not accept."""
        await self._registers.connect()

    async def close(self) -> None:
        """Drop the connection; never raises."""
        await self._registers.close()

    async def read(self, request: ReadRequest) -> Sequence[int]:
        """One read of ``request.count`` registers (reconnecting first if the link was lost)."""
        return await self._registers.read(
            request.kind, request.address, request.count, unit_id=self.unit_id
        )


class ModbusTcpDriver(ModbusDriver):
    """A Modbus TCP device (or a unit behind a TCP gateway) described by a `Profile`.

    ``unit_id`` is the Modbus unit identifier (1..247 behind a gateway; many native TCP devices
    accept any value); ``timeout`` bounds the connection attempt and each request, in seconds.
    """

    def __init__(
        self, *, host: str, port: int, unit_id: int, profile: Profile, timeout: float = 2.0
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id must be 0..255, got {unit_id}")
        registers = ModbusTcpRegisters(host=host, port=port, timeout=timeout)
        super().__init__(
            reader=TcpUnit(registers=registers, unit_id=unit_id),
            profile=profile,
            name=f"{host}:{port} unit={unit_id}",
        )
