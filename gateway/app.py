"""Assembles the daemon: drivers, one poller per bus, the durable buffer and the MQTT publisher.

Everything runs in one asyncio loop under one `asyncio.TaskGroup` of named tasks. Each task is
supervised: a task that fails is logged and restarted after a pause, so one fault cannot stop the
other buses or the publisher. A failure is logged once per episode of repeated crashes: an
expected one (a `GatewayError`) as one line with the reason, an unexpected exception (a bug) with
its traceback; the repeats only at DEBUG. A restart builds the publisher afresh
(`_publisher_runs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import counters, health
from gateway.buffer import Buffer, BufferLimits, BufferWorker, SqliteBuffer
from gateway.buffer.base import Gap
from gateway.buffer.sqlite import current_boot_id
from gateway.buffer.writebehind import WriteBehind
from gateway.clock import (
    TIMESYNCD_FLAG,
    ClockMonitor,
    SyncGeneration,
    always_synced,
    file_generation,
)
from gateway.config import BufferConfig, ClockConfig, GatewayConfig
from gateway.describe import Described, describe
from gateway.errors import GatewayError, StorageError
from gateway.health import Verdict
from gateway.local.latest import LatestValues
from gateway.local.server import LocalStatusServer
from gateway.model import Reading, utc_ms
from gateway.notify import Notifier
from gateway.registry import BusRegistry, build_driver
from gateway.reload import Device, Reloads, by_bus, plan
from gateway.scheduler import BusPoller, DeviceState, SequenceCounter
from gateway.sinks.mqtt import MqttPublisher
from gateway.status.alarms import AlarmState
from gateway.timekeeper import TimeKeeper

if TYPE_CHECKING:
    from gateway.status.service import StatusService
    from simulators.site import SimulatedSite

log = logging.getLogger(__name__)

#: Pause before restarting a task that crashed.
RESTART_PAUSE = 5.0
#: A task that ran this long before it failed again starts a new episode (logged in full).
STABLE_RUN = 60.0
#: On a clean stop, how long the publisher may keep draining the buffer after polling stopped.
DRAIN_TIMEOUT = 5.0
#: Seconds between status publications (also published at once when the buffer drops readings).
STATUS_INTERVAL = 60.0
#: Seconds between health checks (and systemd STATUS= updates) when systemd asks for no watchdog.
NOTIFY_INTERVAL = 30.0


@dataclass
class GatewayRuntime:
    """What a running gateway exposes to its caller (the CLI, the demo, tests)."""

    config: GatewayConfig
    buffer: WriteBehind
    publisher: MqttPublisher
    pollers: list[BusPoller]
    keeper: TimeKeeper
    #: The shared transports (RS-485 lines, Modbus TCP endpoints, I2C buses) by key.
    buses: BusRegistry
    sequence: SequenceCounter
    #: Gaps declared at start-up after an unclean stop (reported in status, announced on events).
    declared: list[Gap]
    #: Where a damaged buffer file was moved at start-up, if one was found (reported in status).
    recovered_from: Path | None = None
    #: Readings buffered at the last status report (for summaries that must not wait on the disk).
    last_pending: int = 0
    #: READY=1 was sent: every bus task opened its devices and started its grid.
    ready: bool = False
    #: The last value of every metric, and the classroom status if any (local status).
    latest: LatestValues = field(default_factory=LatestValues)
    display: StatusService | None = None
    #: Monotonic time `run_gateway` started (uptime).
    started_at: float = field(default_factory=time.monotonic)


async def run_gateway(
    config: GatewayConfig,
    *,
    stop: asyncio.Event,
    simulate: bool = False,
    started: Callable[[GatewayRuntime], None] | None = None,
    monitor: ClockMonitor | None = None,
    notifier: Notifier | None = None,
    reloads: Reloads | None = None,
) -> None:
    """Run until ``stop`` is set. With ``simulate``, serve every device from an in-process simulator.

    ``monitor`` replaces the clock monitor built from ``[clock]`` (tests drive time with it).
    ``notifier`` tells systemd about readiness and health (`gateway.notify`; default: nothing).
    ``reloads`` carries SIGHUP's reload requests (`gateway.reload`): a reload that changes more
    than devices runs the daemon again, in this process, with the new configuration.
    """
    notifier = notifier or Notifier(None)
    started_at = time.monotonic()  # uptime counts across in-process restarts
    current: GatewayConfig | None = config
    first = True
    while current is not None and (first or not stop.is_set()):  # no new run after a stop
        first = False
        current = await _run_once(
            current,
            stop=stop,
            simulate=simulate,
            started=started,
            monitor=monitor,
            notifier=notifier,
            reloads=reloads,
            started_at=started_at,
        )


async def _run_once(
    config: GatewayConfig,
    *,
    stop: asyncio.Event,
    simulate: bool,
    started: Callable[[GatewayRuntime], None] | None,
    monitor: ClockMonitor | None,
    notifier: Notifier,
    reloads: Reloads | None,
    started_at: float,
) -> GatewayConfig | None:
    """One run of the daemon; returns the configuration to run next after a reload that needs
    a restart, or None once stopped."""
    async with AsyncExitStack() as stack:
        buses = BusRegistry()
        redirect: Callable[[GatewayConfig], GatewayConfig] = lambda loaded: loaded  # noqa: E731
        if simulate:
            from gateway import simulate as simulation  # noqa: PLC0415 - simulators load on demand

            config, buses, site = await stack.enter_async_context(simulation.simulated(config))
            redirect = functools.partial(_redirected, site=site)
        # Off the loop: opening runs PRAGMA quick_check over the whole file (seconds on a slow
        # card with a large backlog), and may move a damaged file aside.
        # Opening may take a while (quick_check); after an in-process restart the watchdog is
        # armed and its task not yet running: the loop is alive, say so around the open.
        notifier.send(WATCHDOG="1")
        storage = await asyncio.to_thread(_open_buffer, config.buffer)
        notifier.send(WATCHDOG="1")
        buffer, sequence = await open_delivery(
            storage, commit_interval=config.buffer.commit_interval, stack=stack
        )
        publisher = MqttPublisher(
            config=config.mqtt,
            site=config.site.id,
            buffer=buffer,
            describe=lambda: _describe(runtime),
        )
        monitor = monitor or ClockMonitor(
            sync_generation=sync_source(config.clock), step_tolerance=config.clock.step_tolerance
        )
        keeper = TimeKeeper(monitor=monitor, buffer=buffer, hold_seconds=config.clock.hold_unsynced)
        display = _status_service(config, simulate=simulate, stack=stack)
        runtime = GatewayRuntime(
            config=config,
            buffer=buffer,
            publisher=publisher,
            pollers=[],
            keeper=keeper,
            buses=buses,
            sequence=sequence,
            declared=await buffer.declared_gaps(),
            recovered_from=storage.recovered_from,
            display=display,
            started_at=started_at,
        )
        sink = _sink(buffer, keeper, display, runtime.latest)
        make_poller = functools.partial(
            _poller, buses=buses, sequence=sequence, sink=sink, stamp=monitor.stamp
        )
        runtime.pollers = [make_poller(key, devices) for key, devices in by_bus(config).items()]
        if started is not None:
            started(runtime)
        side_tasks: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("status", lambda: _report_status(runtime)),
            ("clock", keeper.run),
            ("watchdog", lambda: _watchdog(runtime, notifier)),
            ("local", LocalStatusServer(runtime=runtime).run),
        ]
        if display is not None:
            side_tasks.append(("display", display.run))
        async with asyncio.TaskGroup() as group:
            mqtt_task = group.create_task(_supervise("mqtt", _publisher_runs(runtime)), name="mqtt")
            others = [group.create_task(_supervise(n, fn), name=n) for n, fn in side_tasks]
            polling = _BusTasks(group)
            for poller in runtime.pollers:
                polling.start(poller)
            step = _Reloading(runtime, redirect, make_poller, polling, notifier)
            following = await step.serve(stop, reloads)
            if following is None:
                notifier.stopping()
                log.info(
                    "stopping: polling ends; up to %.0f s to publish the buffer", DRAIN_TIMEOUT
                )
            else:
                log.info("restarting with the new configuration: polling ends for a moment")
            drained = await _wind_down(runtime, others, polling)
            mqtt_task.cancel()
        await buffer.finish(sequence.last)  # a clean stop: the next start declares no gap
        last_seq, left = sequence.last, await buffer.pending()
        if drained:
            log.info("stopped: last sequence number %d; buffer empty", last_seq)
        else:
            log.info("stopped: last sequence number %d; %d readings stay buffered", last_seq, left)
    return following


async def _wind_down(
    runtime: GatewayRuntime, others: Sequence[asyncio.Task[None]], polling: _BusTasks
) -> bool:
    """Stop polling and the side tasks, write what is in memory, and give the publisher up to
    `DRAIN_TIMEOUT` to empty the buffer; returns whether it did."""
    for task in others:
        task.cancel()
    await polling.stop_all()
    await runtime.buffer.flush()  # the last commit window, so that it is drained too
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            await runtime.publisher.wait_drained()  # the current one (_publisher_runs)
        drained = True
    except TimeoutError:
        drained = False
    # The offline status of a clean stop carries the final counters.
    pending, dropped = await runtime.buffer.pending(), await runtime.buffer.dropped()
    runtime.publisher.final_details = status_details(runtime, pending, dropped)
    return drained


def _redirected(loaded: GatewayConfig, *, site: SimulatedSite) -> GatewayConfig:
    from gateway.simulate import redirect  # noqa: PLC0415 - simulators load on demand

    return redirect(loaded, site)


class _BusTasks:
    """The running bus tasks by poller name: started and stopped one by one on a reload."""

    def __init__(self, group: asyncio.TaskGroup) -> None:
        self._group = group
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, poller: BusPoller) -> None:
        self._tasks[poller.name] = self._group.create_task(
            _supervise(poller.name, poller.run), name=poller.name
        )

    async def stop(self, name: str) -> None:
        """Cancel one bus task and wait until its drivers are closed."""
        task = self._tasks.pop(name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def stop_all(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Reloading:
    """Waits for the stop or a reload request, and applies reloads (`gateway.reload`)."""

    def __init__(
        self,
        runtime: GatewayRuntime,
        redirect: Callable[[GatewayConfig], GatewayConfig],
        make_poller: Callable[[str, list[Device]], BusPoller],
        polling: _BusTasks,
        notifier: Notifier,
    ) -> None:
        self._runtime = runtime
        self._redirect = redirect
        self._make_poller = make_poller
        self._polling = polling
        self._notifier = notifier

    async def serve(self, stop: asyncio.Event, reloads: Reloads | None) -> GatewayConfig | None:
        """Until ``stop`` (returns None) or a reload that needs a restart (returns its config)."""
        while True:
            if reloads is None:
                await stop.wait()
                return None
            await _first_of(stop.wait(), reloads.requested.wait())
            if stop.is_set():
                return None
            reloads.requested.clear()
            following = await self._reload(reloads)
            if following is not None:
                return following

    async def _reload(self, reloads: Reloads) -> GatewayConfig | None:
        self._notifier.reloading()
        try:
            loaded = await asyncio.to_thread(reloads.load)
            redirected = self._redirect(loaded)
        except GatewayError as exc:
            self._refused(_one_line(exc))
            return None
        from gateway.status.engine import inputs as status_inputs  # noqa: PLC0415 - rooms only

        change = plan(self._runtime.config, redirected, watched=status_inputs)
        if change.restart:
            if self._runtime.buffer.worker.failing:
                # A restart ends with a clean finish, which a card refusing writes would fail,
                # and what waits in memory would go with it (design.md, "SIGHUP").
                self._refused("the buffer cannot write to its card now; try again later")
                return None
            log.info("reload: %s changed; restarting in-process", ", ".join(change.sections))
            self._notifier.send(WATCHDOG="1")  # the watchdog task stops for the restart
            return loaded
        if change.unchanged:
            log.info("reload: the configuration did not change")
        else:
            try:
                await self._restart_buses(change.buses, redirected)
            except _BuildFailed as exc:
                self._refused(str(exc))
                return None
            log.info("reload: applied; restarted %s", ", ".join(map(_bus_name, change.buses)))
        self._runtime.config = redirected
        self._runtime.publisher.refresh_devices()
        self._answer("configuration reloaded")
        return None

    def _refused(self, reason: str) -> None:
        log.error("reload refused, the running configuration stays: %s", reason)
        self._answer("reload refused; running the previous configuration")

    def _answer(self, status: str) -> None:
        """End a reload for systemd: READY=1 again, unless start-up has not finished yet (the
        watchdog sends the first READY=1, once every bus runs its grid)."""
        if self._runtime.ready:
            self._notifier.ready(status)
        else:
            self._notifier.status(status)

    async def _restart_buses(self, keys: Sequence[str], config: GatewayConfig) -> None:
        """Replace the bus tasks of ``keys`` by those ``config`` has, counters carried over by id.

        The new drivers are built first, on fresh shared transports (a Modbus line or endpoint
        may have new settings), while the old tasks still poll; if one cannot be built, the
        old transports are put back and `_BuildFailed` says why: nothing changed. Then the old
        tasks are stopped (closing their drivers and their old transports) and the new ones
        started.
        """
        runtime = self._runtime
        saved = {k: runtime.buses.buses.pop(k) for k in keys if k in runtime.buses.buses}
        for key in list(saved):
            if key.startswith("i2c:"):  # an I2C bus has no settings: it is kept
                runtime.buses.buses[key] = saved.pop(key)
        groups = by_bus(config)
        try:
            fresh = [self._make_poller(key, groups[key]) for key in keys if key in groups]
        except Exception as exc:  # a driver that cannot be built: refuse the reload whole
            for key in keys:
                if not key.startswith("i2c:"):
                    runtime.buses.buses.pop(key, None)
            runtime.buses.buses.update(saved)
            raise _BuildFailed(f"a device cannot be built: {type(exc).__name__}: {exc}") from exc
        previous: dict[str, DeviceState] = {}
        for key in keys:
            old = next((p for p in runtime.pollers if p.name == _bus_name(key)), None)
            if old is None:
                continue
            await self._polling.stop(old.name)
            runtime.pollers.remove(old)
            previous.update((state.id, state) for state in old.devices)
        for poller in fresh:
            for state in poller.devices:
                if state.id in previous:
                    _carry_counters(previous[state.id], state)
            runtime.pollers.append(poller)
            self._polling.start(poller)


class _BuildFailed(Exception):
    """A reload's new drivers could not be built (the message says why)."""


