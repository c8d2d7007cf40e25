"""One measurement of one device, waiting for it if a sensor has none yet: ``gateway read`` and
``gateway check --connect``.

The daemon's scheduler never waits on a sensor (a `DeviceNotReady` SCD4x is asked again later,
while the other devices on the bus go first); a one-off read has nothing else to do, so it waits,
within a bound:

* an SCD4x has a new measurement every 5 s in periodic mode (30 s in low power), and none right
  after it was started: `DeviceNotReady` until then, retried after its ``retry_after``;
* a PMSA003I withholds its values (all ``None``) for ``warmup_s`` after it was opened (the chip's
  fan needs 30 s for stable data); the driver says so with its ``warming_up`` property, and the
  time left is ``warmup_s`` minus the time since `measure` opened it. With ``wait_warmup`` the
  read waits it out, telling ``progress`` the seconds left each second; without, it returns the
  withheld values (a frame was still read and checked: the chip answers).

Past ``bound`` seconds it fails with `MeasureTimeout`, saying what it waited for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from drivers.base import Driver
from gateway.errors import DeviceNotReady, DeviceTimeout
from gateway.model import MetricSpec, Value

#: How long a one-off read may wait by default: an SCD4x's first measurement (5 s) and a
#: PMSA003I's warm-up (30 s), twice over.
DEFAULT_BOUND = 60.0


class MeasureTimeout(DeviceTimeout):
    """No usable measurement within the bound (a sensor that never became ready)."""


@runtime_checkable
class WarmsUp(Protocol):
    """A driver that withholds its values for a while after ``open`` (the PMSA003I's)."""

    @property
    def warming_up(self) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """The values of one poll and what they mean; ``seconds`` from the start to the values,
    waits included; ``withheld``: the values are the warm-up's (all ``None``), not waited out."""

    values: Mapping[str, Value]
    metrics: Mapping[str, MetricSpec]
    seconds: float
    withheld: bool = False

    @property
    def count(self) -> int:
        """How many metrics have a value."""
        return sum(value is not None for value in self.values.values())


#: ``progress(what, seconds_left)``: what the read waits for; ``seconds_left`` is None when
#: the wait has no known end (the next SCD4x measurement).
Progress = Callable[[str, float | None], None]


async def measure(
    driver: Driver,
    *,
    bound: float = DEFAULT_BOUND,
    warmup_s: float = 0.0,
    wait_warmup: bool = True,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Measurement:
    """Open ``driver``, poll until it has a measurement (see the module docstring), close it.

    ``warmup_s`` is the driver's configured warm-up (``[[devices]] warmup_s``), for the seconds
    left. Raises the driver's `gateway.errors.DeviceError`, or `MeasureTimeout` after ``bound``.
    """
    start = clock()
    deadline = start + bound
    await driver.open()
    opened = clock()
    try:
        while True:
            try:
                values = await driver.poll()
            except DeviceNotReady as exc:
                if clock() + exc.retry_after > deadline:
                    raise MeasureTimeout(f"no measurement within {bound:.0f} s ({exc})") from exc
                if progress is not None:
                    progress("waiting for the next measurement", None)
                await sleep(exc.retry_after)
                continue
            warming = isinstance(driver, WarmsUp) and driver.warming_up
            if warming and wait_warmup:
                left = max(0.0, warmup_s - (clock() - opened))
                if clock() + left > deadline:
                    raise MeasureTimeout(
                        f"still warming up, {left:.0f} s left: longer than the {bound:.0f} s bound"
                    )
                if progress is not None:
                    progress("warming up", left)
                await sleep(min(1.0, left) or 0.1)
                continue
            return Measurement(
                values=values, metrics=driver.metrics, seconds=clock() - start, withheld=warming
            )
    finally:
        await driver.close()
