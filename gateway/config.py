"""One TOML file -> one validated, immutable configuration model.

Contract: `load_config(path)` returns a `GatewayConfig` or raises `ConfigError` whose message has one
line per problem, each of the form ``FILE: KEY.PATH: what was expected (got VALUE)``. Unknown keys are
rejected everywhere (a typo must not silently fall back to a default). Nothing below the loader ever
sees a dict. Secrets (MQTT password, InfluxDB token) are never read from the TOML: only the name of an
environment variable or the path of a credentials file is.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drivers.modbus.codec import DataType
from drivers.modbus.profiles import (
    MODBUS_MAX_REGISTERS,
    available_profiles,
    profile_from_table,
)
from drivers.modbus.sunspec.models import SUPPORTED_MODELS
from gateway.alarm_rules import RuleConfig, ScheduleConfig, effective_rules
from gateway.errors import ConfigError

#: Identifiers end up in MQTT topics and time-series tags: keep them to a safe, readable alphabet.
_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ID_HELP = (
    "lower-case letters, digits, '-' or '_', starting with a letter or digit, at most 63 long"
)

_BUS_PATTERN = r"^(/dev/i2c-\d+|tcp://[^:/]+:\d{1,5})$"
_URL_PATTERN = r"^https?://"
_TOPIC_PATTERN = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"
_SERIAL_PATTERN = r"^/"
#: What a pattern means, for error messages (a regex is not an explanation).
_PATTERN_HELP = {
    _ID_PATTERN: f"expected an identifier: {_ID_HELP}",
    _BUS_PATTERN: "expected /dev/i2c-N (a Linux I2C bus) or tcp://HOST:PORT (a served bus)",
    _URL_PATTERN: "expected an http:// or https:// URL",
    _TOPIC_PATTERN: "expected topic levels of letters, digits, '-' or '_' separated by '/'",
    _SERIAL_PATTERN: "expected the absolute path of a serial device, e.g. /dev/ttyUSB0",
}

Identifier = Annotated[str, Field(pattern=_ID_PATTERN)]
Port = Annotated[int, Field(ge=1, le=65535)]
#: TOML has no path type: accept a string (the only place strict mode is relaxed).
FilePath = Annotated[Path, Field(strict=False)]
#: Poll intervals: faster than 10 Hz is not a building-monitoring use case, slower than a day is a typo.
Interval = Annotated[float, Field(ge=0.1, le=86_400)]


class _Model(BaseModel):
    """Base for every config section: frozen, unknown keys rejected, no type coercion from strings."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, defer_build=True)


class SiteConfig(_Model):
    """The building (or campus) this gateway serves; ``id`` is the first level of every topic."""

    id: Identifier
    name: str = ""


