"""An in-process Modbus TCP server hosting simulated devices, built on pymodbus 3.16.

Why this shape: pymodbus 3.16's `ModbusTcpServer` is an asyncio protocol object that binds to the
running loop, so it is started with ``serve_forever(background=True)`` (returns once listening)
and stopped with ``shutdown()`` (closes the listener and every client connection) — both from a
test's own event loop, no thread, no `StartAsyncTcpServer` (which blocks until stopped). The
datastore uses the new `pymodbus.simulator.SimDevice`/`SimData` API, not the deprecated
`ModbusDeviceContext`/`ModbusSequentialDataBlock`, so nothing logs deprecation warnings.

Each unit id is an independent device model (`simulators.meters.ModbusDeviceModel`). The
device's ``action`` hook runs on every request before pymodbus slices the response: it calls the
model's ``refresh`` and copies the fresh register image in, so **registers are refreshed on every
request** and no background task is needed. The hook also enforces the device's own read limit,
rejects writes and bit reads, and applies injected exceptions; a ``trace_pdu`` hook can shorten
answers (a malformed reply). Requests for a unit id that is not hosted get exception 0x0B (gateway target device failed to respond), as a real Modbus TCP/RTU
gateway answers for an absent device.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.meters import ModbusDeviceModel, RegisterTable

_log = logging.getLogger(__name__)

_INPUT_FC = 4
_HOLDING_READ_FC = 3


@dataclass(slots=True)
class _Unit:
    """Mutable per-unit state the action hook reads: the model, fault knob and counter."""

    model: ModbusDeviceModel
    exception: ExcCodes | None = None
    missing_registers: int = 0
    requests: int = 0


class ModbusTcpSimulator:
    """Serve ``devices`` (unit id → model) over Modbus TCP on ``host``:``port``.

    ``port=0`` binds an ephemeral port; `port` then reports the bound one, and a later `start`
    after `stop` rebinds that same port so that clients can reconnect to a "rebooted" device.
    Usable as ``async with``. Unit ids must be 1..247 (unit 0 is the catch-all that answers
    0x0B for unknown units).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        devices: Mapping[int, ModbusDeviceModel],
    ) -> None:
        if not devices:
            raise ValueError("a simulator needs at least one device")
        for unit_id in devices:
            if not 1 <= unit_id <= 247:
                raise ValueError(f"unit id must be 1..247, got {unit_id}")
        self._host = host
        self._port = port
        self._units = {unit_id: _Unit(model=model) for unit_id, model in devices.items()}
        self._server: ModbusTcpServer | None = None

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before the first start)."""
        return self._port

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return self._server is not None

    def request_count(self, unit_id: int) -> int:
        """Requests answered for ``unit_id`` since construction (including exceptions)."""
        return self._units[unit_id].requests

    def set_exception(self, unit_id: int, code: int | None) -> None:
        """Fault injection: answer every request to ``unit_id`` with Modbus exception ``code``
        (e.g. 6 = busy, 4 = device failure) until called again with ``None``.

        Raises `ValueError` for a code pymodbus cannot send (see `pymodbus.constants.ExcCodes`).
        """
        self._units[unit_id].exception = None if code is None else ExcCodes(code)

    def set_short_answer(self, unit_id: int, missing_registers: int) -> None:
        """Fault injection: drop the last ``missing_registers`` registers of every read answer
        from ``unit_id`` (a malformed, too-short reply); 0 restores normal answers."""
        if missing_registers < 0:
            raise ValueError(f"missing_registers must be >= 0, got {missing_registers}")
        self._units[unit_id].missing_registers = missing_registers

    async def start(self) -> None:
        """Bind and start serving; returns once the port accepts connections.

        Raises `OSError` if the port cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("simulator already started")
        devices = [self._sim_device(unit_id, unit) for unit_id, unit in self._units.items()]
        devices.append(_catch_all_device())
        # Port 0 goes straight to loop.create_server, so the OS picks a free port atomically;
        # the bound port is read back from the listening socket.
        server = ModbusTcpServer(
            devices, address=(self._host, self._port), trace_pdu=self._trace_pdu
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus logs the OSError and raises RuntimeError
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus lacks hints
            raise OSError(f"cannot listen on {self._host}:{self._port}") from exc
        self._port = _bound_port(server)
        self._server = server
        _log.info(
            "Modbus TCP simulator on %s:%d, units %s", self._host, self._port, sorted(self._units)
        )

    async def stop(self) -> None:
        """Close the listener and every client connection; idempotent, never raises."""
        server, self._server = self._server, None
        if server is None:
            return
        try:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus lacks hints
        except Exception:  # stop() must not raise; pymodbus errors are only logged
            _log.warning("error while stopping the Modbus TCP simulator", exc_info=True)
        # Let the transports run their close callbacks before the caller rebinds or asserts.
        await asyncio.sleep(0)
        _log.info("Modbus TCP simulator on %s:%d stopped", self._host, self._port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """pymodbus hook on every PDU; shortens read answers of units with that fault."""
        unit = self._units.get(pdu.dev_id)
        if sending and unit is not None and unit.missing_registers and not pdu.isError():
            registers = getattr(pdu, "registers", None)
            if isinstance(registers, list) and pdu.function_code in (_INPUT_FC, _HOLDING_READ_FC):
                pdu.registers = registers[: max(0, len(registers) - unit.missing_registers)]
        return pdu

    def _sim_device(self, unit_id: int, unit: _Unit) -> SimDevice:
        layout = unit.model.layout()

        def block(table: RegisterTable) -> list[SimData]:
            if table not in layout or layout[table][1] < 1:
                # pymodbus needs a non-empty block; an INVALID register answers illegal address.
                return [SimData(address=0, count=1, datatype=DataType.INVALID)]
            start, count = layout[table]
            return [SimData(address=start, count=count, values=0, datatype=DataType.REGISTERS)]

        # Coils and discrete inputs are not modelled; pymodbus requires one BITS entry each,
        # and the action hook rejects bit function codes before they read it.
        bits = [SimData(address=0, values=False, datatype=DataType.BITS)]

        async def action(  # noqa: PLR0917 - positional signature fixed by pymodbus SimAction
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            _ = address
            return _serve(
                unit,
                function_code=function_code,
                start_address=start_address,
                count=count,
                registers=registers,
                set_values=set_values,
            )

        return SimDevice(
            id=unit_id,
            simdata=(bits, list(bits), block("holding"), block("input")),
            action=action,
        )


def _serve(
    unit: _Unit,
    *,
    function_code: int,
    start_address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """The per-request hook: fault, limits, refresh, copy the image into pymodbus's block."""
    unit.requests += 1
    if unit.exception is not None:
        return unit.exception
    if set_values is not None or function_code not in (_INPUT_FC, _HOLDING_READ_FC):
        return ExcCodes.ILLEGAL_FUNCTION
    if count > unit.model.max_registers_per_read:
        return ExcCodes.ILLEGAL_VALUE
    table: RegisterTable = "input" if function_code == _INPUT_FC else "holding"
    unit.model.refresh()
    image = unit.model.registers(table)
    layout_start = unit.model.layout()[table][0]
    offset = layout_start - start_address
    registers[offset : offset + len(image)] = image
    return None


def _catch_all_device() -> SimDevice:
    """Unit 0 in pymodbus's SimCore answers for every unhosted unit id: always 0x0B."""

    async def absent(*_args: object) -> ExcCodes:
        return ExcCodes.GATEWAY_NO_RESPONSE

    return SimDevice(
        id=0,
        simdata=[SimData(address=0, count=0x10000, datatype=DataType.REGISTERS)],
        action=absent,
    )


def _bound_port(server: ModbusTcpServer) -> int:
    """The port the listener actually bound (pymodbus keeps the `asyncio.Server` as transport)."""
    sockets = getattr(server.transport, "sockets", None) or ()
    for sock in sockets:
        return int(sock.getsockname()[1])
    raise RuntimeError("pymodbus listener exposes no socket; cannot report the bound port")
