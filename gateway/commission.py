"""Commissioning: ``gateway scan`` (what answers on a Modbus host or an RS-485 line) and
``gateway read`` (one poll).

`scan_units` probes unit ids through any register reader (`RegisterReader`), so the same logic
serves Modbus TCP (`ModbusTcpRegisters`) and RS-485 (`LineRegisters`, once per baud rate, see
`scan_serial`). Per unit it asks, in order:

1. SunSpec: the "SunS" marker at 40000, 0 or 50000, then the model chain;
2. a shipped profile, guessed by reading characteristic registers (`PROBES`): the TUF-2000M's
   holding map with a signal quality of 0-99, an SDM72's 0x0500 import-power register, an SDM630's
   phase 2 voltage, an SDM120's single voltage with nothing at the phase 2 address;
3. otherwise, a device that answers at all (even with "illegal address") is reported as present
   but unknown, so the installer can declare its points.

A unit is absent when the reader times out or a TCP gateway answers exception 0x0A/0x0B. The
guess is only a guess (a profile cannot be proven from a few registers), and the printed TOML
says so; `gateway read` then shows what the profile decodes, for a sanity check on site.

Some inverters dislike being scanned (brief: they may allow one TCP client, or drop the
connection on unknown registers): the scan uses one connection, reads at most one unit at a time
and stops probing a unit at its first positive identification.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TextIO, get_args

from drivers.base import Driver
from drivers.modbus.codec import DataType, WordOrder, decode_raw
from drivers.modbus.line import LineRegisters, ModbusLine, SerialSettings
from drivers.modbus.profiles import RegisterKind
from drivers.modbus.sunspec.decode import decode_model
from drivers.modbus.sunspec.discovery import ModelLocation, discover
from drivers.modbus.sunspec.models import model_definitions
from drivers.modbus.tcp_client import ModbusExceptionAnswer, ModbusTcpRegisters
from gateway.config import (
    GatewayConfig,
    ModbusDevice,
    Pmsa003iDevice,
    RtuTransport,
    Scd4xDevice,
    SunSpecDevice,
)
from gateway.errors import ConfigError, DeviceBusy, DeviceError, DeviceTimeout
from gateway.measure import DEFAULT_BOUND, Measurement, measure
from gateway.model import MetricSpec, Quality, Value
from gateway.registry import BusRegistry, build_driver

#: Any configured device (the union `gateway.config.DeviceConfig` is a validation type).
DeviceConfig = ModbusDevice | SunSpecDevice | Scd4xDevice | Pmsa003iDevice

#: Exception codes a Modbus gateway answers for a unit that is not on its serial line.
ABSENT_CODES = frozenset({0x0A, 0x0B})

#: The baud rates an ``rtu`` transport accepts, hence the ones a serial scan may report.
SERIAL_BAUDS: tuple[int, ...] = get_args(RtuTransport.model_fields["baudrate"].annotation)
#: What ``gateway scan --serial`` tries by default, the usual factory settings first.
DEFAULT_BAUDS_TEXT = "9600,19200,2400,4800,38400,57600,115200,1200"
#: How long a unit may take to start answering during a serial scan, in seconds. Every silent
#: id costs this much per baud rate, so it is far shorter than a polling timeout; the Modbus
#: serial line spec leaves the turnaround to the device, and one slower than this is found with
#: a longer ``--timeout``.
SERIAL_PROBE_TIMEOUT = 0.15


class RegisterReader(Protocol):
    """Reads registers of one unit; raises `DeviceError` subclasses (see `tcp_client`)."""

    async def read(
        self, kind: RegisterKind, address: int, count: int, *, unit_id: int
    ) -> list[int]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Found:
    """One unit that answered: ``driver`` is "sunspec" or "modbus"; ``profile`` is the guessed
    shipped profile (``None`` if the device matched none); ``note`` is for the installer."""

    unit_id: int
    driver: str
    profile: str | None = None
    models: tuple[int, ...] = ()
    note: str = ""


def _float(words: Sequence[int], order: WordOrder) -> float:
    value = decode_raw(words, DataType.FLOAT32, order)
    return float(value)


def _mains_voltage(value: float) -> bool:
    return math.isfinite(value) and 80.0 <= value <= 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """Read ``count`` registers of ``kind`` at ``address``; the words must satisfy ``accept``."""

    kind: RegisterKind
    address: int
    count: int
    accept: Callable[[Sequence[int]], bool] = field(default=lambda _words: True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """A shipped profile and the checks that, all passing, make it the guess."""

    profile: str
    checks: tuple[Check, ...]
    reason: str


def _tuf_ok(words: Sequence[int]) -> bool:
    forward = _float(words[114:116], WordOrder.CDAB)
    return words[91] <= 99 and math.isfinite(forward) and forward >= 0.0


#: Most specific first: an SDM72 also passes the SDM630 check, an SDM630 the SDM120 one.
PROBES: tuple[Probe, ...] = (
    Probe(
        profile="tuf2000m",
        checks=(Check(kind=RegisterKind.HOLDING, address=0, count=118, accept=_tuf_ok),),
        reason="holding REG0001-0118 readable, signal quality 0-99, CDAB volume",
    ),
    Probe(
        profile="sdm72",
        checks=(
            Check(
                kind=RegisterKind.INPUT,
                address=0,
                count=2,
                accept=lambda w: _mains_voltage(_float(w, WordOrder.ABCD)),
            ),
            Check(kind=RegisterKind.INPUT, address=0x0500, count=4),
        ),
        reason="mains voltage at 30001 and the SDM72 import/export power at 31281",
    ),
    Probe(
        profile="sdm630",
        checks=(
            Check(
                kind=RegisterKind.INPUT,
                address=0,
                count=6,
                accept=lambda w: all(
                    _mains_voltage(_float(w[i : i + 2], WordOrder.ABCD)) for i in (0, 2, 4)
                ),
            ),
        ),
        reason="three mains phase voltages at 30001-30006",
    ),
    Probe(
        profile="sdm120",
        checks=(
            Check(
                kind=RegisterKind.INPUT,
                address=0,
                count=4,
                accept=lambda w: (
                    _mains_voltage(_float(w[0:2], WordOrder.ABCD))
                    and _float(w[2:4], WordOrder.ABCD) == 0.0
                ),
            ),
        ),
        reason="one mains voltage at 30001 and nothing at the phase 2 address",
    ),
)


class _Absent(Exception):
    """The unit did not answer at all (timeout, or gateway exception 0x0A/0x0B)."""


async def _try(
    reader: RegisterReader, unit_id: int, kind: RegisterKind, address: int, count: int
) -> list[int] | None:
    """The registers, ``None`` if the device refused this read, `_Absent` if no device."""
    try:
        return await reader.read(kind, address, count, unit_id=unit_id)
    except DeviceTimeout as exc:
        raise _Absent from exc
    except ModbusExceptionAnswer as exc:
        if exc.code in ABSENT_CODES:
            raise _Absent from exc
        return None
    except DeviceBusy:
        return None  # present, but busy: the other probes may still identify it
    except DeviceError:
        return None


async def probe_unit(reader: RegisterReader, unit_id: int) -> Found | None:
    """Identify one unit; ``None`` if nothing answers at ``unit_id``."""
    answered = False

    async def read_holding(address: int, count: int) -> Sequence[int]:
        nonlocal answered
        words = await _try(reader, unit_id, RegisterKind.HOLDING, address, count)
        if words is None:
            answered = True
            raise ModbusExceptionAnswer("refused", code=0x02)
        answered = True
        return words

    try:
        found = await discover(read_holding)
        if found is not None:
            identity = await _sunspec_identity(reader, unit_id, found.models)
            return Found(unit_id=unit_id, driver="sunspec", models=found.model_ids, note=identity)
        for probe in PROBES:
            if await _passes(reader, unit_id, probe):
                return Found(
                    unit_id=unit_id, driver="modbus", profile=probe.profile, note=probe.reason
                )
            answered = True
    except _Absent:
        if not answered:
            return None
    except DeviceError:
        pass  # a malformed SunSpec chain: present, not identified
    return Found(unit_id=unit_id, driver="modbus", note="answers, but matches no shipped profile")


async def _passes(reader: RegisterReader, unit_id: int, probe: Probe) -> bool:
    for check in probe.checks:
        words = await _try(reader, unit_id, check.kind, check.address, check.count)
        if words is None:
            return False
        try:
            if not check.accept(words):
                return False
        except (ValueError, IndexError):
            return False
    return True


async def _sunspec_identity(
    reader: RegisterReader, unit_id: int, models: Sequence[ModelLocation]
) -> str:
    """Manufacturer, model and serial number from model 1, for the installer's eye."""
    common = next((m for m in models if m.id == 1), None)
    if common is None:
        return ""
    words = await _try(reader, unit_id, RegisterKind.HOLDING, common.address, common.length + 2)
    if words is None:
        return ""
    try:
        values = decode_model(model_definitions()[1], words).values
    except ValueError:
        return ""
    return " ".join(str(values[k]) for k in ("Mn", "Md", "SN") if values.get(k) is not None)