class TlsConfig(_Model):
    """TLS towards the broker. Without ``ca_file`` the system trust store is used."""

    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class Credentials(_Model):
    """Where a secret comes from: an environment variable, or a file holding only the secret."""

    env: str | None = None
    file: FilePath | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Credentials:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    def resolve(self) -> str:
        """Read the secret now. Raises `ConfigError` naming the variable or file when it is missing."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None  # guaranteed by the validator
        try:
            return self.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{self.file}: cannot read credentials: {exc.strerror}") from exc


class MqttConfig(_Model):
    """The broker the gateway publishes to and the bridge subscribes from."""

    host: str = "127.0.0.1"
    port: Port = 1883
    topic_prefix: Annotated[str, Field(pattern=_TOPIC_PATTERN)] = "canary"
    client_id: str | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    username: str | None = None
    password: Credentials | None = None
    tls: TlsConfig | None = None
    #: QoS 1 messages sent but not yet acknowledged; bounds duplicates after a crash.
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 50
    #: Readings per second the backlog drains at after an outage (0: as fast as the broker takes
    #: them); live readings always go first.
    backlog_rate: Annotated[int, Field(ge=0, le=1_000_000)] = 20_000
    #: Telemetry payload: ``v1`` (a reading per object, unit and ISO time in each) or ``v2``
    #: (compact: one object per poll, units in the retained device description). v1 by default:
    #: backends written for v1 keep working until they are ready (docs/mqtt.md).
    payload: Literal["v1", "v2"] = "v1"


class BufferConfig(_Model):
    """The durable on-disk buffer that holds every reading until the broker acknowledged it."""

    path: FilePath = Path("/var/lib/canary-gateway/buffer.sqlite3")
    #: Seconds between group commits (new readings + acknowledged deletions in one transaction).
    #: Longer saves SD-card writes; a power cut may lose up to this much. 0 commits every poll.
    commit_interval: Annotated[float, Field(ge=0, le=60)] = 2.0
    #: FULL: a commit survives a power cut. NORMAL: fewer fsyncs, may lose the last commits.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    #: Caps; when one is exceeded the oldest undelivered readings are dropped, counted and alarmed.
    max_bytes: Annotated[int, Field(ge=1_000_000)] = 2 * 1024**3
    max_age_days: Annotated[float, Field(gt=0, le=3650)] = 35.0
    max_readings: Annotated[int, Field(ge=1)] | None = None


class ClockConfig(_Model):
    """How the gateway knows its wall clock is right (a Pi has no battery-backed clock).

    ``sync``: ``auto`` uses systemd-timesyncd's flag where timesyncd runs, and otherwise trusts
    the system clock; ``timesyncd`` always uses the flag; ``file`` uses ``sync_file`` (any file
    touched on each synchronisation, e.g. by a chrony hook); ``none`` trusts the clock (a
    real-time clock or GPS).
    """

    sync: Literal["auto", "timesyncd", "file", "none"] = "auto"
    sync_file: FilePath | None = None
    #: How long untrusted readings are held for re-stamping before they go out flagged.
    hold_unsynced: Annotated[float, Field(ge=0, le=86_400)] = 120.0
    #: A jump of wall minus monotonic time larger than this (seconds) is a clock step.
    step_tolerance: Annotated[float, Field(gt=0, le=3600)] = 1.0

    @model_validator(mode="after")
    def _file_needs_path(self) -> ClockConfig:
        if (self.sync == "file") != (self.sync_file is not None):
            raise ValueError('sync_file is required with sync = "file" and only then')
        return self


class InfluxConfig(_Model):
    """The InfluxDB v2 write API the bridge writes to (InfluxDB 2.x, VictoriaMetrics, ...)."""

    url: Annotated[str, Field(pattern=_URL_PATTERN)]
    org: str
    bucket: str
    token: Credentials | None = None
    #: How the token is sent: ``token`` as ``Authorization: Token ...`` (InfluxDB 2.x); ``basic``
    #: as HTTP Basic with the secret ``user:password`` (VictoriaMetrics ``-httpAuth.*``, vmauth,
    #: a reverse proxy).
    auth: Literal["token", "basic"] = "token"
    #: Messages per write request, at most; the bridge also flushes after ``flush_interval`` seconds.
    batch_size: Annotated[int, Field(ge=1, le=50_000)] = 1000
    flush_interval: Annotated[float, Field(gt=0, le=60)] = 0.5


class BridgeConfig(_Model):
    """The MQTT -> time-series bridge: its MQTT identity, its share of the sites, and when it acks.

    Scaling out: every bridge is one persistent session (its own ``client_id``) subscribed to its
    own ``sites``. No ``$share``: Mosquitto 2.0 does not persist shared subscriptions, so after a
    broker restart a group's queued messages go to nobody, and a member that leaves for good
    strands its share (docs/mqtt.md, "Scaling out the bridge").
    """

    client_id: str | None = None
    #: Sites this bridge stores; empty: every site under the topic prefix.
    sites: list[Identifier] = []
    #: Seconds the MQTT acknowledgement of a message is held after the store accepted its points:
    #: a 2xx from VictoriaMetrics single-node is not on disk until its in-memory flush (1.79.5:
    #: measured <= 8.5 s). 0: the 2xx is durable (InfluxDB 2.x).
    ack_delay: Annotated[float, Field(ge=0, le=600)] = 15.0
    #: Before acknowledging, read the points back (VictoriaMetrics ``/api/v1/export``) and write
    #: again whatever a store restart lost meanwhile.
    read_back: bool = True
    #: Refused; kept as a key only to say why (see the class docstring).
    share_group: str | None = None

    @field_validator("share_group")
    @classmethod
    def _no_share_group(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "$share subscriptions are not supported: Mosquitto does not persist them, so "
                "after a broker restart the messages queued for the group go to nobody, and a "
                "bridge that leaves the group strands its share. Give each bridge its own "
                'client_id and its own list of sites instead (docs/mqtt.md, "Scaling out the '
                'bridge")'
            )
        return value

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, value: list[str]) -> list[str]:
        if len(value) != len(set(value)):
            raise ValueError("each site may be listed once")
        return value

    @model_validator(mode="after")
    def _read_back_needs_delay(self) -> BridgeConfig:
        if self.read_back and self.ack_delay == 0:
            raise ValueError(
                "read_back checks the points once ack_delay has passed; with ack_delay = 0 (a "
                "store whose 2xx is durable, e.g. InfluxDB 2.x) set read_back = false"
            )
        return self


class TcpTransport(_Model):
    """Modbus TCP to a device or a TCP-to-RS-485 gateway."""

    kind: Literal["tcp"]
    host: str
    port: Port = 502


#: Inter-transaction pause on a serial line, in seconds (on top of the t3.5 gap the baud needs).
LinePause = Annotated[float, Field(ge=0, le=10)]


class RtuTransport(_Model):
    """Modbus RTU on a local serial port (an RS-485 adapter). Every device with the same ``port``
    is on one line: one bus task polls them in turn, and they must agree on the line settings."""

    kind: Literal["rtu"]
    #: The serial device, e.g. ``/dev/ttyUSB0`` or ``/dev/serial/by-id/...``.
    port: Annotated[str, Field(pattern=_SERIAL_PATTERN)]
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    pause: LinePause = 0.0
    #: The adapter hears its own transmission: read our request back (checked) before the answer.
    echo: bool = False
    #: Who switches the transceiver's direction: the adapter itself ("none"), the serial driver
    #: ("kernel", Linux RS-485 mode) or the gateway toggling RTS around each request ("software").
    rts: Literal["none", "kernel", "software"] = "none"
    #: Release RTS while sending and assert it while receiving (boards wired the other way round).
    rts_invert: bool = False

    def line_key(self) -> str:
        """The physical line: one serial port."""
        return f"modbus-rtu:{self.port}"

    def settings(self) -> tuple[object, ...]:
        """What every device on the line must agree on."""
        return (
            self.baudrate,
            self.parity,
            self.stopbits,
            self.bytesize,
            self.pause,
            self.echo,
            self.rts,
            self.rts_invert,
        )


class RtuOverTcpTransport(_Model):
    """Modbus RTU frames tunnelled over TCP by a transparent serial-to-Ethernet converter (not a
    Modbus TCP gateway, which would speak ``kind = "tcp"``). The converter does the serial timing."""

    kind: Literal["rtu-over-tcp"]
    host: str
    port: Port
    pause: LinePause = 0.0

    def line_key(self) -> str:
        """The physical line behind the converter."""
        return f"modbus-rtu-tcp://{self.host}:{self.port}"

    def settings(self) -> tuple[object, ...]:
        """What every device on the line must agree on."""
        return (self.pause,)


ModbusTransport = Annotated[
    TcpTransport | RtuTransport | RtuOverTcpTransport, Field(discriminator="kind")
]
#: The values of a transport's ``kind`` key.
TRANSPORT_KINDS: tuple[str, ...] = tuple(
    get_args(model.model_fields["kind"].annotation)[0]
    for model in (TcpTransport, RtuTransport, RtuOverTcpTransport)
)


class _DeviceBase(_Model):
    id: Identifier
    interval: Interval = 10.0
    #: Per-request timeout; a device that does not answer in time is counted and backed off.
    timeout: Annotated[float, Field(gt=0, le=60)] = 2.0
    enabled: bool = True


class ModbusPointConfig(_Model):
    """One user-declared register point (the same keys as a shipped profile's points)."""

    key: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
    #: Named ``register`` in the file; ``register`` itself is taken by pydantic's metaclass.
    kind: Literal["input", "holding"] = Field(alias="register")
    address: Annotated[int, Field(ge=0, le=65535)]
    type: str
    #: Registers of a ``string`` point (2 bytes each); only for that type.
    length: Annotated[int, Field(ge=1, le=125)] | None = None
    order: Literal["ABCD", "CDAB", "BADC", "DCBA"] = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    #: Raw "not available" value; false disables the type's default sentinel.
    invalid: int | float | bool | None = None
    description: str = ""

    @field_validator("type")
    @classmethod
    def _known_type(cls, name: str) -> str:
        known = [t.value for t in DataType]
        if name not in known:
            raise ValueError(f"expected one of {', '.join(known)} (got {name!r})")
        return name

    def table(self) -> dict[str, Any]:
        """The point as a profile table entry (`drivers.modbus.profiles` layout)."""
        return self.model_dump(exclude={"key"}, exclude_none=True, by_alias=True)


class ModbusDevice(_DeviceBase):
    """A Modbus device described by a shipped profile (see `drivers.modbus.profiles`), or by
    its own point table (``points``) when no profile fits: exactly one of the two.

    A point table may set the device's read limits, as a shipped profile does:
    ``max_registers_per_read`` (many meters accept fewer than the protocol's 125) and ``max_gap``,
    the unwanted registers a read may span to join two points (0 for a device that answers
    exception 02 to any read touching an undefined register). With a profile they are the
    profile's and cannot be set here.
    """

    driver: Literal["modbus"]
    profile: str | None = None
    points: list[ModbusPointConfig] | None = None
    #: A read asks for at most this many registers (default: the protocol's 125).
    max_registers_per_read: Annotated[int, Field(ge=1, le=MODBUS_MAX_REGISTERS)] | None = None
    #: A read spans at most this many unwanted registers (default: the profiles' default). A gap
    #: longer than 123 could never join two points within one 125-register read.
    max_gap: Annotated[int, Field(ge=0, le=MODBUS_MAX_REGISTERS - 2)] | None = None
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    transport: ModbusTransport

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str | None) -> str | None:
        known = available_profiles()
        if name is not None and name not in known:
            raise ValueError(f"unknown Modbus profile {name!r}; known: {', '.join(known)}")
        return name

    @field_validator("max_registers_per_read", "max_gap")
    @classmethod
    def _point_tables_only(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("profile") is not None:
            raise ValueError(
                f"applies to a point table (points = [...]) only; profile "
                f"{info.data['profile']!r} sets its own"
            )
        return value

    @model_validator(mode="after")
    def _profile_or_points(self) -> ModbusDevice:
        if (self.profile is None) == (self.points is None):
            raise ValueError("give exactly one of 'profile' (a shipped device) or 'points'")
        keys = [p.key for p in self.points or ()]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"points: duplicate keys {duplicates}")
        if self.points is not None:
            # The same validation as a shipped profile: types, duplicate keys, sizes.
            profile_from_table(self.id, self.point_table())
        return self

    def point_table(self) -> dict[str, Any]:
        """The user-declared points and read limits as a profile table, for
        `profile_from_table` (unset limits keep the profile defaults)."""
        table: dict[str, Any] = {"points": {p.key: p.table() for p in self.points or ()}}
        if self.max_registers_per_read is not None:
            table["max_registers_per_read"] = self.max_registers_per_read
        if self.max_gap is not None:
            table["max_gap"] = self.max_gap
        return table

    @model_validator(mode="after")
    def _rtu_unit_id(self) -> ModbusDevice:
        if self.transport.kind != "tcp" and self.unit_id == 0:
            raise ValueError("unit_id 0 is the RTU broadcast address (no answer); use 1..247")
        return self

    def bus_key(self) -> str:
        """Devices with the same key share one physical bus/connection and are polled in turn:
        a TCP endpoint, or a serial line (its port path)."""
        if isinstance(self.transport, TcpTransport):
            return f"modbus-tcp://{self.transport.host}:{self.transport.port}"
        return self.transport.line_key()