def _describe(runtime: GatewayRuntime) -> dict[str, Described]:
    """The current device descriptions (for the publisher's retained device topics)."""
    drivers = [(state.id, state.driver) for poller in runtime.pollers for state in poller.devices]
    return describe(runtime.config, drivers)


def _carry_counters(old: DeviceState, new: DeviceState) -> None:
    """The status counters are totals since the daemon started: a reload does not reset them."""
    new.polls, new.errors, new.no_values = old.polls, old.errors, old.no_values


async def _first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``waits`` completes; cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _one_line(exc: BaseException) -> str:
    return " | ".join(str(exc).splitlines())


def sync_source(config: ClockConfig) -> SyncGeneration:
    """The clock's sync source for ``[clock] sync`` (see `gateway.config.ClockConfig`)."""
    if config.sync == "none":
        return always_synced
    if config.sync == "file" and config.sync_file is not None:
        return file_generation(config.sync_file)
    if config.sync == "timesyncd" or TIMESYNCD_FLAG.parent.is_dir():
        return file_generation(TIMESYNCD_FLAG)
    log.info("systemd-timesyncd does not run here; trusting the system clock ([clock] sync)")
    return always_synced


def _status_service(
    config: GatewayConfig, *, simulate: bool, stack: AsyncExitStack
) -> StatusService | None:
    """The classroom LEDs and panels, when ``[status]`` configures rooms."""
    if not config.status.rooms:
        return None
    pin_factory = None
    if simulate:
        from gpiozero.pins.mock import MockFactory  # noqa: PLC0415 - no GPIO pins off a Pi

        pin_factory = MockFactory()
    # Imported only with rooms to show: the status service brings Pillow and gpiozero.
    from gateway.status.service import StatusService  # noqa: PLC0415

    # Next to the buffer: the one directory the package makes writable and keeps on upgrade.
    state_path = config.buffer.path.with_name("alarms.json")
    service = StatusService(config=config, pin_factory=pin_factory, state_path=state_path)
    stack.callback(service.close)
    return service


