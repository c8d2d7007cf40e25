"""The generic Modbus engine: a profile's read plan, executed over an injected register reader.

A device is data (a `Profile`); the transport is a `RegisterReader` that performs one planned
read. The engine plans once, runs the reads in order and decodes every point, so RTU lines, RTU
over TCP and (later) Modbus TCP share one poll loop and one decoding path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from drivers.base import ReportsFaults
from drivers.modbus.codec import decode
from drivers.modbus.planner import ReadRequest, plan_profile
from drivers.modbus.profiles import Profile
from gateway.errors import DecodeError
from gateway.model import MetricSpec, Value


class RegisterReader(Protocol):
    """One Modbus unit behind some transport.

    ``read`` performs one read of ``request.count`` registers and returns exactly that many, or
    raises a `gateway.errors.DeviceError` subclass. ``open``/``close`` acquire and release the
    transport (``close`` never raises).
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self, request: ReadRequest) -> Sequence[int]: ...


def decode_request(request: ReadRequest, registers: Sequence[int], who: str) -> dict[str, Value]:
    """Decode every point of ``request`` from the registers it returned.

    Raises `DecodeError` when the answer has the wrong length or a point cannot be decoded.
    """
    if len(registers) != request.count:
        raise DecodeError(
            f"{who}: read {request.kind.value} {request.address}+{request.count} returned "
            f"{len(registers)} registers"
        )
    values: dict[str, Value] = {}
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
            raise DecodeError(f"{who}: point {point.key!r}: {exc}") from exc
    return values


class ModbusDriver:
    """A Modbus device: ``profile``'s points read through ``reader``. Implements `Driver`.

    A poll is all-or-nothing: the first failed read raises, and no partial result is returned,
    so a reading is never assembled from two different moments of a failing device.
    """

    def __init__(self, *, reader: RegisterReader, profile: Profile, name: str) -> None:
        self._reader = reader
        self._profile = profile
        self._name = name
        self._plan = plan_profile(profile)

    def __repr__(self) -> str:
        return f"ModbusDriver({self._name} profile={self._profile.name})"

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        """One metric per profile point, keyed like the values `poll` returns."""
        return self._profile.metrics

    @property
    def plan(self) -> tuple[ReadRequest, ...]:
        """The reads one `poll` performs, in order."""
        return self._plan

    async def open(self) -> None:
        """Acquire the transport; raises `DeviceTimeout` if it is unavailable."""
        await self._reader.open()

    async def close(self) -> None:
        """Release the transport; never raises."""
        await self._reader.close()

    def faults(self) -> Mapping[str, int]:
        """The transport's fault counters for this unit (`drivers.base.ReportsFaults`); empty
        when the transport keeps none."""
        reader = self._reader
        return reader.faults() if isinstance(reader, ReportsFaults) else {}

    async def poll(self) -> Mapping[str, Value]:
        """Run the plan and decode every point; raises a `DeviceError` subclass on failure."""
        values: dict[str, Value] = {}
        for request in self._plan:
            registers = await self._reader.read(request)
            values.update(decode_request(request, registers, self._name))
        return values