class SunSpecDevice(_DeviceBase):
    """A SunSpec device (PV inverter, meter): its models are discovered, not declared.

    ``models`` limits polling to these model ids (e.g. ``[103, 160]``); by default every
    supported model the device announces is polled (see docs/configuration.md for the keys).
    """

    driver: Literal["sunspec"]
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    transport: TcpTransport
    models: list[int] | None = None

    @field_validator("models")
    @classmethod
    def _supported_models(cls, models: list[int] | None) -> list[int] | None:
        unknown = sorted(set(models or ()) - set(SUPPORTED_MODELS))
        if unknown:
            known = ", ".join(str(m) for m in SUPPORTED_MODELS)
            raise ValueError(f"unsupported SunSpec models {unknown}; supported: {known}")
        return models

    def bus_key(self) -> str:
        """The same key as a Modbus device on the same endpoint: one connection, polled in turn."""
        return f"modbus-tcp://{self.transport.host}:{self.transport.port}"


def _stuck_polls(value: int) -> int:
    if value == 1:
        raise ValueError("expected 0 (check off) or a number >= 2")
    return value


#: How many identical raw measurements in a row mean "stuck"; 0 turns the check off.
StuckPolls = Annotated[int, Field(ge=0, le=10_000), AfterValidator(_stuck_polls)]


