"""The bridge's acknowledgement window: every message received and not yet acknowledged.

Rules, and why:

- A message is acknowledged (PUBACK) only when it is *finished*: dead-lettered (the broker took
  the dead letter), or written to the store, held for ``ack_delay`` seconds after the store's 2xx
  and, with read-back, found in the store afterwards. A VictoriaMetrics single node answers 204
  before the points are on disk; until the ack the broker still holds the message, so a store
  crash in between costs a rewrite, not a reading.
- Acknowledgements leave in the order the messages arrived (MQTT 3.1.1, 4.6): the head of the
  window decides, a finished message behind an unfinished one waits.
- Every entry belongs to one connection (``epoch``). After a reconnect the broker sends again
  whatever was not acknowledged, and a packet id of the old connection may name another message
  in the new one: entries of an older epoch are never acknowledged. They are still written, held
  and read back like the others, and leave the window only once finished: a broker that crashed
  before its autosave does not send them again (Mosquitto acknowledges before it persists), and
  a store that lost them meanwhile must get them from the bridge's memory. When the broker does
  send them again, the copy is written twice, which the store's deduplication absorbs.

The window holds at most what the broker lets be in flight to this client (Mosquitto
``max_inflight_messages``); holding acks for ``ack_delay`` therefore needs a window of at least
message rate x ``ack_delay`` for the stream to keep flowing (docs/mqtt.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import paho.mqtt.client as mqtt

from gateway.model import Reading
from gateway.telemetry import GapEvent

State = Literal["new", "written", "finished"]


@dataclass(eq=False)
class Entry:
    """One received message: its connection, its decoded readings and where it stands."""

    message: mqtt.MQTTMessage
    epoch: int
    state: State = "new"
    #: Monotonic time from which a written entry may be acknowledged.
    due: float = 0.0
    site: str = ""
    readings: list[Reading] | None = None
    #: The declared gap an events message carried (stored instead of readings).
    gap: GapEvent | None = None
    #: An event with nothing to store (an alarm, possibly the bridge's own): acknowledged in
    #: its turn, not counted as held data.
    ignored: bool = False
    #: Times the read-back found it missing and it was written again.
    rewrites: int = field(default=0)


class AckWindow:
    """Entries in arrival order; see the module docstring for the rules."""

    def __init__(self, *, ack_delay: float, clock: Callable[[], float]) -> None:
        self._ack_delay = ack_delay
        self._clock = clock
        self._entries: deque[Entry] = deque()
        self._epoch = 0
        self._changed = asyncio.Event()

    @property
    def epoch(self) -> int:
        """The current connection's number."""
        return self._epoch

    def __len__(self) -> int:
        return len(self._entries)

    def holding(self) -> int:
        """Entries that carry data and are not acknowledged yet (ignored events left out)."""
        return sum(1 for entry in self._entries if not entry.ignored)

    def new_connection(self) -> None:
        """A new connection is up: everything received before it is the broker's again."""
        self._epoch += 1
        self._changed.set()

    def current(self, entry: Entry) -> bool:
        """True while ``entry``'s connection is the current one (its ack is still meaningful)."""
        return entry.epoch == self._epoch

    def receive(self, message: mqtt.MQTTMessage) -> Entry:
        """Record a message as it arrives; returns its entry."""
        entry = Entry(message, self._epoch)
        self._entries.append(entry)
        return entry

    def written(self, entries: list[Entry]) -> None:
        """The store accepted these entries' points now: hold them for ``ack_delay``."""
        due = self._clock() + self._ack_delay
        for entry in entries:
            entry.state, entry.due = "written", due
        self._changed.set()

    def finished(self, entry: Entry) -> None:
        """Nothing more to do for ``entry``: acknowledge it when its turn comes."""
        entry.state = "finished"
        self._changed.set()

    def rewrite(self, entry: Entry) -> None:
        """The store lost ``entry``'s points: it must be written (and held) again."""
        entry.state = "new"
        entry.rewrites += 1

    def due(self, limit: int) -> list[Entry]:
        """Written entries of the current connection whose hold is over, from the head on, up to
        the first entry that is neither finished nor due (at most ``limit``)."""
        now = self._clock()
        out: list[Entry] = []
        for entry in self._entries:
            if entry.state == "written" and entry.due <= now:
                out.append(entry)
                if len(out) >= limit:
                    break
            elif entry.state != "finished":
                break
        return out

    def pop_finished(self) -> list[Entry]:
        """Remove the finished entries at the head and return those of the current connection
        (the ones to acknowledge now); finished entries of older connections leave unacknowledged."""
        out: list[Entry] = []
        while self._entries and self._entries[0].state == "finished":
            head = self._entries.popleft()
            if self.current(head):
                out.append(head)
        return out

    async def wait(self) -> None:
        """Until something changed, or the first held entry at the head is due."""
        now = self._clock()
        wake: float | None = None
        for entry in self._entries:
            if entry.state == "finished":
                continue
            if entry.state == "written":
                wake = entry.due
            break
        if wake is not None and wake <= now:
            return
        self._changed.clear()
        timeout = None if wake is None else wake - now
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: see gateway/app.py
                await self._changed.wait()