def device_guard(timeout: float) -> float:
    """The scheduler's bound on one driver call of a device with request ``timeout``: room for
    the driver's own retries, far beyond any legitimate call."""
    return 4 * timeout + 10.0


def _bus_name(key: str) -> str:
    return f"bus {key}"


def _poller(
    key: str,
    devices: Sequence[Device],
    *,
    buses: BusRegistry,
    sequence: SequenceCounter,
    sink: Callable[[Sequence[Reading]], Awaitable[None]],
    stamp: Callable[[], tuple[datetime, bool]],
) -> BusPoller:
    """The bus task of bus ``key``, polling ``devices`` in turn."""
    states = [
        DeviceState(
            id=device.id,
            driver=build_driver(device, buses),
            interval=device.interval,
            guard=device_guard(device.timeout),
        )
        for device in devices
    ]
    return BusPoller(name=_bus_name(key), devices=states, sink=sink, sequence=sequence, stamp=stamp)


async def open_delivery(
    storage: Buffer, *, commit_interval: float, stack: AsyncExitStack
) -> tuple[WriteBehind, SequenceCounter]:
    """The write-behind buffer over ``storage`` (closed by ``stack``), and the sequence counter
    that reserves its numbers in it: how the daemon (and the power-cut test's writer) deliver."""
    interval = commit_interval
    buffer = WriteBehind(BufferWorker(storage, commit_interval=interval), commit_interval=interval)
    stack.push_async_callback(buffer.close)
    await buffer.start()
    pending = await buffer.pending()
    if pending:
        log.info("buffer holds %d readings from before; publishing them first", pending)
    sequence = SequenceCounter(
        await buffer.seq_floor(), reserve=lambda upto, last: buffer.reserve(upto, last=last)
    )
    return buffer, sequence


