"""The SunSpec driver: discovers a device's models once per connection, then polls them.

`open` connects, finds the SunSpec map (`discovery.discover`), reads model 1 (logged once:
manufacturer, model, serial number) and fixes the metrics from the models present, so the keys
are known before the first `poll`. `poll` reads the selected models in as few requests as
possible without ever separating a value from its scale factor (`plan`: whole models per read),
checks that every model is still where discovery found it, and decodes with the models' scale
factors.

Announced lengths are read as pysunspec2 reads them (`ModelDef.shape`): model 1 with ``L = 65``
(no trailing pad) or any model without repeating block with extra trailing registers is read;
a model whose length fits no layout is skipped with one warning per discovery, and the other
models are polled. A problem with model 1 leaves the identity unknown and stops nothing.

If a model moved (firmware update, another device answering behind a gateway) the poll fails
with `DecodeError` and the next poll discovers the map again: wrong numbers are never published.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from drivers.modbus.profiles import RegisterKind
from drivers.modbus.sunspec.decode import DecodedModel
from drivers.modbus.sunspec.discovery import ModelLocation, SunSpecMap, discover
from drivers.modbus.sunspec.metrics import MetricSource, metric_sources
from drivers.modbus.sunspec.models import SUPPORTED_MODELS, model_definitions
from drivers.modbus.sunspec.plan import MAX_GAP, ModelChanged, plan_spans, read_models
from drivers.modbus.tcp_client import ModbusTcpRegisters
from gateway.errors import DecodeError
from gateway.model import MetricSpec, Value

_log = logging.getLogger(__name__)

__all__ = ["MAX_GAP", "SunSpecTcpDriver", "plan_spans"]


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

    def faults(self) -> Mapping[str, int]:
        """This unit's fault counters on the shared connection (`drivers.base.ReportsFaults`)."""
        return self._registers.faults(self._unit_id)

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
        unreadable: list[str] = []
        common: ModelLocation | None = None
        for location in found.models:
            if location.id not in definitions:
                continue
            wanted = self._wanted is None or location.id in self._wanted
            try:
                repeats = definitions[location.id].shape(location.length).repeats
            except ValueError as exc:
                if location.id == 1 or wanted:
                    if location.id != 1:
                        unreadable.append(f"at {location.address}: {exc}")
                    _log.warning(
                        "%r: model %d at %d is not read (%s)%s",
                        self,
                        location.id,
                        location.address,
                        exc,
                        "; identity unknown" if location.id == 1 else "",
                    )
                continue
            if location.id == 1:
                common = common or location
                continue
            if not wanted:
                continue
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
        if not selected and unreadable:
            # Nothing left to poll because of malformed models: an error, not an empty device.
            raise DecodeError(f"{self!r}: no readable SunSpec model; " + "; ".join(unreadable))
        self.identity = MappingProxyType(await self._identity(common))
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

    async def _identity(self, common: ModelLocation | None) -> dict[str, Value]:
        """Model 1's values, or nothing: a common model that does not decode only costs the
        identity (logged once per discovery), never the device's other models."""
        if common is None:
            return {}
        (result,) = await self._read_models([common])
        if isinstance(result, DecodeError):
            _log.warning("%r: model 1 not read (%s); identity unknown", self, result)
            return {}
        return dict(result.values)

    async def _read_models(
        self, locations: Sequence[ModelLocation]
    ) -> list[DecodedModel | DecodeError]:
        results = await read_models(self._read, locations, where=repr(self))
        if any(isinstance(r, ModelChanged) for r in results):
            self._map = None  # rediscover on the next poll
        return results

    async def _decode(self, locations: Sequence[ModelLocation]) -> list[DecodedModel]:
        """Every model decoded, or the first model's error raised (no partial poll)."""
        decoded: list[DecodedModel] = []
        for result in await self._read_models(locations):
            if isinstance(result, DecodeError):
                raise result
            decoded.append(result)
        return decoded

    async def read_all(self) -> list[DecodedModel]:
        """Decode every supported model of the discovered map, by SunSpec point name (for
        commissioning and cross-checks; the scheduler uses `poll`)."""
        found = self._map if self._map is not None else await self._discover()
        definitions = model_definitions()
        readable = []
        for location in found.models:
            if location.id in definitions:
                try:
                    definitions[location.id].shape(location.length)
                except ValueError:
                    continue  # reported by the discovery
                readable.append(location)
        return await self._decode(readable)

    async def poll(self) -> Mapping[str, Value]:
        """Read and decode the selected models; one value per metric (``None`` = no value)."""
        if self._map is None:
            await self._discover()
        if not self._selected:
            return {}
        decoded = await self._decode(self._selected)
        by_model = {(d.id, loc.address): d for d, loc in zip(decoded, self._selected, strict=True)}
        values: dict[str, Value] = {}
        address_of = {loc.id: loc.address for loc in self._selected}
        for source in self._sources:
            model = by_model[(source.model_id, address_of[source.model_id])]
            block = model.values if source.repeat is None else model.repeats[source.repeat]
            values[source.spec.key] = block.get(source.point)
        return values
