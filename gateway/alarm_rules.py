"""Alarm rules as data: the ``[[status.alarms.rules]]`` and ``[status.schedule]`` config models,
and the kindergarten defaults a caretaker reads and adjusts (sources: docs/configuration.md).

A rule file entry only needs the keys it changes: an entry whose ``id`` is a default rule's is
merged key by key onto that default (``{ id = "room_hot", above = 28.0 }`` moves one number,
``{ id = "smoke", enabled = false }`` switches a rule off); any other ``id`` is a rule of the
site's own and must start with ``site_`` (the MQTT schema lists the default ids, so a backend
can tell a known alarm from a site's own). `effective_rules` does the merge and the checks that
need the whole rule, so a bad rule is refused when the file is loaded, not on the first reading.

This module is config only (pydantic, no clocks, no I/O); `gateway.status.alarms` runs the rules.
"""

from __future__ import annotations

from datetime import time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_HOURS_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d$"
#: Own rules of a site carry this prefix (see the module docstring).
SITE_PREFIX = "site_"
#: Seconds; a week is the longest window or duration that makes sense on a Pi's memory.
Duration = Annotated[float, Field(ge=0, le=7 * 86_400)]
Hours = Annotated[str, Field(pattern=_HOURS_PATTERN)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Severity = Literal["info", "warning", "critical"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def parse_hours(text: str) -> tuple[time, time]:
    """``"22:00-05:30"`` -> (22:00, 05:30); an end before the start wraps past midnight."""
    start, end = text.split("-")
    begin = time(int(start[:2]), int(start[3:]))
    finish = time(23, 59, 59, 999_999) if end == "24:00" else time(int(end[:2]), int(end[3:]))
    return begin, finish


class OccupiedHours(_Model):
    """One block of occupied hours: ``days`` at local ``hours`` (``"07:00-18:00"``)."""

    days: Annotated[list[Weekday], Field(min_length=1)]
    hours: Hours


class ScheduleConfig(_Model):
    """When the building is occupied; every other hour is "empty".

    ``timezone`` is an IANA name (``"Europe/Berlin"``); ``None`` uses the Pi's own local time
    zone, which the installer sets for the site.
    """

    timezone: str | None = None
    occupied: list[OccupiedHours] = [
        OccupiedHours(days=["mon", "tue", "wed", "thu", "fri"], hours="07:00-18:00")
    ]

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str | None) -> str | None:
        if name is not None:
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {name!r} (an IANA name)") from exc
        return name


class RuleConfig(_Model):
    """One alarm rule (every key but ``id`` optional, so that an entry can adjust a default).

    The complete rule (after `effective_rules`):

    - ``kind = "threshold"``: the ``signal`` of ``metric`` (``value`` as read; ``rise`` = value
      minus the lowest value of the last ``window`` s; ``rate`` = increase of a counter over the
      last ``window`` s, per ``per`` s; ``mean`` over the last ``window`` s) raises when above
      ``above`` (or below ``below``, or equal to one of ``equals``) for ``sustain`` s while the
      schedule gate (``when``, ``hours``) is open, and clears when beyond ``clear`` (or no longer
      equal) for ``clear_sustain`` s, gate open or not: a schedule decides when an alarm may be
      raised, never hides one that is active. ``baseline_nights`` makes the limit the building's
      own: raise above ``factor`` x the median of the mean of the last ``baseline_nights`` gate
      periods plus ``margin``, clear below the median plus ``margin``.
    - ``kind = "silent"``: no reading at all for ``silent_intervals`` poll intervals.
    - ``kind = "silent_while"``: no reading for ``after`` s while a ``witness`` device answers.

    ``scope = "room"`` applies to the devices of ``[[status.rooms]]``; ``"building"`` to the
    devices named in ``devices`` or of the ``kinds`` (a Modbus device's profile, else its
    driver: ``sdm630``, ``tuf2000m``, ``sunspec``).
    """

    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
    enabled: bool | None = None
    kind: Literal["threshold", "silent", "silent_while"] | None = None
    metric: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")] | None = None
    metrics: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]] | None = None
    signal: Literal["value", "rise", "rate", "mean"] | None = None
    window: Annotated[float, Field(gt=0, le=7 * 86_400)] | None = None
    per: Annotated[float, Field(gt=0, le=86_400)] | None = None
    above: float | None = None
    below: float | None = None
    equals: list[float] | None = None
    clear: float | None = None
    sustain: Duration | None = None
    clear_sustain: Duration | None = None
    when: Literal["always", "occupied", "empty"] | None = None
    hours: Hours | None = None
    baseline_nights: Annotated[int, Field(ge=1, le=60)] | None = None
    baseline_min_nights: Annotated[int, Field(ge=1, le=60)] | None = None
    factor: Annotated[float, Field(ge=1, le=100)] | None = None
    margin: Annotated[float, Field(ge=0)] | None = None
    after: Annotated[float, Field(gt=0, le=7 * 86_400)] | None = None
    scope: Literal["room", "building"] | None = None
    devices: list[Annotated[str, Field(pattern=_ID_PATTERN)]] | None = None
    kinds: list[str] | None = None
    witnesses: list[Annotated[str, Field(pattern=_ID_PATTERN)]] | None = None
    witness_kinds: list[str] | None = None
    severity: Severity | None = None
    message: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")] | None = None
    unit: str | None = None

    def metric_names(self) -> tuple[str, ...]:
        """The metrics the rule reads (``metrics`` for a rule over alternative keys)."""
        if self.metrics:
            return tuple(self.metrics)
        return (self.metric,) if self.metric else ()