async def scan_units(
    reader: RegisterReader,
    units: Sequence[int],
    *,
    progress: Callable[[int, int, int, Found | None], Awaitable[None] | None] | None = None,
) -> list[Found]:
    """Probe ``units`` in order; ``progress(done, total, unit_id, found)`` after each one."""
    results: list[Found] = []
    for index, unit_id in enumerate(units, start=1):
        found = await probe_unit(reader, unit_id)
        if found is not None:
            results.append(found)
        if progress is not None:
            pending = progress(index, len(units), unit_id, found)
            if pending is not None:
                await pending
    return results


def parse_units(text: str) -> list[int]:
    """``"1-10,20"`` -> ``[1, ..., 10, 20]``; raises `ValueError` outside 1..247."""
    units: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= 247:
            raise ValueError(f"unit ids must be 1..247 (got {part.strip()!r})")
        units.extend(u for u in range(first, last + 1) if u not in units)
    return units


def parse_bauds(text: str) -> list[int]:
    """``"9600,19200"`` -> ``[9600, 19200]``; raises `ValueError` for a rate an ``rtu``
    transport does not accept."""
    bauds: list[int] = []
    for part in text.split(","):
        try:
            baud = int(part.strip())
        except ValueError:
            baud = 0
        if baud not in SERIAL_BAUDS:
            known = ", ".join(str(b) for b in SERIAL_BAUDS)
            raise ValueError(f"baud rates must be among {known} (got {part.strip()!r})")
        if baud not in bauds:
            bauds.append(baud)
    return bauds