class Scd4xDevice(_DeviceBase):
    """A Sensirion SCD4x CO2 / temperature / humidity sensor on an I2C bus."""

    driver: Literal["scd4x"]
    #: ``/dev/i2c-N`` on a Pi, or ``tcp://HOST:PORT`` for a bus served by ``python -m simulators``.
    bus: Annotated[str, Field(pattern=_BUS_PATTERN)] = "/dev/i2c-1"
    address: Annotated[int, Field(ge=0x03, le=0x77)] = 0x62
    interval: Annotated[float, Field(ge=5, le=86_400)] = 5.0
    low_power: bool = False
    #: Compensation, applied at every start (``None``: leave the chip's own setting). The EEPROM
    #: is written only when a setting differs from what the chip has persisted.
    self_calibration: bool | None = None
    altitude_m: Annotated[int, Field(ge=0, le=3000)] | None = None
    ambient_pressure_hpa: Annotated[int, Field(ge=700, le=1200)] | None = None
    temperature_offset_c: Annotated[float, Field(ge=0, le=20)] | None = None
    #: The same raw measurement this many times in a row is "stuck" (no value, counted); 0: off.
    stuck_polls: StuckPolls = 12

    @model_validator(mode="after")
    def _altitude_or_pressure(self) -> Scd4xDevice:
        if self.altitude_m is not None and self.ambient_pressure_hpa is not None:
            raise ValueError(
                "give altitude_m or ambient_pressure_hpa, not both (a set pressure overrides"
                " the altitude in the chip)"
            )
        return self

    def bus_key(self) -> str:
        """One I2C bus is one serial resource, shared by every chip on it."""
        return f"i2c:{self.bus}"


