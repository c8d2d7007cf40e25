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
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.modbus.profiles import available_profiles
from gateway.errors import ConfigError

#: Identifiers end up in MQTT topics and time-series tags: keep them to a safe, readable alphabet.
_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ID_HELP = (
    "lower-case letters, digits, '-' or '_', starting with a letter or digit, at most 63 long"
)

_BUS_PATTERN = r"^(/dev/i2c-\d+|tcp://[^:/]+:\d{1,5})$"
_URL_PATTERN = r"^https?://"
_TOPIC_PATTERN = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"
#: What a pattern means, for error messages (a regex is not an explanation).
_PATTERN_HELP = {
    _ID_PATTERN: f"expected an identifier: {_ID_HELP}",
    _BUS_PATTERN: "expected /dev/i2c-N (a Linux I2C bus) or tcp://HOST:PORT (a served bus)",
    _URL_PATTERN: "expected an http:// or https:// URL",
    _TOPIC_PATTERN: "expected topic levels of letters, digits, '-' or '_' separated by '/'",
}

Identifier = Annotated[str, Field(pattern=_ID_PATTERN)]
Port = Annotated[int, Field(ge=1, le=65535)]
#: TOML has no path type: accept a string (the only place strict mode is relaxed).
FilePath = Annotated[Path, Field(strict=False)]
#: Poll intervals: faster than 10 Hz is not a building-monitoring use case, slower than a day is a typo.
Interval = Annotated[float, Field(ge=0.1, le=86_400)]


class _Model(BaseModel):
    """Base for every config section: frozen, unknown keys rejected, no type coercion from strings."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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


class InfluxConfig(_Model):
    """The InfluxDB v2 write API the bridge writes to (InfluxDB 2.x, VictoriaMetrics, ...)."""

    url: Annotated[str, Field(pattern=_URL_PATTERN)]
    org: str
    bucket: str
    token: Credentials | None = None
    #: Messages per write request, at most; the bridge also flushes after ``flush_interval`` seconds.
    batch_size: Annotated[int, Field(ge=1, le=50_000)] = 1000
    flush_interval: Annotated[float, Field(gt=0, le=60)] = 0.5


class BridgeConfig(_Model):
    """The MQTT -> time-series bridge's own MQTT identity."""

    client_id: str | None = None
    #: When set, the bridge subscribes through ``$share/<group>/...`` so several bridges split the load.
    share_group: Identifier | None = None


class TcpTransport(_Model):
    """Modbus TCP to a device or a TCP-to-RS-485 gateway."""

    kind: Literal["tcp"]
    host: str
    port: Port = 502


class _DeviceBase(_Model):
    id: Identifier
    interval: Interval = 10.0
    #: Per-request timeout; a device that does not answer in time is counted and backed off.
    timeout: Annotated[float, Field(gt=0, le=60)] = 2.0
    enabled: bool = True


class ModbusDevice(_DeviceBase):
    """A Modbus device described by a shipped profile (see `drivers.modbus.profiles`)."""

    driver: Literal["modbus"]
    profile: str
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    transport: TcpTransport

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str) -> str:
        known = available_profiles()
        if name not in known:
            raise ValueError(f"unknown Modbus profile {name!r}; known: {', '.join(known)}")
        return name

    def bus_key(self) -> str:
        """Devices with the same key share one physical bus/connection and are polled in turn."""
        return f"modbus-tcp://{self.transport.host}:{self.transport.port}"


class Scd4xDevice(_DeviceBase):
    """A Sensirion SCD4x CO2 / temperature / humidity sensor on an I2C bus."""

    driver: Literal["scd4x"]
    #: ``/dev/i2c-N`` on a Pi, or ``tcp://HOST:PORT`` for a bus served by ``python -m simulators``.
    bus: Annotated[str, Field(pattern=_BUS_PATTERN)] = "/dev/i2c-1"
    address: Annotated[int, Field(ge=0x03, le=0x77)] = 0x62
    interval: Annotated[float, Field(ge=5, le=86_400)] = 5.0
    low_power: bool = False

    def bus_key(self) -> str:
        """One I2C bus is one serial resource, shared by every chip on it."""
        return f"i2c:{self.bus}"


DeviceConfig = Annotated[ModbusDevice | Scd4xDevice, Field(discriminator="driver")]
#: The values of the ``driver`` key, in the order they are documented.
DRIVER_NAMES: tuple[str, ...] = tuple(
    get_args(model.model_fields["driver"].annotation)[0] for model in (ModbusDevice, Scd4xDevice)
)


class GatewayConfig(_Model):
    """The whole file. ``devices`` is a list discriminated on each entry's ``driver`` key."""

    site: SiteConfig
    mqtt: MqttConfig = MqttConfig()
    buffer: BufferConfig = BufferConfig()
    influxdb: InfluxConfig | None = None
    bridge: BridgeConfig = BridgeConfig()
    devices: list[DeviceConfig] = []

    def enabled_devices(self) -> list[ModbusDevice | Scd4xDevice]:
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
    return config


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
        ctx = error.get("ctx") or {}
        tags = ", ".join(repr(name) for name in DRIVER_NAMES)
        tag = ctx.get("tag")
        if tag is None:
            return f"{source}: {path}.driver: required key is missing; expected one of {tags}"
        return f"{source}: {path}.driver: unknown driver {tag!r}; expected one of {tags}"
    if kind != "value_error" and "input" in error and not isinstance(error["input"], dict):
        return f"{source}: {path}: {message} (got {_show(error['input'])})"
    return f"{source}: {path}: {message}"


def _key_path(loc: list[Any], data: Any) -> str:
    """Render a pydantic location as a TOML key path; drop discriminator tags pydantic inserts."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        if isinstance(node, dict) and item not in node and item in DRIVER_NAMES:
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