def config_snippet(found: Sequence[Found], *, transport: str, where: str) -> str:
    """TOML ``[[devices]]`` entries for ``found``; ``transport`` is the inline transport table.

    Unknown devices are emitted commented out, with a pointer to user-declared points.
    """
    lines = [
        f"# Found by `gateway scan` on {where}. Profiles are guessed from a few registers:",
        "# check every device with `gateway read --config FILE DEVICE` before relying on it.",
    ]
    for item in found:
        lines.append("")
        if item.driver == "sunspec":
            models = ", ".join(str(m) for m in item.models)
            lines.append(f"# SunSpec models {models}" + (f" ({item.note})" if item.note else ""))
            lines += [
                "[[devices]]",
                f'id = "unit-{item.unit_id}-sunspec"',
                'driver = "sunspec"',
                f"unit_id = {item.unit_id}",
                f"transport = {transport}",
            ]
        elif item.profile is not None:
            lines += [
                f"# guessed {item.profile}: {item.note}",
                "[[devices]]",
                f'id = "unit-{item.unit_id}-{item.profile}"',
                'driver = "modbus"',
                f'profile = "{item.profile}"',
                f"unit_id = {item.unit_id}",
                f"transport = {transport}",
            ]
        else:
            lines += [
                f"# unit {item.unit_id} {item.note}: declare its registers as `points = [...]`",
                "# (see docs/configuration.md, 'Your own point table')",
                "# [[devices]]",
                f'# id = "unit-{item.unit_id}"',
                '# driver = "modbus"',
                f"# unit_id = {item.unit_id}",
                f"# transport = {transport}",
            ]
    return "\n".join(lines) + "\n"


def _without_sunspec(found: Found) -> Found:
    if found.driver != "sunspec":
        return found
    models = ", ".join(str(m) for m in found.models)
    note = f"is SunSpec (models {models}), which the gateway reads over TCP only"
    return replace(found, driver="modbus", profile=None, note=note)


def _format(value: Value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.1f}"