def _open_buffer(config: BufferConfig) -> SqliteBuffer:
    limits = BufferLimits(
        max_readings=config.max_readings,
        max_bytes=config.max_bytes,
        max_age=timedelta(days=config.max_age_days),
    )
    try:
        return SqliteBuffer(
            config.path, synchronous=config.synchronous, limits=limits, boot_id=current_boot_id()
        )
    except (OSError, sqlite3.Error) as exc:
        # Expected (a read-only place, a missing mount, a file owned by another user): one line
        # naming the key, not a traceback (`gateway check` finds these before a start).
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StorageError(f"buffer.path: cannot open {config.path}: {reason}") from exc


def _sink(
    buffer: WriteBehind,
    keeper: TimeKeeper,
    display: StatusService | None,
    latest: LatestValues | None = None,
) -> Callable[[Sequence[Reading]], Awaitable[None]]:
    """Hand a poll's readings to the buffer's next group commit, then show them locally.

    The data path comes first and nothing on the display's side can hurt it: staging never waits
    on the disk (so a storage problem never delays an alarm either), and an exception from the
    status code is a bug that is logged once per episode, with its traceback, and never reaches
    the poller. Untrusted readings are staged with their clock offset while held. ``latest``
    keeps the last value per metric for the local status (dict assignments only).
    """
    failing = False

    async def stage_then_observe(readings: Sequence[Reading]) -> None:
        nonlocal failing
        buffer.stage(readings, clock_offset_ms=keeper.offset_for_stage())
        if latest is not None:
            latest.observe(readings)
        if display is None:
            return
        try:
            display.observe(readings)
        except Exception:
            if not failing:
                log.exception("status display failed on a poll (a bug); readings are kept")
            else:
                log.debug("status display failed again", exc_info=True)
            failing = True
            return
        if failing:
            log.info("status display takes readings again")
            failing = False

    return stage_then_observe