class Pmsa003iDevice(_DeviceBase):
    """A Plantower PMSA003I particulate sensor (PM1, PM2.5, PM10, particle counts) on an I2C bus.

    Usually on the same bus as the room's SCD4x: the same ``bus`` value makes both one bus task.
    """

    driver: Literal["pmsa003i"]
    bus: Annotated[str, Field(pattern=_BUS_PATTERN)] = "/dev/i2c-1"
    address: Annotated[int, Field(ge=0x03, le=0x77)] = 0x12
    #: The chip refreshes its frame about once a second.
    interval: Annotated[float, Field(ge=1, le=86_400)] = 10.0
    #: No values for this long after the driver opened (woke) the chip; datasheet: >= 30 s.
    warmup_s: Annotated[float, Field(ge=0, le=600)] = 30.0
    stuck_polls: StuckPolls = 10

    def bus_key(self) -> str:
        """One I2C bus is one serial resource, shared by every chip on it."""
        return f"i2c:{self.bus}"


DeviceConfig = Annotated[
    ModbusDevice | SunSpecDevice | Scd4xDevice | Pmsa003iDevice, Field(discriminator="driver")
]
#: The values of the ``driver`` key, in the order they are documented.
DRIVER_NAMES: tuple[str, ...] = tuple(
    get_args(model.model_fields["driver"].annotation)[0]
    for model in (ModbusDevice, SunSpecDevice, Scd4xDevice, Pmsa003iDevice)
)


#: A Raspberry Pi GPIO by its BCM number (the numbering gpiozero uses by default).
GpioPin = Annotated[int, Field(ge=0, le=27)]
Ppm = Annotated[float, Field(gt=0, le=40_000)]
Ugm3 = Annotated[float, Field(gt=0, le=1000)]