def reading_table(values: Mapping[str, Value], metrics: Mapping[str, MetricSpec]) -> str:
    """One poll as an aligned table: metric, value (right-aligned, "—" for no value), unit."""
    rows = [("metric", "value", "unit")]
    rows += [(key, _format(values.get(key)), spec.unit) for key, spec in metrics.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{m:<{widths[0]}}  {v:>{widths[1]}}  {u}".rstrip() for m, v, u in rows]
    lines.insert(1, f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * max(4, widths[2])}")
    return "\n".join(lines) + "\n"


async def read_once(driver: Driver) -> Mapping[str, Value]:
    """Open ``driver``, poll it once and close it (closing even when the poll fails)."""
    try:
        await driver.open()
        return await driver.poll()
    finally:
        await driver.close()


def _progress(where: str) -> Callable[[int, int, int, Found | None], None]:
    """A `scan_units` progress callback printing one line per unit on stderr."""

    def progress(done: int, total: int, unit_id: int, found: Found | None) -> None:
        what = "no answer" if found is None else _describe(found)
        print(f"scan {where}: unit {unit_id:>3} ({done}/{total}): {what}", file=sys.stderr)

    return progress


async def scan_tcp(
    host: str, port: int, units: Sequence[int], *, request_timeout: float = 0.5
) -> int:
    """``gateway scan --host``: probe ``units``, progress on stderr, TOML on stdout; exit code
    0 if anything was found, 1 otherwise."""
    where = f"{host}:{port}"
    async with ModbusTcpRegisters(host=host, port=port, timeout=request_timeout) as reader:
        found = await scan_units(reader, units, progress=_progress(where))
    if not found:
        print(f"scan {where}: nothing answered on units {units[0]}-{units[-1]}", file=sys.stderr)
        return 1
    transport = f'{{ kind = "tcp", host = "{host}", port = {port} }}'
    sys.stdout.write(config_snippet(found, transport=transport, where=where))
    return 0


async def scan_serial(
    port: str,
    bauds: Sequence[int],
    units: Sequence[int],
    *,
    parity: str = "N",
    probe_timeout: float = SERIAL_PROBE_TIMEOUT,
) -> int:
    """``gateway scan --serial``: probe ``units`` on the RS-485 line at ``port`` at each of
    ``bauds`` in turn; progress on stderr, TOML on stdout; exit code 0 if anything was found, 1
    otherwise. Raises `DeviceTimeout` if the port cannot be opened.

    Every unit id is probed at every baud rate, and nothing is cut short: silence at some ids
    says nothing about the others (ids are arbitrary; a lone meter at 247 is legal), and a line
    being commissioned often mixes a device still at its factory baud rate with others already
    set, so neither "stop after N silent ids" nor "stop at the first baud rate that answered"
    is safe. The time goes into silent ids instead, one ``probe_timeout`` each (plus the
    request's wire time), so a short timeout is what makes the scan fast: 10 ids at 8 baud rates
    on a silent line take about 14 s, ids 1-247 at one baud rate about 40 s. A unit that did
    answer gets its reads' wire time on top (`LineRegisters`), so long probes are never cut off.
    """
    found_by_baud: dict[int, list[Found]] = {}
    for baud in bauds:
        line = ModbusLine(settings=SerialSettings(port=port, baudrate=baud, parity=parity))
        await line.open()
        try:
            reader = LineRegisters(line=line, response_timeout=probe_timeout)
            found = await scan_units(reader, units, progress=_progress(f"{port} @ {baud}"))
        finally:
            await line.close()
        if found:
            found_by_baud[baud] = found
    if not found_by_baud:
        rates = ",".join(str(b) for b in bauds)
        print(
            f"scan {port}: nothing answered on units {units[0]}-{units[-1]} at {rates} baud"
            f" (parity {parity})",
            file=sys.stderr,
        )
        return 1
    if len(found_by_baud) > 1:
        rates = ", ".join(str(b) for b in found_by_baud)
        print(
            f"scan {port}: devices answer at several baud rates ({rates}); one line runs at one"
            " rate: set them all to one before using the snippet",
            file=sys.stderr,
        )
    sys.stdout.write(serial_snippet(port, parity, found_by_baud))
    return 0


def serial_snippet(port: str, parity: str, found_by_baud: Mapping[int, Sequence[Found]]) -> str:
    """TOML for devices found on one serial line, per baud rate.

    A configuration runs a port at one baud rate, so only the rate with the most identified
    devices (the first scanned on a tie) is live; the others are printed commented out, for after the
    installer has moved those devices to that rate. The ``sunspec`` driver speaks Modbus TCP
    only, so a SunSpec device on the line is listed as one to declare by points.
    """
    usable = {
        baud: [_without_sunspec(item) for item in found] for baud, found in found_by_baud.items()
    }
    live = max(usable, key=lambda baud: sum(item.profile is not None for item in usable[baud]))
    parts: list[str] = []
    for baud, found in usable.items():
        transport = f'{{ kind = "rtu", port = "{port}", baudrate = {baud}, parity = "{parity}" }}'
        text = config_snippet(found, transport=transport, where=f"{port} at {baud} baud")
        if baud != live:
            note = f"# At {baud} baud, not {live}: move these devices to {live} baud first."
            text = "\n".join([note, *(f"# {line}".rstrip() for line in text.splitlines())]) + "\n"
        parts.append(text)
    return "\n".join(parts)


def _describe(found: Found) -> str:
    if found.driver == "sunspec":
        return f"SunSpec models {list(found.models)}" + (f" {found.note}" if found.note else "")
    return found.profile or "unknown device"


def find_device(config: GatewayConfig, device_id: str, *, source: str) -> DeviceConfig:
    """The device ``device_id`` of ``config``; `ConfigError` listing the ids if there is none."""
    for device in config.devices:
        if device.id == device_id:
            return device
    known = ", ".join(d.id for d in config.devices) or "(none)"
    raise ConfigError(f"{source}: no device {device_id!r}; devices: {known}")


class ProgressLine:
    """Shows what a read waits for on ``stream`` (stderr: stdout stays the table or the JSON).

    On a terminal, one line rewritten in place at every update (a countdown); otherwise (a log,
    a pipe) a line when the reason changes and then at most one every ``every`` seconds.
    """

    def __init__(
        self,
        device_id: str,
        stream: TextIO,
        *,
        tty: bool | None = None,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._device = device_id
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._every = every
        self._clock = clock
        self._shown = ""  # the last reason shown
        self._at = -math.inf
        self._width = 0

    def __call__(self, what: str, left: float | None) -> None:
        """`gateway.measure.Progress`: waiting for ``what``, ``left`` seconds to go if known."""
        text = f"{self._device}: {what}" + (f", {left:.0f} s left" if left is not None else "")
        now = self._clock()
        if self._tty:
            self._stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        elif what != self._shown or now - self._at >= self._every:
            self._stream.write(text + "\n")
            self._at = now
        self._shown = what
        self._stream.flush()

    def done(self) -> None:
        """End the rewritten line on a terminal."""
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


def measurement_json(device: DeviceConfig, found: Measurement) -> dict[str, object]:
    """``gateway read --json``: device, driver, every metric's value, unit and quality, and
    the duration in milliseconds (waits included)."""
    values = {
        key: {
            "value": found.values.get(key),
            "unit": spec.unit,
            "quality": (Quality.NO_VALUE if found.values.get(key) is None else Quality.GOOD).value,
        }
        for key, spec in found.metrics.items()
    }
    return {
        "device": device.id,
        "driver": device.driver,
        "values": values,
        "duration_ms": round(found.seconds * 1000),
    }


async def read_device(
    device: DeviceConfig,
    *,
    buses: BusRegistry | None = None,
    as_json: bool = False,
    bound: float = DEFAULT_BOUND,
) -> int:
    """``gateway read``: one measurement of ``device`` (waiting for a sensor's next one and
    through a PMSA003I's warm-up, at most ``bound`` seconds; `gateway.measure`) printed as a
    table, or with ``as_json`` as one JSON object; exit code 0, or 1 with the device error on
    stderr (and as ``{"device", "driver", "error": {kind, fault, message}, "duration_ms"}``
    with ``as_json``)."""
    driver = build_driver(device, buses if buses is not None else BusRegistry())
    progress = ProgressLine(device.id, sys.stderr)
    warmup = device.warmup_s if isinstance(device, Pmsa003iDevice) else 0.0
    started = time.monotonic()
    try:
        found = await measure(driver, bound=bound, warmup_s=warmup, progress=progress)
    except DeviceError as exc:
        progress.done()
        if as_json:
            error = {"kind": exc.kind, "fault": exc.fault, "message": str(exc)}
            elapsed = round((time.monotonic() - started) * 1000)
            body = {"device": device.id, "driver": device.driver, "error": error}
            print(json.dumps({**body, "duration_ms": elapsed}, ensure_ascii=False))
        print(f"error: {device.id}: {exc.kind}: {exc}", file=sys.stderr)
        return 1
    progress.done()
    if as_json:
        print(json.dumps(measurement_json(device, found), ensure_ascii=False))
        return 0
    print(f"{device.id} ({device.driver})")
    sys.stdout.write(reading_table(found.values, found.metrics))
    print(f"{device.id}: {found.count} values in {found.seconds * 1000:.0f} ms", file=sys.stderr)
    return 0