def status_details(runtime: GatewayRuntime, pending: int, dropped: int) -> dict[str, Any]:
    """The counters published with the status (documented in docs/mqtt.md)."""
    return counters.status_details(
        devices=[state for poller in runtime.pollers for state in poller.devices],
        buses=runtime.buses.buses.values(),
        pending=pending,
        dropped=dropped,
        unstored=runtime.buffer.unstored,
        recovered_from=runtime.recovered_from,
        declared=[(gap.from_seq, gap.to_seq) for gap in runtime.declared],
        unreserved=runtime.sequence.unreserved,
    )


async def _report_status(runtime: GatewayRuntime) -> None:
    """Publish the status with counters every `STATUS_INTERVAL` s, and at once after drops.

    Drops also raise the ``buffer_dropped`` alarm of device ``gateway`` (value: readings dropped
    in this episode); it clears once the buffer has drained.
    """
    wake = asyncio.Event()
    runtime.buffer.on_dropped = lambda count: wake.set()
    baseline = await runtime.buffer.dropped()  # drops from before this episode
    alarm: AlarmState | None = None  # the active alarm, if any
    while True:
        pending, dropped = await runtime.buffer.pending(), await runtime.buffer.dropped()
        runtime.last_pending = pending
        runtime.publisher.publish_status(status_details(runtime, pending, dropped))
        runtime.publisher.refresh_devices()  # a device's identity may be known by now
        episode = dropped - baseline
        if alarm is None and episode:
            alarm = _buffer_alarm(active=True, value=episode)
            runtime.publisher.publish_alarm(alarm, event=True)
        elif alarm is not None and pending == 0:
            runtime.publisher.publish_alarm(_buffer_alarm(active=False, value=episode), event=True)
            alarm, baseline = None, dropped
        elif alarm is not None and episode != alarm.value:
            alarm = replace(alarm, value=episode)
            runtime.publisher.publish_alarm(alarm, event=False)
        wake.clear()
        # asyncio.timeout, never wait_for, in loops that run until cancelled: Python 3.11's
        # wait_for can swallow a cancellation that races with the awaited future completing,
        # and the task then runs on (a bridge that never stopped: seen once under load).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STATUS_INTERVAL):
                await wake.wait()


