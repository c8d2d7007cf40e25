"""Alarm state that survives a restart: one small JSON file, written only when an alarm changes.

The file holds the *active* alarms and the learnt night baselines, nothing else: a clear alarm
needs no memory (its first reading after boot determines it again, as retained state, not as
news), and sustain timers and windows refill within their own duration. At start-up the active
alarms come back as known states, so a condition that still holds raises no second event (no
re-raise storm at boot) and one that ended while the gateway was down clears with an event.

It is written rarely (an alarm raised or cleared, a night learnt: a handful of writes a day), so
the SD card's wear does not matter; the write is atomic (a temporary file, fsync, rename), so a
power cut leaves the old file or the new one. A missing or unreadable file means "nothing
active": logged, never fatal, because the alarms themselves must run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.model import iso_ms
from gateway.status.alarms import AlarmState

log = logging.getLogger(__name__)

VERSION = 1


class AlarmStore:
    """Reads and writes the alarm state file at ``path``; ``writes`` counts the writes."""

    def __init__(self, *, path: Path) -> None:
        self.path = path
        self.writes = 0

    def load(self) -> tuple[list[AlarmState], dict[str, list[float]]]:
        """The active alarms and baselines last saved, or nothing if there is no usable file."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("v") != VERSION:
                raise ValueError(f"version {data.get('v')!r}")
            states = [_state(item) for item in data["active"]]
            baselines = {str(k): [float(x) for x in v] for k, v in data["baselines"].items()}
        except FileNotFoundError:
            return [], {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("alarm state %s unusable (%s); starting with no active alarm", self.path, exc)
            return [], {}
        log.info("alarm state: %d active alarms restored from %s", len(states), self.path)
        return states, baselines

    def save(self, states: Iterable[AlarmState], baselines: Mapping[str, Sequence[float]]) -> None:
        """Write the active ``states`` and ``baselines`` atomically; OSError is logged."""
        body = {
            "v": VERSION,
            "active": [_item(s) for s in states if s.active],
            "baselines": {k: [round(x, 3) for x in v] for k, v in sorted(baselines.items())},
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("w", encoding="utf-8") as file:
                json.dump(body, file, ensure_ascii=False, separators=(",", ":"))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            log.error("alarm state %s not saved: %s", self.path, exc)
            return
        self.writes += 1


def _item(state: AlarmState) -> dict[str, Any]:
    return {
        "device": state.device,
        "name": state.name,
        "value": state.value,
        "unit": state.unit,
        "threshold": state.threshold,
        "since": iso_ms(state.since),
        "severity": state.severity,
        "message": state.message,
    }


def _state(item: dict[str, Any]) -> AlarmState:
    value = item["value"]
    return AlarmState(
        device=str(item["device"]),
        name=str(item["name"]),
        active=True,
        value=None if value is None else float(value),
        unit=str(item["unit"]),
        threshold=float(item["threshold"]),
        since=datetime.fromisoformat(item["since"]),
        severity=None if item.get("severity") is None else str(item["severity"]),
        message=None if item.get("message") is None else str(item["message"]),
    )