#: BCM pins of the I2C bus (SDA, SCL) the canaries are on.
I2C_PINS = frozenset({2, 3})
#: BCM pins a Pimoroni Inky pHAT takes: SPI0 (CE1, CE0, MISO, MOSI, SCLK), BUSY, RESET and DC
#: (pimoroni/inky, inky_ssd1608.py).
INKY_PINS = frozenset({7, 8, 9, 10, 11, 17, 22, 27})


class LedPins(_Model):
    """The three LEDs of a room's traffic light, by BCM GPIO number."""

    red: GpioPin
    amber: GpioPin
    green: GpioPin


class PanelConfig(_Model):
    """A room's e-ink panel: ``png`` writes ``path`` (simulation, kiosks); ``inky`` drives a Pimoroni panel."""

    size: Literal["250x122", "296x128"] = "250x122"
    backend: Literal["png", "inky"] = "png"
    path: FilePath | None = None

    @model_validator(mode="after")
    def _png_needs_a_path(self) -> PanelConfig:
        if self.backend == "png" and self.path is None:
            raise ValueError("the png backend needs 'path'")
        return self


class RoomConfig(_Model):
    """A room shown locally: its canary devices, and optionally a traffic light and an e-ink panel."""

    id: Identifier
    name: str
    devices: Annotated[list[Identifier], Field(min_length=1)]
    led: LedPins | None = None
    panel: PanelConfig | None = None


class AlarmConfig(_Model):
    """Emergency thresholds; each alarm raises above ``*_raise`` and clears below ``*_clear``."""

    co2_raise: Ppm = 2000.0
    co2_clear: Ppm = 1800.0
    pm25_raise: Ugm3 = 75.0
    pm25_clear: Ugm3 = 60.0
    #: A room device with no valid reading for this many of its poll intervals raises ``silent``.
    silent_intervals: Annotated[int, Field(ge=2, le=1000)] = 3
    #: Adjustments of the default rules and a site's own rules (`gateway.alarm_rules`).
    rules: list[RuleConfig] = []

    @model_validator(mode="after")
    def _hysteresis(self) -> AlarmConfig:
        for metric in ("co2", "pm25"):
            if getattr(self, f"{metric}_clear") >= getattr(self, f"{metric}_raise"):
                raise ValueError(f"{metric}_clear must be below {metric}_raise (hysteresis)")
        self.effective_rules()
        return self

    def effective_rules(self) -> list[RuleConfig]:
        """Every enabled rule, complete: the defaults merged with ``rules`` (see alarm_rules)."""
        legacy = {
            "co2_high": {"above": self.co2_raise, "clear": self.co2_clear},
            "pm25_high": {"above": self.pm25_raise, "clear": self.pm25_clear},
        }
        return effective_rules(self.rules, legacy=legacy)


class StatusConfig(_Model):
    """Air-quality classes, alarms and the local LED / e-ink status (see docs/configuration.md)."""

    #: ``traffic_light``: CO2 bands at ``co2_moderate``/``co2_poor``; ``en16798``: EN 16798-1
    #: categories by CO2 above ``outdoor_co2`` (I/II good, III moderate, IV poor).
    co2_scheme: Literal["traffic_light", "en16798"] = "traffic_light"
    co2_moderate: Ppm = 1000.0
    co2_poor: Ppm = 1400.0
    outdoor_co2: Ppm = 420.0
    pm25_moderate: Ugm3 = 15.0
    pm25_poor: Ugm3 = 37.5
    alarms: AlarmConfig = AlarmConfig()
    #: The building's occupied hours, for rules that only raise when it is empty (or occupied).
    schedule: ScheduleConfig = ScheduleConfig()
    rooms: list[RoomConfig] = []

    @model_validator(mode="after")
    def _consistent(self) -> StatusConfig:
        if self.co2_moderate >= self.co2_poor:
            raise ValueError("co2_moderate must be below co2_poor")
        if self.pm25_moderate >= self.pm25_poor:
            raise ValueError("pm25_moderate must be below pm25_poor")
        pins = [p for r in self.rooms if r.led for p in (r.led.red, r.led.amber, r.led.green)]
        if len(pins) != len(set(pins)):
            raise ValueError("every LED needs its own GPIO pin")
        if I2C_PINS & set(pins):
            raise ValueError("LED pins must not be GPIO 2 or 3: they are the canaries' I2C bus")
        inky = [r.id for r in self.rooms if r.panel is not None and r.panel.backend == "inky"]
        if len(inky) > 1:
            raise ValueError(
                f"only one inky panel fits on a Pi; rooms {', '.join(inky)} each have one"
            )
        if inky and INKY_PINS & set(pins):
            taken = ", ".join(str(p) for p in sorted(INKY_PINS & set(pins)))
            raise ValueError(
                f"LED pins {taken} are used by the inky panel (SPI0 GPIO 7-11, BUSY 17, "
                "RESET 27, DC 22); choose others, e.g. 5, 6, 13"
            )
        ids = [r.id for r in self.rooms]
        if len(ids) != len(set(ids)):
            raise ValueError("room ids must be unique")
        return self