async def _watchdog(runtime: GatewayRuntime, notifier: Notifier) -> None:
    """Tell systemd how the daemon is (`gateway.notify`, `gateway.health`).

    ``READY=1`` once every bus task has opened its devices and started its grid (the buffer is
    open before any task runs). ``WATCHDOG=1`` every half ``WatchdogSec=`` while the verdict is
    ok; while it is not, the pings stop (systemd then restarts the daemon), and the hang is
    logged once per episode. Until ready, each ping also extends the start timeout, so a slow
    but progressing start (many dead devices on one line) is not killed while a hung one is.
    """
    interval = notifier.watchdog_seconds / 2 if notifier.watchdog_seconds else NOTIFY_INTERVAL
    ready = False
    hung: Verdict | None = None
    while True:
        if not ready and all(poller.started.is_set() for poller in runtime.pollers):
            ready = runtime.ready = True
            notifier.ready(health.summary(runtime, Verdict(ok=True), runtime.last_pending))
        verdict = health.verdict(runtime, time.monotonic())
        line = health.summary(runtime, verdict, runtime.last_pending)
        if verdict.ok:
            notifier.ping(line)
            if not ready:
                notifier.send(EXTEND_TIMEOUT_USEC=str(int(3 * interval * 1e6)))
            if hung is not None:
                log.info("watchdog: the daemon makes progress again")
            hung = None
        else:
            notifier.status(line)
            if hung is None:
                log.error(
                    "watchdog: %s; no more pings to systemd, which restarts the daemon",
                    "; ".join(verdict.problems),
                )
            hung = verdict
        if ready:
            await asyncio.sleep(interval)
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await asyncio.gather(*(poller.started.wait() for poller in runtime.pollers))


