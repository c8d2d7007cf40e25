"""A snapshot of the running daemon: what `gateway status`, ``/healthz`` and ``/metrics`` show.

One typed document (pydantic models, serialised as JSON on the socket and parsed back by the
CLI, so a daemon and a CLI of different versions fail with a message, not a KeyError). Its
fields are documented in docs/operations.md.

Times: every age (``*_s``, ``*_age_s``) is measured on the monotonic clock, so it is right even
while the wall clock is not (a Pi boots with a stale time until NTP answers); wall-clock times
(``time``, a reading's ``ts``) are shown as they are, with the clock's trust beside them.

The storage is asked for three figures (pending, dropped, the oldest pending reading) with a
deadline of `STORAGE_TIMEOUT`: a hung card must not hang the status that is meant to show it;
then those figures are null and ``storage_answering`` is false. Everything else is read from
memory.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from gateway import __version__, counters
from gateway.config import DeviceConfig
from gateway.health import verdict
from gateway.model import Reading, Value, iso_ms, to_epoch_ms, utc_ms
from gateway.scheduler import DeviceState, Failure
from gateway.status.alarms import AlarmState

if TYPE_CHECKING:
    from gateway.app import GatewayRuntime

#: Version of the snapshot document; a CLI refuses a document of another version.
SNAPSHOT_VERSION = 1
#: The longest the snapshot waits for the storage's figures.
STORAGE_TIMEOUT = 2.0


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ValueView(_View):
    """The last reading of one metric; ``value`` is null when the device had none (``quality``
    ``no_value``: a warm-up, a "not available" sentinel)."""

    metric: str
    value: Value
    unit: str
    quality: str
    ts: str
    time_synced: bool


class ErrorView(_View):
    """A device's last failure (kept after it recovered): coarse ``kind``, detailed ``fault``."""

    kind: str
    fault: str
    message: str
    age_s: float


class DeviceView(_View):
    """One polled device: its schedule, its last poll and values, its failures and counters."""

    id: str
    driver: str
    bus: str
    interval_s: float
    available: bool
    polls: int
    consecutive_failures: int
    last_poll_age_s: float | None
    last_error: ErrorView | None
    errors: dict[str, int]
    faults: dict[str, int]
    no_value: dict[str, int]
    values: list[ValueView]


class BusView(_View):
    """One bus task: seconds since its last progress, and the seconds left until its deadline
    (`gateway.scheduler.BusPoller.deadline`; negative: past it, the task is hung)."""

    name: str
    progress_age_s: float
    deadline_in_s: float
    stalled: bool


class BrokerView(_View):
    """The MQTT link: up or down, since when (``since_s`` ago), the last PUBACK."""

    host: str
    port: int
    connected: bool
    since_s: float
    last_puback_age_s: float | None
    connect_failures: int
    messages_sent: int
    messages_acked: int
    readings_acked: int


class ClockView(_View):
    """Whether readings get trusted timestamps; while not, whether they are held for
    re-stamping (up to ``hold_s``) or go out flagged ``time_synced=false``."""

    synced: bool
    untrusted_for_s: float | None
    holding: bool
    hold_s: float
    steps: int
    restamped: int
    released_unsynced: int


class OldestView(_View):
    """The oldest reading not yet acknowledged by the broker."""

    seq: int
    ts: str
    age_s: float


class GapView(_View):
    """Sequence numbers declared lost at start-up (an unclean stop before)."""

    from_seq: int
    to_seq: int
    reason: str


class BufferView(_View):
    """The durable buffer: ``pending`` (not acknowledged: stored or in memory), ``unwritten``
    (only in memory), ``dropped`` by the limits (ever), ``unstored`` (lost to storage failures)."""

    path: str
    pending: int | None
    unwritten: int
    dropped: int | None
    unstored: int
    unreserved: int
    storage_failing: bool
    storage_answering: bool
    oldest_pending: OldestView | None
    declared_gaps: list[GapView]
    recovered_from: str | None


class AlarmView(_View):
    """An active alarm (a room's CO2 or fine dust, a silent sensor, the buffer dropping)."""

    device: str
    name: str
    value: float | None
    unit: str
    threshold: float
    since: str


class HealthView(_View):
    """`gateway.health.verdict`: ``ok``, or the problems, one sentence each."""

    ok: bool
    problems: list[str]


class Snapshot(_View):
    """The whole document (docs/operations.md)."""

    v: int = SNAPSHOT_VERSION
    site: str
    site_name: str
    version: str
    time: str
    uptime_s: float
    health: HealthView
    broker: BrokerView
    clock: ClockView
    buffer: BufferView
    alarms: list[AlarmView]
    buses: list[BusView]
    devices: list[DeviceView]
    lines: dict[str, dict[str, int]]


