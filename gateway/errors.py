"""The error hierarchy.

Every failure the gateway expects is a `GatewayError`; anything else is a bug and is only caught by
the task supervisor. Drivers raise `DeviceError` subclasses so that the scheduler can count errors
per device and per class without knowing the transport.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is unusable. The message names the file, the key path and what was expected."""


class DeviceError(GatewayError):
    """A device did not deliver a usable answer."""

    #: Short stable name of the error class, used for per-class counters and log lines.
    kind = "device"


class DeviceTimeout(DeviceError):
    """No answer (or no data ready) within the device's timeout; also NACK on I2C, refused TCP."""

    kind = "timeout"


class DeviceNotReady(DeviceError):
    """The device is fine but has no new data yet (a sensor between measurements).

    Not a fault: nothing is counted or logged. The scheduler asks again after ``retry_after``
    seconds and lets the other devices on the bus go first, so a waiting sensor never holds a
    shared bus. A driver that stays not ready for too long raises `DeviceTimeout` instead.
    """

    kind = "not_ready"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DecodeError(DeviceError):
    """An answer arrived but is malformed: CRC/checksum mismatch, short frame, bad header."""

    kind = "decode"


class DeviceStuck(DecodeError):
    """The sensor returned the same raw measurement for too many polls in a row.

    A `DecodeError` (the answer arrived but cannot be trusted), counted under its own kind so that
    a stuck sensor stands out from line noise in the per-device error counters.
    """

    kind = "stuck"


class DeviceBusy(DeviceError):
    """The device answered that it is busy (Modbus exception 06); retry later."""

    kind = "busy"


class DeviceRejected(DeviceError):
    """The device refused the request (Modbus exception codes other than busy)."""

    kind = "rejected"


class SinkError(GatewayError):
    """A sink (MQTT broker, time-series store) did not accept data.

    ``retryable`` is False when sending the same data again cannot succeed (the store rejected its
    content, e.g. HTTP 400); the caller must then set the data aside instead of retrying forever.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
