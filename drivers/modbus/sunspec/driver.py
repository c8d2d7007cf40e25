"""The SunSpec driver: discovers a device's models once per connection, then polls them.

`open` connects, finds the SunSpec map (`discovery.discover`), reads model 1 (logged once:
manufacturer, model, serial number) and fixes the metrics from the models present, so the keys
are known before the first `poll`. `poll` reads the selected models in as few requests as
possible (the map is contiguous: runs of models are read 125 registers at a time), checks that
every model is still where discovery found it, and decodes with the models' scale factors.

If a model moved (firmware update, another device answering behind a gateway) the poll fails
with `DecodeError` and the next poll discovers the map again: wrong numbers are never published.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from drivers.modbus.profiles import MODBUS_MAX_REGISTERS, RegisterKind
from drivers.modbus.sunspec.decode import DecodedModel, decode_model
from drivers.modbus.sunspec.discovery import ModelLocation, SunSpecMap, discover
from drivers.modbus.sunspec.metrics import MetricSource, metric_sources
from drivers.modbus.sunspec.models import SUPPORTED_MODELS, model_definitions
from drivers.modbus.tcp_client import ModbusTcpRegisters
from gateway.errors import DecodeError
from gateway.model import MetricSpec, Value

_log = logging.getLogger(__name__)

#: Unwanted registers a read may span to join two selected models (same reasoning as profiles).
MAX_GAP = 16


def plan_spans(
    locations: Sequence[ModelLocation], *, max_count: int = MODBUS_MAX_REGISTERS
) -> list[tuple[int, int]]:
    """(address, count) reads covering every model in ``locations``, merging models at most
    `MAX_GAP` registers apart and splitting runs into reads of at most ``max_count``."""
    runs: list[list[int]] = []
    for location in sorted(locations, key=lambda m: m.address):
        if runs and location.address - runs[-1][1] <= MAX_GAP:
            runs[-1][1] = max(runs[-1][1], location.end)
        else:
            runs.append([location.address, location.end])
    spans: list[tuple[int, int]] = []
    for start, end in runs:
        for address in range(start, end, max_count):
            spans.append((address, min(max_count, end - address)))
    return spans


class SunSpecTcpDriver:
    """A SunSpec device (inverter, meter) over Modbus TCP; implements `drivers.base.Driver`.

    ``registers`` is the endpoint's shared connection (`gateway.registry.BusRegistry.modbus_tcp`:
    several devices behind one TCP gateway share it, and the driver holds one reference on it
    while open, so closing this device never drops its neighbours' connection); callers that read
    a single device may pass ``host`` and ``port`` instead. ``timeout`` bounds each request (and,
    for a connection of its own, the connection attempt), in seconds. ``models`` restricts
    polling to these model ids (default: every supported model found). `metrics` is empty until
    `open` has discovered the device.
    """

    def __init__(
        self,
        *,
        unit_id: int,
        registers: ModbusTcpRegisters | None = None,
        host: str | None = None,
        port: int | None = None,
        timeout: float = 2.0,
        models: Sequence[int] | None = None,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id must be 0..255, got {unit_id}")
        unknown = set(models or ()) - set(SUPPORTED_MODELS)
        if unknown:
            raise ValueError(f"unsupported SunSpec models {sorted(unknown)}")
        if registers is None:
            if host is None or port is None:
                raise ValueError("pass either registers or host and port")
            registers = ModbusTcpRegisters(host=host, port=port, timeout=timeout)
        elif host is not None or port is not None:
            raise ValueError("pass either registers or host and port, not both")
        self._registers = registers
        self._timeout = timeout
        self._holding = False
        self._where = f"{registers.host}:{registers.port} unit={unit_id}"
        self._unit_id = unit_id
        self._wanted = frozenset(models) if models else None
        self._map: SunSpecMap | None = None
        self._selected: tuple[ModelLocation, ...] = ()
        self._sources: tuple[MetricSource, ...] = ()
        self._metrics: Mapping[str, MetricSpec] = MappingProxyType({})
        self.identity: Mapping[str, Value] = MappingProxyType({})

    def __repr__(self) -> str:
        return f"SunSpecTcpDriver({self._where})"

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        """The metrics of the discovered models (empty before `open`)."""
        return self._metrics

    @property
    def sunspec_map(self) -> SunSpecMap | None:
        """The map found by the last discovery."""
        return self._map

    async def _read(self, address: int, count: int) -> list[int]:
        await self._hold()
        return await self._registers.read(
            RegisterKind.HOLDING,
            address,
            count,
            unit_id=self._unit_id,
            response_timeout=self._timeout,
        )

    async def _hold(self) -> None:
        """Take this driver's one reference on the connection (connecting if needed)."""
        if not self._holding:
            await self._registers.open()
            self._holding = True

    async def open(self) -> None:
        """Connect and discover; raises `DecodeError` if the device has no SunSpec map."""
        await self._hold()
        await self._discover()

    async def close(self) -> None:
        """Release this driver's reference on the connection; never raises."""
        if self._holding:
            self._holding = False
            await self._registers.close()

    async def _discover(self) -> SunSpecMap:
        found = await discover(self._read)
        if found is None:
            raise DecodeError(f"{self!r}: no SunSpec marker at 40000, 0 or 50000")
        definitions = model_definitions()
        selected: list[ModelLocation] = []
        sources: list[MetricSource] = []
        keys: set[str] = set()
        for location in found.models:
            if location.id not in definitions or location.id == 1:
                continue
            if self._wanted is not None and location.id not in self._wanted:
                continue
            try:
                repeats = definitions[location.id].repeat_count(location.length)
            except ValueError as exc:
                raise DecodeError(f"{self!r}: {exc}") from exc
            new = metric_sources(definitions[location.id], repeats)
            clash = keys & {s.spec.key for s in new}
            if clash:
                _log.warning(
                    "%r: model %d at %d repeats metrics %s of an earlier model; skipped "
                    "(select models with `models = [...]`)",
                    self,
                    location.id,
                    location.address,
                    sorted(clash)[:3],
                )
                continue
            keys |= {s.spec.key for s in new}
            selected.append(location)
            sources.extend(new)
        self.identity = MappingProxyType(await self._identity(found))
        self._map = found
        self._selected = tuple(selected)
        self._sources = tuple(sources)
        self._metrics = MappingProxyType({s.spec.key: s.spec for s in sources})
        _log.info(
            "%r: SunSpec at %d, models %s (%s %s, serial %s)",
            self,
            found.base,
            list(found.model_ids),
            self.identity.get("Mn"),
            self.identity.get("Md"),
            self.identity.get("SN"),
        )
        return found

    async def _identity(self, found: SunSpecMap) -> dict[str, Value]:
        common = next((m for m in found.models if m.id == 1), None)
        if common is None:
            return {}
        decoded = await self._read_models([common])
        return dict(decoded[0].values)

    async def _read_models(self, locations: Sequence[ModelLocation]) -> list[DecodedModel]:
        image: dict[int, int] = {}
        for address, count in plan_spans(locations):
            for offset, word in enumerate(await self._read(address, count)):
                image[address + offset] = word
        definitions = model_definitions()
        decoded = []
        for location in locations:
            words = [image[a] for a in range(location.address, location.end)]
            try:
                if words[1] != location.length:
                    raise ValueError(f"model {location.id} length changed to {words[1]}")
                decoded.append(decode_model(definitions[location.id], words))
            except ValueError as exc:
                self._map = None  # rediscover on the next poll
                raise DecodeError(f"{self!r}: at {location.address}: {exc}") from exc
        return decoded

    async def read_all(self) -> list[DecodedModel]:
        """Decode every supported model of the discovered map, by SunSpec point name (for
        commissioning and cross-checks; the scheduler uses `poll`)."""
        found = self._map if self._map is not None else await self._discover()
        supported = [m for m in found.models if m.id in model_definitions()]
        return await self._read_models(supported)

    async def poll(self) -> Mapping[str, Value]:
        """Read and decode the selected models; one value per metric (``None`` = no value)."""
        if self._map is None:
            await self._discover()
        if not self._selected:
            return {}
        decoded = await self._read_models(self._selected)
        by_model = {(d.id, loc.address): d for d, loc in zip(decoded, self._selected, strict=True)}
        values: dict[str, Value] = {}
        address_of = {loc.id: loc.address for loc in self._selected}
        for source in self._sources:
            model = by_model[(source.model_id, address_of[source.model_id])]
            block = model.values if source.repeat is None else model.repeats[source.repeat]
            values[source.spec.key] = block.get(source.point)
        return values