async def take_snapshot(runtime: GatewayRuntime, *, now: float | None = None) -> Snapshot:
    """Describe ``runtime`` at monotonic time ``now`` (default: now); see the module docstring."""
    now = time.monotonic() if now is None else now
    wall = utc_ms(datetime.now(UTC))
    health = verdict(runtime, now)
    buffer = await _buffer_view(runtime, now_ms=to_epoch_ms(wall))
    states = {state.id: state for poller in runtime.pollers for state in poller.devices}
    devices = [  # in the order of the configuration file
        _device_view(states[device.id], device, runtime.latest.of(device.id), now=now)
        for device in runtime.config.enabled_devices()
        if device.id in states
    ]
    buses = [
        BusView(
            name=poller.name,
            progress_age_s=_age(now, poller.progress),
            deadline_in_s=round(poller.deadline - now, 3),
            stalled=now > poller.deadline,
        )
        for poller in runtime.pollers
    ]
    return Snapshot(
        site=runtime.config.site.id,
        site_name=runtime.config.site.name,
        version=__version__,
        time=iso_ms(wall),
        uptime_s=_age(now, runtime.started_at),
        health=HealthView(ok=health.ok, problems=list(health.problems)),
        broker=_broker_view(runtime, now),
        clock=_clock_view(runtime, now),
        buffer=buffer,
        alarms=[_alarm_view(a) for a in _active_alarms(runtime)],
        buses=buses,
        devices=devices,
        lines=counters.line_counters(runtime.buses.buses.values()),
    )


def _age(now: float, then: float) -> float:
    return round(max(0.0, now - then), 3)


def _device_view(
    state: DeviceState, device: DeviceConfig, latest: list[Reading], *, now: float
) -> DeviceView:
    counted = counters.device_counters(state)
    return DeviceView(
        id=state.id,
        driver=device.driver,
        bus=device.bus_key(),
        interval_s=state.interval,
        available=state.available,
        polls=state.polls,
        consecutive_failures=state.failures,
        last_poll_age_s=None if state.last_poll_at is None else _age(now, state.last_poll_at),
        last_error=None if state.last_error is None else _error_view(state.last_error, now),
        errors=counted["errors"],
        faults=counted["faults"],
        no_value=counted["no_value"],
        values=[_value_view(r) for r in latest],
    )


def _error_view(failure: Failure, now: float) -> ErrorView:
    return ErrorView(
        kind=failure.kind,
        fault=failure.fault,
        message=failure.message,
        age_s=_age(now, failure.at),
    )


def _value_view(reading: Reading) -> ValueView:
    return ValueView(
        metric=reading.metric,
        value=reading.value,
        unit=reading.unit,
        quality=reading.quality.value,
        ts=iso_ms(reading.ts),
        time_synced=reading.time_synced,
    )


def _broker_view(runtime: GatewayRuntime, now: float) -> BrokerView:
    publisher, mqtt = runtime.publisher, runtime.config.mqtt
    link = publisher.link
    return BrokerView(
        host=mqtt.host,
        port=mqtt.port,
        connected=publisher.connected.is_set(),
        since_s=_age(now, link.since),
        last_puback_age_s=None if link.last_puback is None else _age(now, link.last_puback),
        connect_failures=publisher.connect_failures,
        messages_sent=publisher.stats.messages_sent,
        messages_acked=publisher.stats.messages_acked,
        readings_acked=publisher.stats.readings_acked,
    )


def _clock_view(runtime: GatewayRuntime, now: float) -> ClockView:
    keeper = runtime.keeper
    since = keeper.untrusted_since
    return ClockView(
        synced=keeper.monitor.trusted,
        untrusted_for_s=None if since is None else _age(now, since),
        holding=keeper.holding,
        hold_s=runtime.config.clock.hold_unsynced,
        steps=keeper.monitor.steps,
        restamped=keeper.restamped,
        released_unsynced=keeper.released,
    )


async def _buffer_view(runtime: GatewayRuntime, *, now_ms: int) -> BufferView:
    buffer = runtime.buffer
    pending = dropped = None
    oldest: OldestView | None = None
    answering = True
    try:
        async with asyncio.timeout(STORAGE_TIMEOUT):
            pending = await buffer.pending()
            dropped = await buffer.dropped()
            first = await buffer.oldest()
    except TimeoutError:
        answering = False
    else:
        if first is not None:
            seq, ts_ms = first
            oldest = OldestView(
                seq=seq,
                ts=iso_ms(datetime.fromtimestamp(ts_ms / 1000, tz=UTC)),
                age_s=round(max(0, now_ms - ts_ms) / 1000, 3),
            )
    return BufferView(
        path=str(runtime.config.buffer.path),
        pending=pending,
        unwritten=buffer.unwritten,
        dropped=dropped,
        unstored=buffer.unstored,
        unreserved=runtime.sequence.unreserved,
        storage_failing=buffer.worker.failing,
        storage_answering=answering,
        oldest_pending=oldest,
        declared_gaps=[
            GapView(from_seq=g.from_seq, to_seq=g.to_seq, reason=g.reason) for g in runtime.declared
        ],
        recovered_from=str(runtime.recovered_from) if runtime.recovered_from else None,
    )


def _active_alarms(runtime: GatewayRuntime) -> list[AlarmState]:
    alarms = runtime.display.active_alarms() if runtime.display is not None else []
    return alarms + [a for a in runtime.publisher.alarm_states() if a.active]


def _alarm_view(state: AlarmState) -> AlarmView:
    return AlarmView(
        device=state.device,
        name=state.name,
        value=state.value,
        unit=state.unit,
        threshold=state.threshold,
        since=iso_ms(state.since),
    )