#: Where the daemon serves its local status (``[local] socket``); the unit's RuntimeDirectory=.
DEFAULT_SOCKET = "/run/canary-gateway/gateway.sock"
#: The longest path a unix socket can have (``sun_path`` is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 107


class LocalConfig(_Model):
    """What a technician on site can read without the uplink (see docs/operations.md).

    ``socket``: the unix socket `gateway status` reads (HTTP: ``/status``, ``/healthz``,
    ``/metrics``), ``""`` to turn it off. ``http``: ``HOST:PORT`` to serve the same over TCP
    (for a local Prometheus or a monitoring agent); off by default (``""``).
    """

    socket: str = DEFAULT_SOCKET
    http: str = ""

    @field_validator("socket")
    @classmethod
    def _socket_path(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError('expected an absolute path, or "" to turn the socket off')
        if len(value.encode()) > _MAX_SOCKET_PATH:
            raise ValueError(f"a unix socket path has at most {_MAX_SOCKET_PATH} bytes")
        return value

    @field_validator("http")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            _split_host_port(value)
        return value

    @property
    def socket_path(self) -> Path | None:
        """The socket's path, or None when it is off."""
        return Path(self.socket) if self.socket else None

    @property
    def http_address(self) -> tuple[str, int] | None:
        """(host, port) of the HTTP endpoint, or None when it is off."""
        return _split_host_port(self.http) if self.http else None


def _split_host_port(text: str) -> tuple[str, int]:
    """``127.0.0.1:9108``, ``localhost:9108`` or ``[::1]:9108`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f'expected HOST:PORT, e.g. "127.0.0.1:9108" (got {text!r})')
    return host, int(port)


class GatewayConfig(_Model):
    """The whole file. ``devices`` is a list discriminated on each entry's ``driver`` key."""

    site: SiteConfig
    mqtt: MqttConfig = MqttConfig()
    buffer: BufferConfig = BufferConfig()
    clock: ClockConfig = ClockConfig()
    influxdb: InfluxConfig | None = None
    bridge: BridgeConfig = BridgeConfig()
    status: StatusConfig = StatusConfig()
    local: LocalConfig = LocalConfig()
    devices: list[DeviceConfig] = []

    def enabled_devices(
        self,
    ) -> list[ModbusDevice | SunSpecDevice | Scd4xDevice | Pmsa003iDevice]:
        """The devices to poll, in file order."""
        return [d for d in self.devices if d.enabled]


def load_config(path: Path | str) -> GatewayConfig:
    """Read and validate ``path``; see the module docstring for the error contract."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return parse_config(data, source=str(path))


def parse_config(data: dict[str, Any], *, source: str) -> GatewayConfig:
    """Validate already-parsed TOML data; ``source`` names it in error messages."""
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            "\n".join(_describe(source, error, data) for error in exc.errors())
        ) from exc
    first_use: dict[str, int] = {}
    for index, device in enumerate(config.devices):
        if device.id in first_use:
            raise ConfigError(
                f"{source}: devices[{index}].id: device ids must be unique; {device.id!r} is "
                f"already used by devices[{first_use[device.id]}]"
            )
        first_use[device.id] = index
    _check_shared_lines(config, source)
    for r, room in enumerate(config.status.rooms):
        for d, device_id in enumerate(room.devices):
            if device_id not in first_use:
                raise ConfigError(
                    f"{source}: status.rooms[{r}].devices[{d}]: no device has the id {device_id!r}"
                )
    for rule in config.status.alarms.effective_rules():
        for key in ("devices", "witnesses"):
            for device_id in getattr(rule, key) or ():
                if device_id not in first_use:
                    raise ConfigError(
                        f"{source}: status.alarms.rules: rule {rule.id}: {key}: no device has "
                        f"the id {device_id!r}"
                    )
    return config


def _check_shared_lines(config: GatewayConfig, source: str) -> None:
    """Devices on one serial line share one port: its settings must agree, unit ids differ."""
    first: dict[str, tuple[int, RtuTransport | RtuOverTcpTransport]] = {}
    for index, device in enumerate(config.devices):
        if not isinstance(device, ModbusDevice) or isinstance(device.transport, TcpTransport):
            continue
        key = device.transport.line_key()
        if key not in first:
            first[key] = (index, device.transport)
            continue
        other, transport = first[key]
        if device.transport.settings() != transport.settings():
            raise ConfigError(
                f"{source}: devices[{index}].transport: devices on one line share its settings "
                f"(baudrate, parity, stopbits, bytesize, pause, echo, rts, rts_invert); "
                f"devices[{other}] uses "
                f"{transport.model_dump(exclude={'kind'})}"
            )
    units: dict[tuple[str, int], int] = {}
    for index, device in enumerate(config.devices):
        if isinstance(device, ModbusDevice) and not isinstance(device.transport, TcpTransport):
            unit = (device.transport.line_key(), device.unit_id)
            if unit in units:
                raise ConfigError(
                    f"{source}: devices[{index}].unit_id: unit {device.unit_id} is already "
                    f"used on this line by devices[{units[unit]}]"
                )
            units[unit] = index


def _describe(source: str, error: Any, data: dict[str, Any]) -> str:
    """Turn one pydantic error into ``FILE: key.path: expectation (got value)``."""
    loc = list(error["loc"])
    path = _key_path(loc, data)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{source}: {path}: unknown key (check the spelling; see docs/configuration.md)"
    if kind == "missing":
        return f"{source}: {path}: required key is missing"
    message = _MESSAGES.get(kind, error["msg"])
    message = _ctx_message(message, error)
    if kind == "string_pattern_mismatch":
        message = _PATTERN_HELP.get(error["ctx"]["pattern"], message)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _union_tag_message(source, path, loc, error.get("ctx") or {})
    if kind != "value_error" and "input" in error and not isinstance(error["input"], dict):
        return f"{source}: {path}: {message} (got {_show(error['input'])})"
    return f"{source}: {path}: {message}"


def _union_tag_message(source: str, path: str, loc: list[Any], ctx: dict[str, Any]) -> str:
    """A missing or unknown ``driver`` of a device, or ``kind`` of a Modbus transport."""
    if loc[-1:] == ["transport"]:
        kinds = ", ".join(repr(name) for name in TRANSPORT_KINDS)
        return f"{source}: {path}.kind: expected one of {kinds}"
    tags = ", ".join(repr(name) for name in DRIVER_NAMES)
    tag = ctx.get("tag")
    if tag is None:
        return f"{source}: {path}.driver: required key is missing; expected one of {tags}"
    return f"{source}: {path}.driver: unknown driver {tag!r}; expected one of {tags}"


def _key_path(loc: list[Any], data: Any) -> str:
    """Render a pydantic location as a TOML key path; drop discriminator tags pydantic inserts."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        if (
            isinstance(node, dict)
            and item not in node
            and item in (*DRIVER_NAMES, *TRANSPORT_KINDS)
        ):
            continue  # the union tag, not a key in the file
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


_MESSAGES = {
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "list_type": "expected an array",
    "model_type": "expected a table",
    "dict_type": "expected a table",
    "greater_than_equal": "expected a number >= {ge}",
    "greater_than": "expected a number > {gt}",
    "less_than_equal": "expected a number <= {le}",
    "less_than": "expected a number < {lt}",
    "string_pattern_mismatch": "expected text matching {pattern}",
    "literal_error": "expected one of {expected}",
}


def _ctx_message(template: str, error: Any) -> str:
    ctx = error.get("ctx") or {}
    try:
        text = template.format(**ctx)
    except (KeyError, IndexError):
        text = template
    # pydantic prefixes custom validator messages with "Value error, "
    return re.sub(r"^(Value|Assertion) error, ", "", text)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; simulators refuse to bind anything else."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