def _rule(**keys: object) -> RuleConfig:
    base: dict[str, object] = {
        "enabled": True,
        "signal": "value",
        "sustain": 0.0,
        "clear_sustain": 0.0,
        "when": "always",
        "scope": "room",
        "severity": "warning",
    }
    base.update(keys)
    base.setdefault("message", keys["id"])
    return RuleConfig.model_validate(base)


#: The kindergarten defaults, in the order docs/configuration.md documents them (with sources).
#: ``co2_high`` and ``pm25_high`` take ``above``/``clear`` from the v1 keys ``co2_raise`` ...
DEFAULT_RULES: tuple[RuleConfig, ...] = (
    _rule(id="co2_high", kind="threshold", metric="co2", above=2000.0, clear=1800.0),
    _rule(
        id="pm25_high",
        kind="threshold",
        metrics=["pm25", "pm2_5"],
        above=75.0,
        clear=60.0,
    ),
    _rule(id="silent", kind="silent"),
    _rule(
        id="room_hot", kind="threshold", metric="temperature", above=27.0, clear=26.0, sustain=1800
    ),
    _rule(
        id="room_cold", kind="threshold", metric="temperature", below=18.0, clear=19.0, sustain=1800
    ),
    _rule(
        id="humidity_high",
        kind="threshold",
        metric="humidity",
        above=70.0,
        clear=65.0,
        sustain=14_400,
    ),
    _rule(
        id="humidity_low",
        kind="threshold",
        metric="humidity",
        below=25.0,
        clear=30.0,
        sustain=14_400,
    ),
    _rule(
        id="smoke",
        kind="threshold",
        metrics=["pm25", "pm2_5"],
        signal="rise",
        window=300.0,
        above=150.0,
        clear=25.0,
        clear_sustain=900.0,
        severity="critical",
        unit="µg/m³",
    ),
    _rule(
        id="water_night_flow",
        kind="threshold",
        scope="building",
        kinds=["tuf2000m"],
        metric="volume_forward",
        signal="rate",
        window=3600.0,
        per=3600.0,
        above=0.005,
        clear=0.001,
        sustain=7200.0,
        when="empty",
        severity="critical",
        unit="m³/h",
    ),
    _rule(
        id="water_long_flow",
        kind="threshold",
        scope="building",
        kinds=["tuf2000m"],
        metric="volume_forward",
        signal="rate",
        window=900.0,
        per=3600.0,
        above=1.0,
        clear=0.5,
        sustain=3600.0,
        severity="critical",
        unit="m³/h",
    ),
    _rule(
        id="power_left_on",
        kind="threshold",
        scope="building",
        kinds=["sdm630", "sdm72", "sdm120"],
        metric="power",
        signal="mean",
        window=1800.0,
        hours="23:00-05:00",
        when="empty",
        baseline_nights=7,
        baseline_min_nights=3,
        factor=3.0,
        margin=300.0,
        sustain=3600.0,
        unit="W",
    ),
    _rule(
        id="power_lost",
        kind="silent_while",
        scope="building",
        kinds=["sdm630"],
        witness_kinds=["sunspec"],
        after=120.0,
        severity="critical",
    ),
    _rule(
        id="pv_fault",
        kind="threshold",
        scope="building",
        kinds=["sunspec"],
        metric="state",
        equals=[7.0],
    ),
    _rule(
        id="pv_no_production",
        kind="threshold",
        scope="building",
        kinds=["sunspec"],
        metric="ac_power",
        below=20.0,
        clear=200.0,
        hours="10:00-14:00",
        sustain=7200.0,
    ),
)
DEFAULT_IDS: tuple[str, ...] = tuple(rule.id for rule in DEFAULT_RULES)