def _buffer_alarm(*, active: bool, value: float | None) -> AlarmState:
    return AlarmState(
        device="gateway",
        name="buffer_dropped",
        active=active,
        value=value,
        unit="readings",
        threshold=0,
        since=utc_ms(datetime.now(UTC)),
    )


def _publisher_runs(runtime: GatewayRuntime) -> Callable[[], Awaitable[None]]:
    """Publishing for `_supervise`: each call runs a publisher that has never run.

    After ``run`` ended, a publisher is half-stopped (its client stopped, its in-flight
    bookkeeping stale); so a restart hands its batches in flight back to the buffer and runs its
    successor, which becomes ``runtime.publisher`` for the status reporting and the drain on stop.
    """
    ran = False

    async def run() -> None:
        nonlocal ran
        if ran:
            old = runtime.publisher
            await old.release_inflight()
            runtime.publisher = old.successor()
        ran = True
        await runtime.publisher.run()

    return run


async def _supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run ``run()`` until it returns; restart it after `RESTART_PAUSE` when it fails.

    ``run`` must start afresh on each call. Logging is one line per episode: crashes with the
    same error, each less than `STABLE_RUN` after the restart, are one episode. Its first
    failure is logged at ERROR, a `GatewayError` (expected: the message says what to fix) as
    one line, any other exception (a bug) with its traceback; the repeats are at DEBUG only
    (with the count, and a bug's traceback), because a task failing every `RESTART_PAUSE` for
    a day would otherwise write thousands of identical lines to the journal. A different error,
    or a failure after a stable run, starts a new episode.
    """
    loop = asyncio.get_running_loop()
    episode: tuple[type[BaseException], str] | None = None
    repeats = 0
    while True:
        started = loop.time()
        try:
            await run()
            return
        except Exception as exc:  # the supervisor is where everything is caught (house style)
            error = exc
        same = episode == (type(error), str(error)) and loop.time() - started < STABLE_RUN
        repeats = repeats + 1 if same else 0
        episode = (type(error), str(error))
        expected = isinstance(error, GatewayError)
        if repeats:
            log.debug(
                "task %s failed again (%d times in a row): %s; restarting it in %.0f s",
                name,
                repeats + 1,
                error,
                RESTART_PAUSE,
                exc_info=None if expected else error,
            )
        elif expected:
            log.error("task %s failed: %s; restarting it in %.0f s", name, error, RESTART_PAUSE)
        else:
            log.error(
                "task %s crashed (a bug); restarting it in %.0f s",
                name,
                RESTART_PAUSE,
                exc_info=error,
            )
        await asyncio.sleep(RESTART_PAUSE)
