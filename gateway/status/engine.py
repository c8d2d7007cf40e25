"""From the configuration's rules (`gateway.alarm_rules`) to the engine's (`gateway.status.alarms`).

This is where a rule's scope becomes a set of devices: ``room`` rules watch the devices listed in
``[[status.rooms]]``; ``building`` rules the devices named in ``devices`` or of the ``kinds``
(a Modbus device's profile, otherwise its driver). The three v1 alarms (``co2_high``,
``pm25_high``, ``silent``) keep their v1 payload: their states carry no severity or message key
(docs/mqtt.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from gateway.alarm_rules import WEEKDAYS, RuleConfig, ScheduleConfig, parse_hours
from gateway.config import GatewayConfig, ModbusDevice
from gateway.status.alarms import (
    SILENT,
    AlarmBook,
    AlarmState,
    Baseline,
    Gate,
    Schedule,
    SilentWhileRule,
    ValueRule,
)

#: The alarms whose MQTT payload is frozen at v1 (no ``severity`` / ``message``).
V1_ALARMS = frozenset({"co2_high", "pm25_high", SILENT})
#: Order of severities for the panel: the most severe alarm is the one shown.
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def device_kind(device: object) -> str:
    """What ``kinds`` match: a Modbus device's profile, else its driver name."""
    if isinstance(device, ModbusDevice) and device.profile is not None:
        return device.profile
    return str(getattr(device, "driver", ""))


def inputs(config: GatewayConfig) -> tuple[tuple[str, str, float], ...]:
    """What the engine and the rooms take from ``[[devices]]`` (ids, kinds, intervals): a reload
    that changes any of it must rebuild the status service (`gateway.reload`). A superset of
    what each rule reads, so that nothing the rules depend on can change unnoticed."""
    if not config.status.rooms:
        return ()
    return tuple((d.id, device_kind(d), d.interval) for d in config.enabled_devices())


def schedule_of(config: ScheduleConfig) -> Schedule:
    """The engine's schedule for ``[status.schedule]``."""
    blocks = []
    for block in config.occupied:
        start, end = parse_hours(block.hours)
        blocks.append((frozenset(WEEKDAYS.index(d) for d in block.days), start, end))
    zone = ZoneInfo(config.timezone) if config.timezone else None
    return Schedule(zone=zone, occupied=blocks)


def _devices(
    rule: RuleConfig, config: GatewayConfig, kinds: Iterable[str] | None
) -> frozenset[str]:
    if rule.scope == "room":
        return frozenset(d for room in config.status.rooms for d in room.devices)
    chosen = set(rule.devices or ())
    wanted = set(kinds or ())
    chosen |= {d.id for d in config.enabled_devices() if device_kind(d) in wanted}
    return frozenset(chosen)


def value_rule(rule: RuleConfig, devices: frozenset[str] | None) -> ValueRule:
    """The engine form of a complete threshold rule."""
    v1 = rule.id in V1_ALARMS
    direction: Literal["above", "below", "equals"] = (
        "equals" if rule.equals is not None else "below" if rule.below is not None else "above"
    )
    limit = rule.above if rule.above is not None else rule.below
    baseline = None
    if rule.baseline_nights is not None:
        assert rule.factor is not None and rule.margin is not None  # checked by alarm_rules
        baseline = Baseline(
            nights=rule.baseline_nights,
            min_nights=rule.baseline_min_nights or 1,
            factor=rule.factor,
            margin=rule.margin,
        )
    return ValueRule(
        name=rule.id,
        metrics=rule.metric_names(),
        direction=direction,
        raise_at=limit if limit is not None else 0.0,
        clear_at=rule.clear if rule.clear is not None else 0.0,
        equals=tuple(rule.equals or ()),
        signal=rule.signal or "value",
        window=rule.window or 0.0,
        per=rule.per or 1.0,
        sustain=rule.sustain or 0.0,
        clear_sustain=rule.clear_sustain or 0.0,
        gate=Gate(
            when=rule.when or "always",
            hours=parse_hours(rule.hours) if rule.hours else None,
        ),
        baseline=baseline,
        devices=devices,
        severity=None if v1 else rule.severity,
        message=None if v1 else rule.message,
        unit=rule.unit,
    )


def build_book(
    config: GatewayConfig,
    *,
    clock: Callable[[], float],
    wall: Callable[[], datetime],
    restored: Sequence[AlarmState] = (),
    baselines: Mapping[str, Sequence[float]] | None = None,
) -> tuple[AlarmBook, frozenset[str]]:
    """The engine for ``config``'s rules, and the names of its building-scope rules."""
    status = config.status
    intervals = {device.id: device.interval for device in config.devices}
    values: list[ValueRule] = []
    silent_while: list[SilentWhileRule] = []
    silent_after: dict[str, float] = {}
    building: set[str] = set()
    for rule in status.alarms.effective_rules():
        devices = _devices(rule, config, rule.kinds)
        if rule.scope == "building":
            building.add(rule.id)
        if rule.kind == "silent":
            silent_after.update(
                {d: status.alarms.silent_intervals * intervals[d] for d in sorted(devices)}
            )
        elif rule.kind == "silent_while":
            witnesses = frozenset(rule.witnesses or ()) | _devices(
                rule.model_copy(update={"devices": rule.witnesses}), config, rule.witness_kinds
            )
            if devices and witnesses:
                silent_while.append(
                    SilentWhileRule(
                        name=rule.id,
                        devices=devices - witnesses,
                        witnesses=witnesses,
                        after=rule.after or 120.0,
                        severity=rule.severity,
                        message=rule.message,
                    )
                )
        elif devices:
            values.append(value_rule(rule, devices))
    book = AlarmBook(
        rules=values,
        silent_after=silent_after,
        silent_while=silent_while,
        schedule=schedule_of(status.schedule),
        clock=clock,
        wall=wall,
        restored=restored,
        baselines=baselines,
    )
    return book, frozenset(building)