def effective_rules(
    overrides: list[RuleConfig], *, legacy: dict[str, dict[str, float]]
) -> list[RuleConfig]:
    """The defaults with ``overrides`` merged by id, site rules appended; checked whole.

    ``legacy`` maps a default id to keys set by the v1 ``[status.alarms]`` keys (``co2_raise``
    -> ``co2_high.above``). Raises ValueError naming the rule for anything incomplete or
    inconsistent.
    """
    by_id = {rule.id: rule for rule in DEFAULT_RULES}
    for rule_id, keys in legacy.items():
        by_id[rule_id] = by_id[rule_id].model_copy(update=keys)
    seen: set[str] = set()
    for entry in overrides:
        if entry.id in seen:
            raise ValueError(f"rule {entry.id}: given twice")
        seen.add(entry.id)
        update = {key: getattr(entry, key) for key in entry.model_fields_set if key != "id"}
        if entry.id in by_id:
            if entry.id in legacy and {"above", "clear"} & set(update):
                raise ValueError(
                    f"rule {entry.id}: set its limits either in the rule or with the "
                    f"{entry.id.split('_')[0]}_raise/_clear keys, not both"
                )
            by_id[entry.id] = by_id[entry.id].model_copy(update=update)
        elif not entry.id.startswith(SITE_PREFIX):
            raise ValueError(
                f"rule {entry.id}: not a default rule ({', '.join(DEFAULT_IDS)}); "
                f"a site's own rule id starts with {SITE_PREFIX!r}"
            )
        else:
            by_id[entry.id] = _rule(**entry.model_dump(exclude_unset=True))
    rules = [rule for rule in by_id.values() if rule.enabled]
    for rule in rules:
        _check(rule)
    return rules


def _check(rule: RuleConfig) -> None:
    name = f"rule {rule.id}"
    if rule.kind is None:
        raise ValueError(f"{name}: needs 'kind' (threshold, silent or silent_while)")
    if rule.scope == "building" and not (rule.devices or rule.kinds):
        raise ValueError(f"{name}: a building rule names its 'devices' or 'kinds'")
    if rule.kind == "silent_while" and not (rule.witnesses or rule.witness_kinds):
        raise ValueError(f"{name}: silent_while needs 'witnesses' or 'witness_kinds'")
    if rule.kind == "threshold":
        _check_threshold(rule, name)


def _check_threshold(rule: RuleConfig, name: str) -> None:
    if not rule.metric_names():
        raise ValueError(f"{name}: needs 'metric'")
    if rule.signal != "value" and rule.window is None:
        raise ValueError(f"{name}: signal {rule.signal} needs 'window' (seconds)")
    if rule.signal == "rate" and rule.per is None:
        raise ValueError(f"{name}: signal rate needs 'per' (3600: per hour)")
    given = [k for k in ("above", "below", "equals") if getattr(rule, k) is not None]
    if rule.baseline_nights is not None:
        if given:
            raise ValueError(f"{name}: a baseline rule sets 'factor' and 'margin', not {given[0]}")
        if rule.factor is None or rule.margin is None or rule.hours is None:
            raise ValueError(f"{name}: a baseline rule needs 'factor', 'margin' and 'hours'")
        return
    if len(given) != 1:
        raise ValueError(f"{name}: needs exactly one of 'above', 'below', 'equals'")
    if rule.equals is not None:
        return
    if rule.clear is None:
        raise ValueError(f"{name}: needs 'clear' (the hysteresis limit)")
    if rule.above is not None and rule.clear >= rule.above:
        raise ValueError(f"{name}: clear must be below above (hysteresis)")
    if rule.below is not None and rule.clear <= rule.below:
        raise ValueError(f"{name}: clear must be above below (hysteresis)")
