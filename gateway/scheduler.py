"""Polls the devices of one physical bus, in turn, each at its own interval.

One `BusPoller` task per bus: an RS-485 line, an I2C bus or a single-client TCP device is a serial
resource, so its devices are never polled concurrently. Different buses run in parallel.

Timing: polls are scheduled on the monotonic clock on a fixed grid (``start + k * interval``), so a
wall-clock step never causes a burst or a gap; a poll that ran late skips the grid slots it missed
rather than catching up in a burst. Readings are stamped with the wall clock (``wall_clock``).

Not ready: a driver raising `DeviceNotReady` (a sensor between measurements) is asked again after
its ``retry_after``, with no error counted; the other devices on the bus run meanwhile.

Failures: a `DeviceError` marks the device unavailable; it is logged once when it starts failing
and once when it recovers, counted per error class, and retried with jittered exponential backoff
(never sooner than its interval), so a dead device costs its bus at most one timeout per retry.

Driver bugs: any other exception from a driver's ``open``, ``poll`` or ``close`` (or a ``poll``
that returns something that is not a mapping) is contained to that device: counted under kind
``internal``, logged with one WARNING line per failure streak and its traceback at DEBUG, and the
device is closed and backed off like any failure. The bus task keeps running, so the neighbours
on the bus are neither reopened nor late (a restart of the task would reopen every device on the
bus and reset, for example, a particle sensor's warm-up).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from drivers.base import Driver
from gateway.errors import DeviceError, DeviceNotReady, DeviceTimeout, StorageError
from gateway.model import Quality, Reading, Value, utc_ms

log = logging.getLogger(__name__)

#: Longest wait between retries of a failing device, in seconds.
MAX_BACKOFF = 300.0
#: On top of its own bounds, how long a bus task may take to come back (see `BusPoller.deadline`):
#: for the sink and the sequence reservation, and for a loop that wakes up late.
PROGRESS_GRACE = 10.0


class DriverBug(DeviceError):
    """A driver raised something other than a `DeviceError`: a bug, not a device fault.

    The scheduler wraps the exception (as ``__cause__``) so that it is counted and backed off like
    a device fault, under its own kind, and never stops the bus.
    """

    kind = "internal"


#: Sequence numbers reserved durably at a time (see `SequenceCounter`).
SEQ_BLOCK = 1000


class SequenceCounter:
    """Hands out the per-gateway sequence numbers, above the buffer's floor.

    With ``reserve`` (`gateway.buffer.writebehind.WriteBehind.reserve`), numbers are reserved
    durably in blocks of ``block`` before they are used, so that after any unclean stop numbering
    continues above every number that may have been handed out: a gap, never a reuse. A new block
    is reserved in the background when half of the current one is used; `ensure` waits only if
    the card has not confirmed it by the time the numbers are needed. If the reservation fails
    (the card refuses writes), numbering goes on beyond it: polling never stops for it, the
    failure is logged once, and ``unreserved`` counts the numbers at risk of reuse after a crash.
    """

    def __init__(
        self,
        last: int,
        *,
        reserve: Callable[[int, int], Awaitable[None]] | None = None,
        block: int = SEQ_BLOCK,
    ) -> None:
        self._last = last
        self._reserve = reserve
        self._reserved = last
        self._block = block
        self._refill: asyncio.Task[None] | None = None
        self._failing = False
        self.unreserved = 0

    @property
    def last(self) -> int:
        """The last number handed out (the floor before the first)."""
        return self._last

    async def ensure(self, count: int) -> None:
        """Make sure the next ``count`` numbers are reserved; refills ahead of need."""
        if self._reserve is None:
            return
        if self._refill is None and self._last + count > self._reserved - self._block // 2:
            upto = max(self._reserved, self._last + count) + self._block
            self._refill = asyncio.get_running_loop().create_task(
                self._extend(upto), name="seq-reserve"
            )
        while self._last + count > self._reserved and self._refill is not None:
            await asyncio.shield(self._refill)

    async def _extend(self, upto: int) -> None:
        assert self._reserve is not None  # only started with a reserve callback
        try:
            await self._reserve(upto, self._last)
        except StorageError as exc:  # a storage failure must not stop polling
            if not self._failing:
                log.error("cannot reserve sequence numbers (%s); numbering goes on", exc)
            self._failing = True
            self.unreserved += upto - self._reserved
        else:
            if self._failing:
                log.info("sequence numbers are reserved durably again")
            self._failing = False
        finally:
            self._reserved = max(self._reserved, upto)
            self._refill = None

    def next(self) -> int:
        """The next unused sequence number."""
        self._last += 1
        return self._last


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """One failed open or poll, as the local status shows it: the coarse class (``kind``, as
    counted in ``errors``), the detailed fault class (`gateway.errors.FAULT_CLASSES`), the
    message, and when (monotonic seconds). Text only: the exception itself (its traceback, its
    frames) is not kept."""

    kind: str
    fault: str
    message: str
    at: float


@dataclass
class DeviceState:
    """What the scheduler knows about one device; read by the status reporting."""

    id: str
    driver: Driver
    interval: float
    #: Upper bound on one open() or poll(), on top of the driver's own timeouts.
    guard: float
    next_due: float = 0.0
    opened: bool = False
    available: bool = True
    failures: int = 0
    polls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    #: Readings per metric that came back without a value (sensor warm-up, "not available"
    #: sentinels): counted, but not failures (the device answered).
    no_values: Counter[str] = field(default_factory=Counter)
    #: A driver bug was logged in the current failure streak (logged once per streak).
    bug_logged: bool = False
    #: Monotonic time of the last successful poll (None before the first); local status.
    last_poll_at: float | None = None
    #: The last failure, kept after a recovery (local status).
    last_error: Failure | None = None


ReadingSink = Callable[[Sequence[Reading]], Awaitable[None]]


class BusPoller:
    """Runs the devices of one bus until cancelled. See the module docstring for the contract."""

    def __init__(
        self,
        *,
        name: str,
        devices: Sequence[DeviceState],
        sink: ReadingSink,
        sequence: SequenceCounter,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        stamp: Callable[[], tuple[datetime, bool]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``stamp`` (e.g. `gateway.clock.ClockMonitor.stamp`) gives each poll its wall-clock time
        and whether that time is trusted; without it, ``wall_clock`` is trusted."""
        self.name = name
        self.devices = list(devices)
        self._sink = sink
        self._sequence = sequence
        self._monotonic = monotonic
        self._stamp = stamp or (lambda: (utc_ms(wall_clock()), True))
        self._rng = rng or random.Random()
        #: Monotonic time the bus last got something done: its task started, or an open or a
        #: poll ended (answered, failed or not ready); shown by the local status. Whether the
        #: task hangs is `deadline`'s to say.
        self.progress = self._monotonic()
        #: Monotonic time by which the task must be back in its loop: set before each step to
        #: the step's own bound (a driver call's guard, or the wake-up time of a sleep) plus
        #: `PROGRESS_GRACE`. A bus task past its deadline is hung (`gateway.health`): a driver
        #: that swallows the cancellation of its timeouts, a sequence reservation that waits on
        #: a hung card, or a blocked event loop.
        self.deadline = self._monotonic() + self._step_bound()
        #: Set once every device was opened (or failed to) and the polling grid started.
        self.started = asyncio.Event()

    def _step_bound(self) -> float:
        """The longest one step may take: open(), poll() and close(), each within its guard,
        and the grace."""
        return 3 * max((d.guard for d in self.devices), default=0.0) + PROGRESS_GRACE

    def _progress(self, until: float | None = None) -> None:
        """A step starts: it must end by ``until`` (a planned wake-up) or its own bound."""
        now = self._monotonic()
        self.deadline = (until + PROGRESS_GRACE) if until is not None else now + self._step_bound()

    async def run(self) -> None:
        """Open every device, then poll forever; on cancellation close every driver.

        Opening first means a slow open (the SCD4x driver stops the chip and waits 0.5 s) never
        makes the first polls of the bus's other devices late; a failed open is retried with
        backoff like any failure.
        """
        try:
            self.progress = self._monotonic()
            failed: set[str] = set()
            for device in self.devices:
                self._progress()
                if not await self._open(device):
                    failed.add(device.id)
                self.progress = self._monotonic()
            start = self._monotonic()
            for device in self.devices:
                if device.id not in failed:
                    device.next_due = start
            self.started.set()
            while True:
                device = min(self.devices, key=lambda d: d.next_due)
                delay = device.next_due - self._monotonic()
                if delay > 0:
                    self._progress(until=device.next_due)
                    await asyncio.sleep(delay)
                    continue
                self._progress()
                await self._service(device)
                self.progress = self._monotonic()
        finally:
            # Close every driver, opened or not: an open() cut short may have left a transport
            # half-open.
            for device in self.devices:
                self._progress()  # each close has its own bound
                await self._close(device)

    async def _service(self, device: DeviceState) -> None:
        due = device.next_due
        if not device.opened and not await self._open(device):
            return
        try:
            async with asyncio.timeout(device.guard):
                values = await device.driver.poll()
            # Driver data: read before any sequence number is handed out, so that a broken
            # answer costs no number (a skipped number would look like a lost reading).
            # In key order: a poll's sequence numbers then follow its metrics' code-point order,
            # which is what lets payload v2 carry only the first (gateway.telemetry).
            answer = [
                (key, spec.unit, values.get(key))
                for key, spec in sorted(device.driver.metrics.items())
            ]
        except DeviceNotReady as exc:
            device.next_due = self._monotonic() + min(exc.retry_after, device.interval)
            return
        except (DeviceError, TimeoutError) as exc:
            error = exc if isinstance(exc, DeviceError) else DeviceTimeout("no answer in time")
            await self._failed(device, error)
            return
        except Exception as exc:  # a driver bug: contained to this device (module docstring)
            await self._failed(device, _bug("poll", exc))
            return
        await self._sequence.ensure(len(device.driver.metrics))
        ts, synced = self._stamp()
        await self._sink(self._readings(device, answer, utc_ms(ts), synced))
        self._succeeded(device, due)

    async def _open(self, device: DeviceState) -> bool:
        """Open ``device``'s driver; on failure count it, back off and return False."""
        try:
            async with asyncio.timeout(device.guard):
                await device.driver.open()
        except (DeviceError, TimeoutError) as exc:
            error = exc if isinstance(exc, DeviceError) else DeviceTimeout("open took too long")
            await self._failed(device, error)
            return False
        except Exception as exc:  # a driver bug: contained to this device (module docstring)
            await self._failed(device, _bug("open", exc))
            return False
        device.opened = True
        return True

    async def _close(self, device: DeviceState) -> None:
        """Close ``device``'s driver; a driver whose close() raises is a bug, logged, not raised.

        Bounded by the device's guard like open() and poll(): a close() stuck on a wedged
        transport is given up (and logged), so that the bus goes on and a stop never waits on it.
        """
        try:
            async with asyncio.timeout(device.guard):
                await device.driver.close()
        except TimeoutError:
            if not device.bug_logged:
                log.warning(
                    "device %s: close() did not return within %.0f s; given up",
                    device.id,
                    device.guard,
                )
                device.bug_logged = True
        except Exception as exc:
            if not device.bug_logged:
                log.warning(
                    "device %s: driver bug in close (%s: %s)", device.id, type(exc).__name__, exc
                )
                log.debug("device %s: close() raised", device.id, exc_info=exc)
                device.bug_logged = True

    def _readings(
        self,
        device: DeviceState,
        answer: Sequence[tuple[str, str, Value]],
        ts: datetime,
        synced: bool,
    ) -> list[Reading]:
        readings = []
        for key, unit, value in answer:
            if value is None:
                device.no_values[key] += 1
            readings.append(
                Reading(
                    device=device.id,
                    metric=key,
                    value=value,
                    unit=unit,
                    ts=ts,
                    seq=self._sequence.next(),
                    quality=Quality.GOOD if value is not None else Quality.NO_VALUE,
                    time_synced=synced,
                )
            )
        return readings

    def _succeeded(self, device: DeviceState, due: float) -> None:
        device.polls += 1
        if not device.available:
            log.info("device %s recovered after %d failed attempts", device.id, device.failures)
        device.available = True
        device.failures = 0
        device.bug_logged = False
        now = self._monotonic()
        device.last_poll_at = now
        # Next slot on the grid strictly after now: late polls skip slots instead of bursting.
        missed = max(0, int((now - due) // device.interval))
        device.next_due = due + (missed + 1) * device.interval

    async def _failed(self, device: DeviceState, error: DeviceError) -> None:
        device.errors[error.kind] += 1
        device.failures += 1
        device.last_error = Failure(
            kind=error.kind, fault=error.fault, message=str(error), at=self._monotonic()
        )
        if isinstance(error, DriverBug):
            if not device.bug_logged:
                log.warning(
                    "device %s unavailable (%s: %s); a driver bug, retrying with backoff",
                    device.id,
                    error.kind,
                    error,
                )
                log.debug("device %s: driver bug", device.id, exc_info=error.__cause__)
                device.bug_logged = True
        elif device.available:
            log.warning(
                "device %s unavailable (%s: %s); retrying with backoff",
                device.id,
                error.kind,
                error,
            )
        device.available = False
        if not device.opened or isinstance(error, DeviceTimeout | DriverBug):
            # A failed open() may have left a transport half-open, a transport that timed out may
            # be wedged, and after a driver bug its state is unknown: close it, and open it afresh
            # on the next attempt.
            device.opened = False
            await self._close(device)
        backoff = min(MAX_BACKOFF, self._rng.uniform(0, 1.5 ** min(10, device.failures)))
        device.next_due = self._monotonic() + max(device.interval, backoff)


def _bug(call: str, exc: Exception) -> DriverBug:
    """Wrap an unexpected exception from a driver's ``call`` as a `DriverBug` (cause kept)."""
    bug = DriverBug(f"{call}() raised {type(exc).__name__}: {exc}")
    bug.__cause__ = exc
    return bug
